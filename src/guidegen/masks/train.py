"""Training the Volumetric Mask Sampler (`guidegen train masks --config FILE`).

Data: the real label maps in ``config.data_sources`` are prepared on the sampler's grid and every
training example is a fresh random augmentation of one of them (`MaskExamples`): rigid jitter,
elastic deformation, organ scaling, tumour insertion from real tumour shapes. Its text is written by
the report generator from the example's own measured attributes (after dropping some fields at
random, so that short prompts that state little are in-distribution), so text and mask agree.

Exact resume: example ``s`` and every random draw of step ``s`` come from ``step_generators(seed,
s)``; a checkpoint stores raw weights, EMA weights, the optimizer state and the step.

Data parallel (``torchrun --nproc-per-node N -m guidegen train masks … --run-dir DIR``): each process
builds its share of every global batch of ``batch_size`` examples and trains on it in
``grad_accumulation`` micro-batches; the step's noise is drawn for the whole batch, and the loss
keeps its weighting (a mean over the known voxels of the global batch), so N and the accumulation
change only rounding (`guidegen.distributed`). Rank 0 writes the log and the checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guidegen.checkpoint import save_checkpoint
from guidegen.config import config_to_dict
from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.diffusion.categorical_loss import categorical_loss, expected_count_loss, outside_host_loss
from guidegen.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    batch_shares,
    cleanup,
    init_distributed,
    no_sync,
    wrap_ddp,
)
from guidegen.errors import InputError
from guidegen.io.nifti import read_nifti
from guidegen.labels.vocabulary import ID, ORGANS, UNKNOWN
from guidegen.masks.conditioning import attribute_vector
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.examples import MaskExamples
from guidegen.masks.model import MaskDenoiser, grown_weights
from guidegen.masks.sampler import diffusion_from_config
from guidegen.runtime.backends import onednn_convolutions
from guidegen.runtime.precision import autocast, resolve_precision
from guidegen.text.encoder import TextEncoder, TextEncoderConfig
from guidegen.training import (
    EMA,
    checkpoint_path,
    cosine_lr,
    prune_checkpoints,
    remove_stale_checkpoints,
    resume_training,
    step_generators,
    truncate_log,
    warm_start,
)


def resolve(path: str, root: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else root / p


def load_base_cases(
    config: MaskSamplerConfig, root: Path | None = None, progress: bool = False
) -> list[dict[str, Any]]:
    """Prepare ``config.data_sources`` on the sampler grid; returns case dicts with label arrays.

    Each case's z range is cut or padded (with UNKNOWN) to ``shape[2]`` slices so that the top of the
    liver (else the spleen) sits 4 slices below the top: the sampler sees every anatomy at a
    consistent height.
    """
    cache = resolve(config.prepared_cache, root)
    prepare(
        [resolve(s, root) for s in config.data_sources],
        cache,
        PrepareConfig(spacing=config.spacing, size_xy=config.shape[:2]),
        progress=progress,
    )
    cases = []
    for entry in load_prepared(cache):
        labels = read_nifti(entry["labels_path"], kind="labels")
        extent = labels.shape[2] * config.spacing[2]
        organs_annotated = [c for c in entry["annotated"] if c in ORGANS]
        if extent < config.min_extent_mm or len(organs_annotated) < 1:
            # Too short to show the abdomen's layout, or no organ at all (a lone tumour mask, whose
            # shape reaches the sampler through tumour insertion instead).
            continue
        array = labels.array
        anchor_ids = [ID["liver"], ID["spleen"]]
        zs = next(
            (np.nonzero(np.isin(array, [a]).any(axis=(0, 1)))[0] for a in anchor_ids if np.isin(array, [a]).any()), None
        )
        top = int(zs.max()) if zs is not None else array.shape[2] - 1
        target_top = config.shape[2] - 5
        shift = target_top - top
        out = np.full(config.shape, UNKNOWN, dtype=np.uint8)
        for k in range(config.shape[2]):
            src = k - shift
            if 0 <= src < array.shape[2]:
                out[:, :, k] = array[:, :, src]
        annotated = set(entry["annotated"]) | {"background", "tumour"}  # see MaskExamples: assumed tumour-free
        cases.append({"case_id": entry["case_id"], "labels": out, "annotated": annotated, "affine": labels.affine})
    if not cases:
        raise InputError(cache, f"no prepared case covers at least {config.min_extent_mm} mm")
    return cases


_WORKER_EXAMPLES: MaskExamples | None = None
_WORKER_ENCODER: TextEncoder | None = None


def _init_worker(examples: MaskExamples) -> None:
    global _WORKER_EXAMPLES, _WORKER_ENCODER
    torch.set_num_threads(1)
    _WORKER_EXAMPLES = examples
    _WORKER_ENCODER = TextEncoder(TextEncoderConfig(max_length=examples.config.max_text_tokens))


def _make_example(index: int) -> dict[str, Any]:
    if _WORKER_EXAMPLES is None or _WORKER_ENCODER is None:  # pragma: no cover - initializer always runs first
        raise RuntimeError("worker not initialised")
    return _encoded(_WORKER_EXAMPLES[index], _WORKER_ENCODER)


def _encoded(example: dict[str, Any], encoder: TextEncoder) -> dict[str, Any]:
    """The example with its text's token states (``text_tokens``, (L, D) float32 numpy)."""
    return {**example, "text_tokens": encoder.encode([example["text"]]).tokens[0].numpy()}


class _Prefetcher:
    """Builds examples, with their encoded text, ahead of the training loop, in a worker process or inline.

    Augmentation (scipy) costs about 0.2 s per example; on 2 cores a worker overlaps it with the
    network step. The text is encoded there too: each example's text is new, and the text encoder's
    many small matrix products, run in the training process with 2 threads while the worker held
    one core, took 0.19 s a step instead of 0.03 s (`docs/results/train_demo_time.txt`). Examples
    depend only on their index, so where they are built changes nothing.
    """

    def __init__(self, examples: MaskExamples, indices: list[int], workers: int, depth: int = 4):
        import concurrent.futures as cf
        import multiprocessing as mp

        self.examples, self.indices, self.depth = examples, indices, depth
        self.pool = None
        self.encoder: TextEncoder | None = None
        self.pending: list = []
        self.next = 0
        if workers > 0:
            # spawn, not fork: forking after torch started its OpenMP threads can hang the child.
            self.pool = cf.ProcessPoolExecutor(
                max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(examples,)
            )
            self._fill()

    def _fill(self) -> None:
        while self.pool is not None and len(self.pending) < self.depth and self.next < len(self.indices):
            self.pending.append(self.pool.submit(_make_example, self.indices[self.next]))
            self.next += 1

    def take(self, count: int) -> list[dict[str, Any]]:
        if self.pool is None:
            if self.encoder is None:
                self.encoder = TextEncoder(TextEncoderConfig(max_length=self.examples.config.max_text_tokens))
            out = [_encoded(self.examples[i], self.encoder) for i in self.indices[self.next : self.next + count]]
            self.next += count
            return out
        out = []
        for _ in range(count):
            if not self.pending:
                self._fill()
            out.append(self.pending.pop(0).result())
            self._fill()
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def prefetch_closing(prefetch: _Prefetcher):
    try:
        yield prefetch
    finally:
        prefetch.close()


def _batch(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x0 = torch.from_numpy(np.stack([it["labels"] for it in items]).astype(np.int64))
    text = torch.from_numpy(np.stack([it["text_tokens"] for it in items]))
    attr = torch.from_numpy(np.stack([attribute_vector(it["attributes"]) for it in items]))
    ignore = torch.from_numpy(np.stack([it["ignore_classes"] for it in items]))
    return x0, text, attr, ignore


def loss_voxel_weights(x0: torch.Tensor, ignore_index: int, tumour_weight: float) -> torch.Tensor:
    """(N, *S) float64 loss weights: 0 for unknown voxels, ``tumour_weight`` for tumour, else 1."""
    known = (x0 != ignore_index).to(torch.float64)
    if tumour_weight == 1.0:
        return known
    return known * torch.where(x0 == ID["tumour"], float(tumour_weight), 1.0).to(torch.float64)


class _Denoise(nn.Module):
    """Context and denoiser in one forward, so that DDP sees (and syncs) every parameter's use."""

    def __init__(self, model: MaskDenoiser):
        super().__init__()
        self.model = model

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, attr: torch.Tensor, drop_text: torch.Tensor
    ) -> torch.Tensor:
        return self.model(x_t, t, self.model.context(text, attr, drop_text=drop_text))


def _same_run(saved: MaskSamplerConfig, config: MaskSamplerConfig) -> bool:
    """Resumable when only the step count and the micro-batching differ."""
    same = replace(saved, steps=config.steps, grad_accumulation=config.grad_accumulation)
    return config_to_dict(same) == config_to_dict(config)


def train_mask_sampler(
    config: MaskSamplerConfig,
    run_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    root: Path | None = None,
    device: str = "cpu",
    workers: int = 1,
) -> Path:
    """Train (or resume) and return the run folder; ``run_dir/model`` holds the EMA model.

    Under ``torchrun`` every process calls this; they train one model with DistributedDataParallel
    (gloo on the CPU, NCCL on CUDA, ``guidegen.distributed``), each on its share of every batch,
    and only rank 0 writes the log, the checkpoints and the final model.

    Args:
        max_steps: stop after this many steps in *this call* (for tests and interrupted runs); the
            schedule still follows ``config.steps``.
        root: folder that relative paths in the config are relative to (the repo root).
        device: "cpu" or "cuda" (under torchrun: each process's ``cuda:LOCAL_RANK``).
        workers: data worker processes per training process (0: build examples in this process).
    """
    ctx = init_distributed(device)
    try:
        return _train(config, Path(run_dir), resume, progress, max_steps, root, ctx, workers)
    finally:
        cleanup(ctx)


def _train(
    config: MaskSamplerConfig,
    run_dir: Path,
    resume: bool,
    progress: bool,
    max_steps: int | None,
    root: Path | None,
    ctx: DistContext,
    workers: int,
) -> Path:
    device = ctx.device
    micro = batch_shares(config.batch_size, ctx, config.grad_accumulation)
    mine = [p for share in micro for p in share]  # this rank's positions in every global batch
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)  # initial weights only; every later draw is step-seeded
    model = MaskDenoiser(config)
    if config.init_from is not None:
        warm_start(model, config, resolve(config.init_from, root), grown_weights)  # a resumed run overwrites it
    model = model.to(device)
    precision = resolve_precision(config.precision, device)
    if device.type == "cpu":
        # oneDNN's 3-D convolution backward is about 2.5x faster on channels-last weights at the
        # sampler's full resolution: a 2-thread training step took 1.20 s instead of 1.38 s
        # (docs/results/train_demo_time.txt). Checkpoints are saved contiguous; the maths is the same.
        model = model.to(memory_format=torch.channels_last_3d)
        if precision == "fp32":
            model = onednn_convolutions(model, copy_first=False)  # same parameters, same state dict
    ema = EMA(model, config.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start = resume_training(
        run_dir, config, model=model, ema=ema, optimizer=opt, scaler=scaler, same_run=_same_run, ctx=ctx, resume=resume
    )
    diffusion = diffusion_from_config(config)
    if ctx.is_main:
        (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=1))
        remove_stale_checkpoints(run_dir)
        cases = load_base_cases(config, root)  # rank 0 prepares the cache, the others then read it
    barrier(ctx)
    if not ctx.is_main:
        cases = load_base_cases(config, root)
    examples = MaskExamples(cases, config)
    end = config.steps if max_steps is None else min(config.steps, start + max_steps)
    batch = config.batch_size
    prefetch = _Prefetcher(examples, [s * batch + p for s in range(start, end) for p in mine], workers)
    log_path = run_dir / "log.jsonl"
    if ctx.is_main:
        truncate_log(log_path, start)  # lines written after the last checkpoint belong to steps that are redone
    net = wrap_ddp(_Denoise(model), ctx, find_unused_parameters=True)  # null_text is used only when text is dropped
    whole = mine == list(range(batch))
    placeholder = torch.zeros((batch, *config.shape), dtype=torch.int64)
    locate = {p: i for i, p in enumerate(mine)}
    count_classes = torch.tensor([ID[c] for c in config.count_classes], dtype=torch.long)
    counting = config.count_weight > 0 and len(count_classes) > 0
    placing = config.outside_host_weight > 0
    host_classes = torch.tensor([ID[c] for c in ORGANS if ID[c] < config.num_classes], dtype=torch.long)

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    model.train()
    started = time.perf_counter()
    with (
        prefetch_closing(prefetch),
        Progress(
            TextColumn("[bold]train masks[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not (progress and ctx.is_main),
        ) as bar,
    ):
        task = bar.add_task("", total=config.steps, completed=start, loss=float("nan"))
        for step in range(start, end):
            # The step's draws are made for the whole global batch, as one process makes them; each
            # rank keeps its positions (`guidegen.distributed`).
            _, gen = step_generators(config.seed, step)
            x0, text, attr, ignore = _batch(prefetch.take(len(mine)))
            t = diffusion.sample_timesteps(batch, generator=gen)
            if whole:
                x_t = diffusion.q_sample(x0, t, generator=gen)
            else:
                full = placeholder.clone()
                full[mine] = x0
                x_t = diffusion.q_sample(full, t, generator=gen)[mine]
            drop_t = (torch.rand(batch, generator=gen) < config.drop_text)[mine]
            drop_a = (torch.rand(batch, generator=gen) < config.drop_attributes)[mine]
            t = t[mine]
            attr = torch.where(drop_a[:, None], torch.from_numpy(attribute_vector(None))[None], attr)
            # The loss is a mean over the known voxels of the global batch: weigh each micro-batch's
            # mean by its share of them (DDP averages gradients over ranks, hence × world size).
            # Tumour voxels count `tumour_weight` times, so "known voxels" are summed weights.
            voxel_weight = loss_voxel_weights(x0, diffusion.config.ignore_index, config.tumour_weight)
            known = voxel_weight.flatten(1).sum(1)
            total_known = max(float(all_reduce_sum(known.sum().reshape(1), ctx)), 1.0)
            if counting:  # the count term is a mean over the batch's (item, annotated class) pairs
                counted = (~ignore.index_select(1, count_classes)).sum(1).double()
                total_counted = max(float(all_reduce_sum(counted.sum().reshape(1), ctx)), 1.0)
            if placing:  # the host term is a mean over the batch's items with an annotated tumour
                placed = ((x0 == ID["tumour"]).flatten(1).any(1) & ~ignore[:, ID["tumour"]]).double()
                total_placed = max(float(all_reduce_sum(placed.sum().reshape(1), ctx)), 1.0)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, config.steps, config.lr, config.warmup)
            opt.zero_grad(set_to_none=True)
            logged = torch.zeros(5, dtype=torch.float64)
            for j, share in enumerate(micro):
                idx = torch.tensor([locate[p] for p in share])
                weight = float(known[idx].sum()) / total_known
                with no_sync(net, sync=j == len(micro) - 1):
                    x_in = F.one_hot(x_t[idx], config.num_classes).permute(0, 4, 1, 2, 3).float().to(device)
                    with autocast(device, precision):
                        logits = net(
                            x_in, t[idx].to(device), text[idx].to(device), attr[idx].to(device), drop_t[idx].to(device)
                        )
                    losses = categorical_loss(
                        diffusion,
                        logits.float(),
                        x0[idx].to(device),
                        x_t[idx].to(device),
                        t[idx].to(device),
                        ignore_classes=ignore[idx].to(device),
                        voxel_weight=voxel_weight[idx].float().to(device),
                    )
                    total = losses.total * weight
                    if counting:
                        share_counted = float(counted[idx].sum()) / total_counted
                        count_term = expected_count_loss(
                            logits,
                            x0[idx].to(device),
                            count_classes,
                            diffusion.config.ignore_index,
                            ignore[idx].to(device),
                        )
                        total = total + config.count_weight * count_term * share_counted
                        logged[3] += float(count_term.detach()) * share_counted
                    if placing:
                        share_placed = float(placed[idx].sum()) / total_placed
                        host_term = outside_host_loss(
                            logits,
                            x0[idx].to(device),
                            ID["tumour"],
                            host_classes,
                            diffusion.config.ignore_index,
                            ignore[idx].to(device),
                        )
                        total = total + config.outside_host_weight * host_term * share_placed
                        logged[4] += float(host_term.detach()) * share_placed
                    scaler.scale(total * ctx.world_size).backward()
                logged[:3] += (
                    torch.tensor(
                        [float(losses.total.detach()), float(losses.kl.detach()), float(losses.ce.detach())],
                        dtype=torch.float64,
                    )
                    * weight
                )
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(model)
            loss_value, kl_value, ce_value, count_value, host_value = all_reduce_sum(logged, ctx).tolist()
            bar.update(task, advance=1, loss=loss_value)
            if ctx.is_main:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(
                        json.dumps(
                            {
                                "step": step + 1,
                                "loss": loss_value,
                                "kl": kl_value,
                                "ce": ce_value,
                                **({"count": count_value} if counting else {}),
                                **({"outside_host": host_value} if placing else {}),
                                "t": int(t[0]),
                                "seconds": round(time.perf_counter() - started, 2),
                            }
                        )
                        + "\n"
                    )
            if ctx.is_main and ((step + 1) % config.checkpoint_every == 0 or step + 1 == end):
                state = {"step": step + 1, "optimizer": opt.state_dict(), "ema_updates": ema.updates}
                if scaler.is_enabled():
                    state["scaler"] = scaler.state_dict()
                save_checkpoint(
                    checkpoint_path(run_dir, step + 1),
                    config,
                    ema.state_dict(),
                    training=state,
                    raw_weights=model.state_dict(),
                )
                prune_checkpoints(run_dir, config.keep_checkpoints)
    if end == config.steps and ctx.is_main:
        save_checkpoint(run_dir / "model", config, ema.state_dict(), metadata={"component": "mask_sampler"})
    barrier(ctx)  # every rank returns once the files are written
    return run_dir
