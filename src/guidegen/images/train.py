"""Training of the slice-wise CT generator on prepared cases (``guidegen prepare`` output).

The examples are the prepared cases' axial slices, drawn, dropped out and augmented by
`guidegen.images.dataset` (`SliceDataset`: teacher-forced previous slice with noise-conditioning
augmentation, joint in-plane augmentation, classifier-free guidance dropout). The loss is
rectified-flow velocity regression (`guidegen.diffusion.flow`)::

    x_t = (1 − t)·x_0 + t·ε,   L = ‖v_θ(x_t, t | c) − (ε − x_0)‖²,   t ~ logit-normal

**Exact resume**: all randomness of step s comes from ``guidegen.training.step_generators(seed, s)``
(batch choice, augmentation, dropout, noise, t); a checkpoint stores raw weights, EMA weights,
optimizer state and the step, so a resumed run equals the uninterrupted run bit for bit on CPU.

**Data parallel** (``torchrun --nproc-per-node N -m guidegen train images … --run-dir DIR``): each
process builds and trains on its share of every global batch of ``batch_size`` slices, in
``grad_accumulation`` micro-batches, with the draws of the whole batch (`guidegen.distributed`);
rank 0 writes the log and the checkpoints. A run may resume with another N.

Run from the command line::

    guidegen train images --config recipes/image_generator_demo.json \\
        --prepared prepared/ --run runs/image_generator
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guidegen.checkpoint import save_checkpoint
from guidegen.config import config_to_dict
from guidegen.diffusion.flow import add_noise, sample_training_times, velocity_target
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
from guidegen.images.config import ImageGeneratorConfig
from guidegen.images.dataset import SliceBatch, SliceDataset
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.model import assemble_inputs, grown_weights, mask_channels
from guidegen.labels.vocabulary import ID
from guidegen.runtime.precision import autocast, resolve_precision
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

__all__ = ["LEVEL_EXCLUDED", "LEVEL_MIN_PIXELS", "flow_matching_loss", "structure_level_loss", "train_image_generator"]

#: Config fields that may change between a checkpoint and its resumed run without breaking exactness.
_RESUME_MUTABLE = {"checkpoint_every", "keep_checkpoints", "log_every", "grad_accumulation"}


#: Smallest number of pixels of a structure in slice k for its level to enter `structure_level_loss`
#: (a few-pixel sliver is partial volume with its neighbours, not the organ's level).
LEVEL_MIN_PIXELS = 8
#: Classes whose mean level is not a property of the structure: "body" is everything inside the
#: skin that no other class claims, a scan-dependent mix of fat, muscle and unlabelled organs; with it
#: in the level loss the model rendered complete sampled maps' body as fat (−160 HU) and every organ
#: 30–100 HU too dark (docs/results/image_generator_level_loss.txt).
LEVEL_EXCLUDED: tuple[str, ...] = ("body",)


def structure_level_loss(
    error: Tensor,
    labels: Tensor,
    num_classes: int,
    min_pixels: int = LEVEL_MIN_PIXELS,
    exclude: Sequence[str] = LEVEL_EXCLUDED,
) -> Tensor:
    """Mean over (slice, structure) of the squared mean of ``error`` inside the structure.

    Args:
        error: (B, 1, H, W) velocity error ``v_θ − v``.
        labels: (B, H, W) int64 label slice k (classes 1 … K−1 count; background, 255 unknown,
            −1 outside and the ``exclude`` classes do not).
        num_classes: K.
        min_pixels: structures with fewer pixels in a slice are skipped.
        exclude: class names left out (`LEVEL_EXCLUDED`).

    Returns:
        float32 scalar; 0 when no slice holds a structure of ``min_pixels``.
    """
    b = error.shape[0]
    valid = (labels > 0) & (labels < num_classes)
    for name in exclude:
        valid &= labels != ID[name]
    flat = torch.where(valid, labels, torch.zeros_like(labels)).reshape(b, -1)
    one_hot = (F.one_hot(flat, num_classes) * valid.reshape(b, -1, 1)).float()  # (B, HW, K)
    counts = one_hot.sum(1)  # (B, K)
    sums = torch.einsum("bp,bpk->bk", error.reshape(b, -1).float(), one_hot)
    present = counts >= min_pixels
    if not present.any():
        return error.new_zeros((), dtype=torch.float32)
    means = sums[present] / counts[present]
    return (means**2).mean()


def flow_matching_loss(
    model: ConditionalImageGenerator | nn.Module, batch: SliceBatch, t: Tensor, noise: Tensor, precision: str = "auto"
) -> Tensor:
    """Mean squared velocity error ``‖v_θ(x_t, t | c) − (ε − x_0)‖²`` of a batch (float32 scalar), plus
    ``level_loss_weight`` × `structure_level_loss` when the config asks for it."""
    x_t = add_noise(batch.target, noise, t)
    config = getattr(model, "module", model).config  # a DistributedDataParallel wrapper holds the model as .module
    z = batch.z if config.slice_position else torch.zeros_like(batch.z)
    inputs = assemble_inputs(x_t, mask_channels(batch.ctx, config.num_classes), batch.prev, batch.has_prev, z)
    with autocast(batch.target.device, precision):
        # Levels only when the batch has them: a model without them keeps the six-argument call.
        extra = {} if batch.levels is None else {"levels": batch.levels}
        pred = model(inputs, t, batch.phase, batch.annotated, batch.text, batch.uncond, **extra)
    error = pred.float() - velocity_target(batch.target, noise)
    loss = (error**2).mean()
    if config.level_loss_weight:
        centre = batch.ctx[:, config.context_radius]
        loss = loss + config.level_loss_weight * structure_level_loss(error, centre, config.num_classes)
    return loss


def _init_model(config: ImageGeneratorConfig) -> ConditionalImageGenerator:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(config.seed)
        return ConditionalImageGenerator(config)


def _same_run(a: ImageGeneratorConfig, b: ImageGeneratorConfig) -> bool:
    da, db = config_to_dict(a), config_to_dict(b)
    return all(da[k] == db[k] for k in da if k not in _RESUME_MUTABLE)


def train_image_generator(
    config: ImageGeneratorConfig,
    prepared_dir: str | Path,
    run_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
    text_embeddings: dict[str, Tensor] | None = None,
    device: str = "cpu",
) -> Path:
    """Train (or resume training) the slice generator.

    Under ``torchrun`` every process calls this; they train one model with DistributedDataParallel
    (gloo on the CPU, NCCL on CUDA, `guidegen.distributed`), each on its share of every batch, and
    only rank 0 writes the log, the checkpoints and the final model.

    Args:
        config: model and training settings.
        prepared_dir: ``guidegen prepare`` output (3 mm, ``image_size``² in-plane to match ``config``).
        run_dir: run folder: ``checkpoints/step_XXXXXXXX/`` (rotated), ``log.jsonl``, ``model/``.
        resume: continue from the newest complete checkpoint in ``run_dir`` if there is one.
        progress: show a rich progress bar with the loss.
        max_steps: stop after this optimizer step (≤ ``config.steps``) with a checkpoint, e.g. to
            split a run; the learning-rate schedule still follows ``config.steps``.
        text_embeddings: optional case id → pooled prompt embedding (see `SliceDataset`).
        device: "cpu" or "cuda" (under torchrun: each process's ``cuda:LOCAL_RANK``).

    Returns:
        ``run_dir/model`` (the EMA weights, loadable with `ConditionalImageGenerator.from_pretrained`)
        when ``config.steps`` is reached, else the checkpoint written at ``max_steps``.
    """
    run_dir = Path(run_dir)
    stop = config.steps if max_steps is None else int(max_steps)
    if not 1 <= stop <= config.steps:
        raise ValueError(f"max_steps must be in 1..config.steps={config.steps}, got {max_steps}")
    ctx = init_distributed(device)
    try:
        return _train(config, prepared_dir, run_dir, resume, progress, stop, text_embeddings, ctx)
    finally:
        cleanup(ctx)


def _take(batch: SliceBatch, idx: Tensor, device: torch.device) -> SliceBatch:
    """Items ``idx`` of a batch, on ``device``."""
    return SliceBatch(
        **{
            f: None if getattr(batch, f) is None else getattr(batch, f)[idx].to(device)
            for f in SliceBatch.__dataclass_fields__
        }
    )


def _train(
    config: ImageGeneratorConfig,
    prepared_dir: str | Path,
    run_dir: Path,
    resume: bool,
    progress: bool,
    stop: int,
    text_embeddings: dict[str, Tensor] | None,
    ctx: DistContext,
) -> Path:
    device = ctx.device
    micro = batch_shares(config.batch_size, ctx, config.grad_accumulation)
    mine = [p for share in micro for p in share]  # this rank's positions in every global batch
    whole = mine == list(range(config.batch_size))
    data = SliceDataset(prepared_dir, config, text_embeddings)
    model = _init_model(config)
    if config.init_from is not None:
        warm_start(model, config, config.init_from, grown_weights)  # a resumed run then overwrites it
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    precision = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = EMA(model, config.ema_decay)
    step = resume_training(
        run_dir, config, model=model, ema=ema, optimizer=opt, scaler=scaler, same_run=_same_run, ctx=ctx, resume=resume
    )
    log_path = run_dir / "log.jsonl"
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=1) + "\n", encoding="utf-8")
        remove_stale_checkpoints(run_dir)
        truncate_log(log_path, step)  # lines after the checkpoint belong to steps that are done again
    net = wrap_ddp(model, ctx)

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    recent: list[float] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            Progress(
                TextColumn("[bold]image generator[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                disable=not (progress and ctx.is_main),
            )
        )
        log = stack.enter_context(open(log_path, "a", encoding="utf-8")) if ctx.is_main else None
        task = bar.add_task("train", total=config.steps, completed=step, loss="—")
        while step < stop:
            # The step's draws are made for the whole global batch, as one process makes them; each
            # rank keeps its positions (`guidegen.distributed`).
            rng, gen = step_generators(config.seed, step)
            batch = data.make_batch(rng, gen, config.batch_size, select=None if whole else mine)
            t = sample_training_times(config.batch_size, config.flow, gen)
            noise = torch.randn((config.batch_size, *batch.target.shape[1:]), generator=gen)
            if not whole:
                t, noise = t[mine], noise[mine]
            lr = cosine_lr(step, config.steps, config.lr, config.warmup_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            logged = torch.zeros(1, dtype=torch.float64)
            for j, share in enumerate(micro):
                idx = torch.tensor([mine.index(p) for p in share])
                weight = len(share) / config.batch_size  # the loss is a mean over the global batch
                with no_sync(net, sync=j == len(micro) - 1):
                    loss = flow_matching_loss(
                        net, _take(batch, idx, device), t[idx].to(device), noise[idx].to(device), precision
                    )
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss at step {step}; lower lr or use precision='fp32'")
                    # DDP averages the gradients over the ranks, hence × world size.
                    scaler.scale(loss * (weight * ctx.world_size)).backward()
                logged += float(loss.detach()) * weight
            scaler.unscale_(opt)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(model)
            step += 1
            recent = (recent + [float(all_reduce_sum(logged, ctx))])[-config.log_every :]
            if step % config.log_every == 0 or step == stop:
                mean = sum(recent) / len(recent)
                if log is not None:
                    log.write(
                        json.dumps(
                            {
                                "step": step,
                                "loss": round(mean, 6),
                                "lr": lr,
                                "seconds": round(time.perf_counter() - started, 1),
                            }
                        )
                        + "\n"
                    )
                    log.flush()
                bar.update(task, loss=f"{mean:.4f}")
            bar.update(task, completed=step)
            if ctx.is_main and (step % config.checkpoint_every == 0 or step == stop):
                _save(run_dir, config, model, ema, opt, step, scaler)
    final = run_dir / "model"
    if step >= config.steps and ctx.is_main:
        save_checkpoint(final, config, ema.state_dict(), metadata={"component": "image_generator", "step": str(step)})
    barrier(ctx)  # every rank returns once the files are written
    return final if step >= config.steps else checkpoint_path(run_dir, step)


def _save(
    run_dir: Path,
    config: ImageGeneratorConfig,
    model: ConditionalImageGenerator,
    ema: EMA,
    opt: torch.optim.Optimizer,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    state = {"step": step, "optimizer": opt.state_dict(), "ema_updates": ema.updates}
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    save_checkpoint(
        checkpoint_path(run_dir, step),
        config,
        ema.state_dict(),
        training=state,
        raw_weights=model.state_dict(),
        metadata={"component": "image_generator", "step": str(step)},
    )
    prune_checkpoints(run_dir, config.keep_checkpoints)
