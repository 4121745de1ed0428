"""Training the learned tumour stage (`guidegen train tumours --config FILE`).

Data: the mask sampler's real training maps (`load_base_cases`, same preparation and grid), each
augmented as the first stage's examples are (rigid jitter, elastic deformation, organ scaling) into
a pool of ``pool_size`` anatomies drawn once per run and kept in the run folder (``pool.npz``). At
every step each example takes a pool map, a host present in it (uniformly), and real tumour shapes
inserted there by `guidegen.data.ops.TumourInsertion` at its default diameters and counts (colon
tumours in a drawn segment; a liver tumour in a drawn lobe in part of the examples). The networks see
the map *before* the insertion and the host region. The site network, told the asked-for diameter
(the largest of the group's) and count, learns where the centres went: a cross-entropy over the
window's voxels against the group's centres (each an equal share). The shape network, given one
tumour's centre and diameter, learns its voxels: per-voxel binary cross-entropy plus a soft Dice
term (a tumour is a few dozen of the window's 32 768 voxels).

Exact resume: example ``i`` is a function of ``(seed, i)`` and the pool; checkpoints store raw and
EMA weights, optimizer state and step. Single process (the stage trains in minutes on a CPU).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from guidegen.checkpoint import save_checkpoint
from guidegen.config import config_to_dict
from guidegen.data.augment import augment_case
from guidegen.data.ops import TumourInsertion
from guidegen.distributed import cleanup, init_distributed
from guidegen.errors import InputError
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, TUMOUR_HOSTS
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.examples import anatomy_augmentation
from guidegen.masks.placement import remove_tumours, site_of
from guidegen.masks.sampler import sampler_grid
from guidegen.masks.train import load_base_cases
from guidegen.masks.tumour_stage import (
    TumourNetworks,
    TumourStageConfig,
    centre_map,
    condition_channels,
    host_region,
    tumour_vector,
    window_around,
)
from guidegen.runtime.backends import onednn_convolutions
from guidegen.training import (
    EMA,
    checkpoint_path,
    cosine_lr,
    prune_checkpoints,
    remove_stale_checkpoints,
    resume_training,
    truncate_log,
)

_LIVER_LOBES = ("right lobe", "left lobe")


def _grid_config(config: TumourStageConfig) -> MaskSamplerConfig:
    """A mask-sampler config with the stage's grid and data: `load_base_cases` prepares from it."""
    return MaskSamplerConfig(
        shape=config.shape,
        spacing=config.spacing,
        channels=(16, 32, 64),
        attention_levels=(False, False, True),
        prepared_cache=config.prepared_cache,
        data_sources=config.data_sources,
        min_extent_mm=config.min_extent_mm,
    )


def build_pool(config: TumourStageConfig, root: Path | None = None) -> np.ndarray:
    """(pool_size, X, Y, Z) uint8: augmented tumour-free anatomies with at least one tumour host."""
    cases = load_base_cases(_grid_config(config), root)
    affine = sampler_grid(_grid_config(config))
    hosts = [[h for h in TUMOUR_HOSTS if np.any(c["labels"] == ID[h])] for c in cases]
    usable = [i for i, h in enumerate(hosts) if h]
    if not usable:
        raise InputError(config.prepared_cache, "no prepared case holds a tumour host organ")
    augment = anatomy_augmentation(config.p_elastic, config.p_organ_scaling)
    pool = np.empty((config.pool_size, *config.shape), dtype=np.uint8)
    for i in range(config.pool_size):
        rng = np.random.default_rng([config.seed, 4909, i])
        case = cases[usable[int(rng.integers(len(usable)))]]
        base = remove_tumours(Volume(case["labels"].copy(), affine.copy(), "labels"))
        pool[i] = augment_case(base, rng, augment)[0].array
    return pool


class TumourExamples:
    """Example ``i``: a pool map with tumours inserted; what the network sees and must draw."""

    def __init__(self, pool: np.ndarray, config: TumourStageConfig):
        self.pool = pool
        self.config = config
        self.affine = sampler_grid(_grid_config(config))
        self.insert = TumourInsertion(hosts=TUMOUR_HOSTS, site_of=site_of("colon"))
        self.insert_lobe = TumourInsertion(hosts=("liver",), site_of=site_of("liver"))

    def __getitem__(self, index: int) -> dict[str, Any]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 7207, int(index)])
        labels = Volume(self.pool[int(rng.integers(len(self.pool)))].copy(), self.affine.copy(), "labels")
        present = self.insert.present(labels)
        host = present[int(rng.integers(len(present)))]
        segment, region = None, None
        if host == "liver" and rng.random() > cfg.p_whole_host:
            segment = _LIVER_LOBES[int(rng.integers(2))]
            region = host_region(labels, host, segment)
            if region.sum() == (labels.array == ID[host]).sum():  # no lobe frame in this map
                segment, region = None, None
        inserter = self.insert_lobe if segment is not None else self.insert
        params = inserter.make_params(rng, labels, host=host, segment=segment)
        if segment is None and params.segment is not None and rng.random() > cfg.p_whole_host:
            segment = params.segment  # colon tumours go into a drawn segment; most examples say which
        if region is None:
            region = host_region(labels, host, segment)
        box = window_around(region, cfg.window, jitter=rng.integers(-3, 4, size=3))
        start = np.array([b.start for b in box])
        # Each tumour's own voxels: inserted one after another, as `apply` does.
        masks, centres, current = [], [], labels
        for spec in params.tumours:
            after, _ = inserter.apply(current, replace(params, tumours=(spec,)))
            masks.append((after.array == ID["tumour"]) & (current.array != ID["tumour"]))
            current = after
            voxel = np.rint(np.linalg.inv(labels.affine)[:3] @ np.append(spec.centre_mm, 1.0)).astype(int)
            centres.append(voxel - start)
        inside = [c for c in centres if all(0 <= v < w for v, w in zip(c, cfg.window))]
        site = np.zeros(cfg.window, dtype=np.float32)
        for c in inside:
            site[tuple(c)] += 1.0 / len(inside)
        pick = int(rng.integers(len(params.tumours)))
        largest = max(t.diameter_mm for t in params.tumours)
        return {
            "condition": np.ascontiguousarray(condition_channels(labels, region)[(slice(None), *box)]),
            "site_vector": tumour_vector(host, None if rng.random() < cfg.p_drop_diameter else largest, len(centres)),
            "site": site,  # all zero when every centre fell outside the window (the example then
            # teaches only the shape)
            "centre": centre_map(cfg.window, centres[pick]),
            "shape_vector": tumour_vector(host, params.tumours[pick].diameter_mm, 1),
            "mask": np.ascontiguousarray(masks[pick][box]).astype(np.float32),
            "target": np.ascontiguousarray(current.array[box] == ID["tumour"]),
            "host": host,
        }


def soft_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 − soft Dice per item, averaged: every tumour counts, however small."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def site_loss(logits: Tensor, site: Tensor) -> Tensor:
    """Cross-entropy of the window's voxel distribution against the centres (items with one)."""
    log_p = torch.log_softmax(logits.flatten(1), dim=1)
    weight = site.flatten(1)
    has = weight.sum(1) > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    return -(log_p * weight).sum(1)[has].mean()


def train_tumour_stage(
    config: TumourStageConfig,
    run_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    root: Path | None = None,
) -> Path:
    """Train (or resume) and return the run folder; ``run_dir/model`` holds the EMA model."""
    ctx = init_distributed("cpu")
    try:
        return _train(config, Path(run_dir), resume, progress, max_steps, root, ctx)
    finally:
        cleanup(ctx)


def _same_run(saved: TumourStageConfig, config: TumourStageConfig) -> bool:
    # Only the length of the schedule and the checkpointing may change between calls.
    keep = ("steps", "checkpoint_every", "keep_checkpoints")
    return replace(saved, **{k: getattr(config, k) for k in keep}) == config


def _train(config, run_dir: Path, resume: bool, progress: bool, max_steps, root, ctx) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    # Channels-last weights and oneDNN convolutions: the 3-D backward runs ~2× faster on the CPU
    # (as for the mask sampler, `guidegen.masks.train`); same parameters, same state dict.
    model = onednn_convolutions(TumourNetworks(config).to(memory_format=torch.channels_last_3d), copy_first=False)
    ema = EMA(model, config.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    start = resume_training(
        run_dir, config, model=model, ema=ema, optimizer=opt, scaler=scaler, same_run=_same_run, ctx=ctx, resume=resume
    )
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=1))
    remove_stale_checkpoints(run_dir)
    pool_path = run_dir / "pool.npz"
    stamp = json.dumps({k: v for k, v in asdict(config).items() if k not in ("steps", "checkpoint_every")})
    if pool_path.exists() and str(np.load(pool_path)["stamp"]) == stamp:
        pool = np.load(pool_path)["pool"]
    else:
        pool = build_pool(config, root)
        np.savez_compressed(pool_path, pool=pool, stamp=np.array(stamp))
    examples = TumourExamples(pool, config)
    end = config.steps if max_steps is None else min(config.steps, start + max_steps)
    log_path = run_dir / "log.jsonl"
    truncate_log(log_path, start)
    last = torch.channels_last_3d

    def stacked(items: list[dict[str, Any]], key: str, channel: bool = False) -> Tensor:
        x = torch.from_numpy(np.stack([it[key] for it in items]))
        return x[:, None].contiguous(memory_format=last) if channel else x

    model.train()
    started = time.perf_counter()
    for step in range(start, end):
        items = [examples[step * config.batch_size + j] for j in range(config.batch_size)]
        condition = stacked(items, "condition").contiguous(memory_format=last)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, config.steps, config.lr, config.warmup)
        opt.zero_grad(set_to_none=True)
        where = site_loss(model.site(condition, stacked(items, "site_vector"))[:, 0], stacked(items, "site"))
        shape_logits = model.shape(condition, stacked(items, "centre", True), stacked(items, "shape_vector"))[:, 0]
        mask = stacked(items, "mask")
        bce = F.binary_cross_entropy_with_logits(shape_logits, mask)
        dice = soft_dice_loss(shape_logits, mask)
        total = where + bce + dice
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        ema.update(model)
        line = {
            "step": step + 1,
            "site": float(where.detach()),
            "bce": float(bce.detach()),
            "dice": float(dice.detach()),
        }
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**line, "seconds": round(time.perf_counter() - started, 2)}) + "\n")
        if progress and (step + 1) % 50 == 0:
            print(
                f"train tumours {step + 1}/{config.steps} site {line['site']:.3f} dice {line['dice']:.3f}", flush=True
            )
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == end:
            state = {"step": step + 1, "optimizer": opt.state_dict(), "ema_updates": ema.updates}
            save_checkpoint(
                checkpoint_path(run_dir, step + 1),
                config,
                ema.state_dict(),
                training=state,
                raw_weights=model.state_dict(),
            )
            prune_checkpoints(run_dir, config.keep_checkpoints)
    if end == config.steps:
        save_checkpoint(
            run_dir / "model", config, ema.state_dict(), metadata={"component": "tumour_stage"}, overwrite=True
        )
    return run_dir
