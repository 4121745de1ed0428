"""Training plumbing shared by both generative stages: EMA, autocast (`guidegen.runtime`), seeding, checkpoint rotation.

Exact resume rests on one rule: every random draw of step ``s`` comes from generators seeded with
``(seed, s)`` (`step_generators`), so a run resumed from the checkpoint at step ``s`` makes the same
draws as the uninterrupted run, without saving or restoring global RNG state.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from guidegen.checkpoint import load_checkpoint
from guidegen.distributed import broadcast_object
from guidegen.errors import InputError


def step_generators(
    seed: int, step: int, device: str | torch.device = "cpu"
) -> tuple[np.random.Generator, torch.Generator]:
    """Independent numpy and torch generators for one training step."""
    rng = np.random.default_rng([seed, step])
    gen = torch.Generator(device=device)
    gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
    return rng, gen


class EMA:
    """Exponential moving average of weights, with warm-up.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates: plain EMA lags badly in
    short runs (seen in our CPU measurements), the warm-up lets early weights through.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.state_dict().values(), model.state_dict().values()):
            if s.dtype.is_floating_point:
                s.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                s.copy_(p)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.shadow.load_state_dict(state)
        self.updates = updates


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (default: the cores this process may use, shared among the
    ``LOCAL_WORLD_SIZE`` processes that torchrun started on this machine)."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    torch.set_num_threads(max(1, int(threads)))


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (``step_00001000`` folders)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "checksums.json").exists()),
        key=_step_of,
    )


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[1])


def latest_step(run_dir: str | Path) -> int:
    """The step of a run's newest complete checkpoint (0 without one): where a resumed training starts."""
    done = checkpoint_dirs(run_dir)
    return _step_of(done[-1]) if done else 0


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def truncate_log(path: str | Path, step: int) -> None:
    """Keep the lines of a ``log.jsonl`` up to ``step``: a resumed run logs the later steps again.

    A last line cut short by a crash is dropped too.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def remove_stale_checkpoints(run_dir: str | Path) -> None:
    """Delete the temporary folders of checkpoint writes that a crash (or SIGKILL) interrupted."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for tmp in root.iterdir():
            if tmp.is_dir() and tmp.name.startswith(".step_") and tmp.name.endswith((".tmp", ".old")):
                shutil.rmtree(tmp, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def resume_training(
    run_dir: str | Path,
    config,
    *,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    same_run,
    ctx,
    resume: bool = True,
) -> int:
    """Load the newest checkpoint of ``run_dir`` into the training objects; the step to go on from.

    Every process resumes from rank 0's pick (its checkpoint list is the one that counts). A
    checkpoint whose config fails ``same_run(saved, config)`` is refused: resuming it would train
    another model than the config says. Returns 0 (nothing loaded) when there is no checkpoint or
    ``resume`` is false.
    """
    existing = checkpoint_dirs(run_dir) if resume else []
    latest = broadcast_object(str(existing[-1]) if existing else None, ctx)
    if latest is None:
        return 0
    latest = Path(latest)
    saved, ema_weights, state = load_checkpoint(latest, type(config), training=True)
    if state is None or "raw_weights" not in state:
        raise InputError(latest, "has no training state to resume from")
    if not same_run(saved, config):
        raise InputError(
            latest / "config.json", "was trained with another configuration; use a new run folder or --no-resume"
        )
    model.load_state_dict(state["raw_weights"])
    ema.load_state_dict(ema_weights, int(state["ema_updates"]))
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])


def warm_start(model: nn.Module, config, folder: str | Path, grow) -> dict:
    """Load a trained model folder's weights into ``model`` before training (a recipe's ``init_from``).

    The folder's network must be the recipe's, except for what ``grow(weights, old_config, config)``
    (each network's ``grown_weights``) can map: fewer classes (an older vocabulary), and for the mask
    sampler a conditioning path the old network lacked. ``grow`` returns the weights as they are
    when nothing differs. Returns the folder and how many classes it knew.
    """
    folder = Path(folder)
    old, weights, _ = load_checkpoint(folder, type(config))
    if old.num_classes > config.num_classes:
        raise InputError(folder, f"knows {old.num_classes} classes, more than the recipe's {config.num_classes}")
    weights = grow(weights, old, config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise InputError(folder, f"is not the recipe's network (init_from): {first[0].strip()}") from None
    return {"init_from": str(folder), "init_classes": old.num_classes}
