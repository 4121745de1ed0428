"""Checkpoints: ``config.json`` + ``model.safetensors`` (+ training state), checksummed, written atomically.

A checkpoint folder holds:

* ``config.json``: the component's frozen dataclass config;
* ``model.safetensors``: weights used for inference (the EMA weights when training with EMA);
* ``training.safetensors`` + ``training.pt`` (optional): raw weights, optimizer state and step
  for an exact resume (``training.pt`` is loaded with ``weights_only=True``);
* ``checksums.json``: sha256 of every file, verified on load, so a corrupted or half-copied
  checkpoint is refused with a clear error instead of producing garbage.

The folder is written under a temporary name, fsynced and renamed: a crash never leaves a
checkpoint that looks complete but is not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from guidegen.config import load_config, save_config
from guidegen.errors import InputError
from guidegen.io.atomic import atomic_dir

T = TypeVar("T")
CHECKSUMS = "checksums.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(
    folder: str | Path,
    config: Any,
    weights: dict[str, torch.Tensor],
    training: dict[str, Any] | None = None,
    raw_weights: dict[str, torch.Tensor] | None = None,
    overwrite: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    Args:
        folder: destination folder.
        config: the component's dataclass config.
        weights: state dict for inference (EMA weights if any).
        training: optimizer state, step, … for resuming (saved with torch.save).
        raw_weights: the non-EMA weights, needed to resume training exactly.
        metadata: strings stored in the safetensors header (model id, version …).
    """
    folder = Path(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        save_config(config, tmp / "config.json")
        save_file(_contiguous(weights), str(tmp / "model.safetensors"), metadata=metadata or {})
        if raw_weights is not None:
            save_file(_contiguous(raw_weights), str(tmp / "training.safetensors"))
        if training is not None:
            torch.save(training, tmp / "training.pt")
        sums = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n", encoding="utf-8")
    return folder


def verify_checkpoint(folder: str | Path) -> None:
    """Raise `InputError` naming the file when a checkpoint is incomplete or corrupted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "checkpoint folder not found")
    sums_path = folder / CHECKSUMS
    if not sums_path.exists():
        raise InputError(folder, f"is not a complete checkpoint (no {CHECKSUMS})")
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(sums_path, f"is unreadable ({exc})") from None
    for name in ("config.json", "model.safetensors"):
        if name not in sums:
            raise InputError(folder / name, "is missing from the checkpoint")
    for name, expected in sums.items():
        path = folder / name
        if not path.exists():
            raise InputError(path, "is missing from the checkpoint")
        if _sha256(path) != expected:
            raise InputError(path, "is corrupted (sha256 checksum mismatch)")


def load_checkpoint(
    folder: str | Path, config_cls: type[T], training: bool = False, verify: bool = True
) -> tuple[T, dict[str, torch.Tensor], dict[str, Any] | None]:
    """Load (config, inference weights, training state or None)."""
    folder = Path(folder)
    if verify:
        verify_checkpoint(folder)
    config = load_config(config_cls, folder / "config.json")
    try:
        weights = load_file(str(folder / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise InputError(folder / "model.safetensors", f"is not a readable safetensors file ({exc})") from None
    state = None
    if training and (folder / "training.pt").exists():
        state = torch.load(folder / "training.pt", map_location="cpu", weights_only=True)
        if (folder / "training.safetensors").exists():
            state["raw_weights"] = load_file(str(folder / "training.safetensors"))
    return config, weights, state


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], folder: str | Path) -> None:
    """``model.load_state_dict(weights)``, refused in one line naming the folder's weights file when
    they are not the network its config describes."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(Path(folder) / "model.safetensors", f"does not match its config.json ({first})") from None
