"""What the label-map operators of `guidegen.data.ops` share: input checks, parameter records,
the soft-tissue rule, rotations and the search for a size on the voxel grid.

Every operator separates drawing from doing, as TorchIO does:

* ``make_params(rng, labels)`` draws a small frozen dataclass of parameters (world millimetres,
  degrees, names and integer seeds only), and
* ``apply(labels, params, ct=None) -> (labels, ct)`` is deterministic given those parameters.

Each ``apply`` appends its step (operator name, parameters, what was achieved) to
``labels.meta["augmentations"]`` (`step_meta`); `guidegen.data.augment` chains the operators and
replays such records.

Label maps are `Volume` objects of GuideGen ids (uint8, shape (X, Y, Z)) at any spacing and
orientation. `UNKNOWN` (255, "class not known here") is treated as a region of its own: it moves
with a deformation like any class, is never overwritten by organ growth or tumours, and points
sampled outside the array take the value of the nearest edge voxel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID

#: Classes that a growing organ or an inserted tumour may take over: loose tissue between organs.
#: (GuideGen has no "fat" class: fat is part of ``body``.) ``background`` is only soft where the
#: map has no ``body`` class; with a body outline, background is air outside the patient.
SOFT_CLASSES: tuple[str, ...] = ("background", "body", "small_bowel", "colon")

FAR_OUTSIDE_MM = np.float32(1e6)  # signed distance standing for "far outside", mm
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as the report measurements use


def finite_floats(values: Iterable[Any], name: str, n: int = 3) -> tuple[float, ...]:
    """``values`` as a tuple of ``n`` finite floats (a parameter field such as ``centre_mm``).

    Raises:
        ValueError: not ``n`` values, or one is not finite; the message names ``name``.
    """
    out = tuple(float(v) for v in values)
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"{name} must be {n} finite numbers, got {values!r}")
    return out


def check_range(value: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    """A (min, max) option within [``low``, ``high``] as two floats; ``ValueError`` naming ``name`` else."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return a, b


def check_inputs(labels: Volume, ct: Volume | None) -> None:
    """Refuse anything but an integer label `Volume` and, if given, a CT on the same grid."""
    if not isinstance(labels, Volume) or labels.kind != "labels":
        raise ValueError("labels must be a Volume of kind 'labels'")
    if not np.issubdtype(labels.array.dtype, np.integer):
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.array.dtype}")
    if ct is not None and (not isinstance(ct, Volume) or not ct.same_grid(labels)):
        raise ValueError("ct must be a Volume on the same grid (shape and affine) as labels")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and tuples turned into plain JSON types, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def params_to_json(params: Any) -> dict[str, Any]:
    """Parameters (an operator's frozen dataclass) as plain JSON types (tuples become lists)."""
    return jsonable(asdict(params))


def step_meta(labels: Volume, name: str, params: Any, result: dict[str, Any]) -> dict[str, Any]:
    """New meta with this step appended to ``augmentations`` (copying the list, never sharing it)."""
    meta = dict(labels.meta)
    step = {"transform": name, "params": params_to_json(params), "result": jsonable(result)}
    meta["augmentations"] = [*meta.get("augmentations", []), step]
    return meta


def soft_ids(array: np.ndarray) -> np.ndarray:
    """Ids of `SOFT_CLASSES` usable here: background only where the map has no body outline."""
    ids = [ID[n] for n in SOFT_CLASSES if n != "background"]
    if not np.any(array == ID["body"]):
        ids.append(ID["background"])
    return np.array(ids, dtype=np.uint8)


def rotation_matrix(rotation_deg: Sequence[float]) -> np.ndarray:
    """(3, 3) proper rotation (determinant +1) from extrinsic x-y-z angles in degrees."""
    return Rotation.from_euler("xyz", np.asarray(rotation_deg, dtype=np.float64), degrees=True).as_matrix()


def fit_scale(
    evaluate: Callable[[float], tuple[float, Any]],
    start: float,
    target: float,
    rel_tol: float,
    limits: tuple[float, float] = (0.0, np.inf),
    power: float = 1.0,
    iterations: int = 12,
) -> tuple[float, float, Any]:
    """Find the scale whose measured value comes closest to ``target``.

    On a voxel grid a size grows in steps with the scale, so a proportional update can jump
    back and forth over the target: this steps proportionally (``(target / value) ** power``)
    until the target is bracketed, then bisects, and returns the best scale tried.

    Args:
        evaluate: scale → (measured value, anything to keep); non-decreasing in the scale.
        start: first scale tried.
        target: wanted value.
        rel_tol: stop when within this fraction of ``target``.
        limits: allowed scales.
        power: exponent of the proportional update (1/3 when the value is a volume).
        iterations: most evaluations.

    Returns:
        (scale, value, kept) of the closest result.
    """
    best: tuple[float, float, float, Any] | None = None
    below, above = 0.0, np.inf  # largest scale measured short of the target, smallest one past it
    scale = float(np.clip(start, *limits))
    for _ in range(iterations):
        value, kept = evaluate(scale)
        err = abs(value - target)
        if best is None or err < best[0]:
            best = (err, scale, value, kept)
        if err <= rel_tol * target:
            break
        if value < target:
            below = max(below, scale)
        else:
            above = min(above, scale)
        if below > 0 and np.isfinite(above):
            if above / below < 1.002:
                break  # no scale in between changes the grid any more
            step = float(np.sqrt(below * above))
        else:
            step = scale * float(np.clip((target / value) ** power, 0.5, 2.0)) if value > 0 else 2.0 * scale
        step = float(np.clip(step, *limits))
        if step == scale:
            break  # pinned at a limit
        scale = step
    _, scale, value, kept = best  # type: ignore[misc]
    return scale, value, kept


def surface_points(mask: np.ndarray) -> np.ndarray:
    """(N, 3) indices of the voxels of ``mask`` on its surface (where the farthest pair lies)."""
    return np.argwhere(mask & ~ndimage.binary_erosion(mask))


class Transform(Protocol):
    """What `augment_case` needs from a transform."""

    params_type: type

    def applicable(self, labels: Volume) -> bool: ...

    def make_params(self, rng: np.random.Generator, labels: Volume | None = None) -> Any: ...

    def apply(self, labels: Volume, params: Any, ct: Volume | None = None) -> tuple[Volume, Volume | None]: ...
