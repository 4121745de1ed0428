"""Argument checks shared by the sampled-mask quality checks (`guidegen.evaluation.masks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import UNKNOWN


def check_label_array(array: Any, name: str) -> np.ndarray:
    """``array`` as a 3-D integer array of GuideGen ids (0-255); ValueError naming ``name`` otherwise."""
    if not isinstance(array, np.ndarray) or array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D label array or a Volume, got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer label ids, got dtype {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > UNKNOWN):
        raise ValueError(f"{name} holds ids outside 0-{UNKNOWN}")
    return array


def check_label_volume(volume: Any, name: str) -> np.ndarray:
    """The array of a label `Volume` (see `check_label_array`); ValueError naming ``name`` otherwise."""
    if not isinstance(volume, Volume):
        raise ValueError(f"{name} must be a guidegen Volume (label map), got {type(volume).__name__}")
    return check_label_array(np.asarray(volume.array), name)


def check_class_names(classes: Sequence[str], allowed: Sequence[str], name: str) -> tuple[str, ...]:
    """``classes`` (one name or several) as a tuple, each in ``allowed``; ValueError naming ``name``."""
    if isinstance(classes, str):
        classes = (classes,)
    bad = [c for c in classes if c not in allowed]
    if bad:
        raise ValueError(f"{name}: {', '.join(map(repr, bad))} not allowed; valid: {', '.join(allowed)}")
    return tuple(classes)
