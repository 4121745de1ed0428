"""Random, replayable augmentation of GuideGen label maps (and optionally their CT).

The mask sampler learns from very few real label maps, so it needs variety that still looks like
anatomy: smooth deformations, small rigid jitter, organs that are larger or smaller than in the
source (so "enlarged spleen" exists in the training data) and inserted tumours of real shapes (so
"4 cm sigmoid colon cancer" exists).

Every transform separates drawing from doing, as TorchIO does:

* ``make_params(rng, labels)`` draws a small frozen dataclass of parameters (world millimetres,
  degrees, names and integer seeds only), and
* ``apply(labels, params, ct=None) -> (labels, ct)`` is deterministic given those parameters.

`augment_case` chains the transforms with configurable probabilities and returns a JSON-able record
of the parameters and of what was actually achieved (organ volume, tumour diameter); `replay`
re-applies a record. Each ``apply`` also appends its step to ``labels.meta["augmentations"]``.

Label maps are `Volume` objects of GuideGen ids (uint8, shape (X, Y, Z)) at any spacing and
orientation. `UNKNOWN` (255, "class not known here") is treated as a region of its own: it moves
with a deformation like any class, is never overwritten by organ growth or tumours, and points
sampled outside the array take the value of the nearest edge voxel.

Resampling of labels is shape-based (Raya & Udupa 1990), as in `guidegen.grids.resample`: every
class's signed distance map (mm) is interpolated at the deformed positions and each voxel takes
the class it lies deepest inside. Boundaries follow the interpolated zero level sets, so they stay
smooth (no nearest-neighbour staircases), and every voxel gets exactly one class (no gaps at
junctions of three classes). Deformations and jitter interpolate with quadratic B-splines rather
than linearly, which keeps thin and small organs from losing volume at every resampling (see
`_warp_labels`); only voxels near a class boundary are interpolated at all.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline
from scipy.spatial.transform import Rotation

from guidegen.errors import InputError
from guidegen.grids.geometry import longest_diameter_mm
from guidegen.grids.resample import resample_labels, signed_distance
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, TUMOUR_HOSTS, UNKNOWN

RECORD_VERSION = 1

#: Classes that a growing organ or an inserted tumour may take over: loose tissue between organs.
#: (GuideGen has no "fat" class: fat is part of ``body``.) ``background`` is only soft where the
#: map has no ``body`` class; with a body outline, background is air outside the patient.
SOFT_CLASSES: tuple[str, ...] = ("background", "body", "small_bowel", "colon")
#: Organs `OrganScaling` draws from by default.
SCALABLE_ORGANS: tuple[str, ...] = ("spleen", "liver", "kidney_right", "kidney_left", "pancreas", "gallbladder")
#: Colon segments a tumour site may name (the names a ``site_of`` callable returns).
COLON_SEGMENTS: tuple[str, ...] = ("caecum", "ascending", "transverse", "descending", "sigmoid", "rectum")
#: Default target longest diameters per host organ, mm: small hosts get smaller tumours, so that a
#: drawn tumour usually fits inside its organ.
DIAMETER_RANGES_MM: dict[str, tuple[float, float]] = {
    "liver": (10.0, 70.0),
    "kidney_right": (10.0, 50.0),
    "kidney_left": (10.0, 50.0),
    "pancreas": (10.0, 40.0),
    "colon": (15.0, 60.0),
    "spleen": (10.0, 45.0),
    "stomach": (15.0, 60.0),
}
#: Default tumour counts per host (inclusive range); hosts not listed get exactly one.
COUNT_RANGES: dict[str, tuple[int, int]] = {"liver": (1, 3)}
#: Rigid jitter angles beyond this are refused: a rotation near 180° would put the liver on the
#: left without any mirroring, which is not anatomy either.
MAX_JITTER_DEGREES = 30.0

#: Real tumour masks used by `default_tumour_shapes`: (file below the data folder, tumour id).
DEFAULT_TUMOUR_SOURCES: tuple[tuple[str, int], ...] = (
    ("lits-117-crop/labels.nii.gz", 2),  # LiTS volume 117: several liver lesions (spacing unknown)
    ("masks-only/msd_colon_050_tumour.nii.gz", 1),  # MSD Task10 colon case 50: a colon primary
)

_FAR = np.float32(1e6)  # signed distance standing for "far outside", mm
_CONN26 = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as the report measurements use

SiteOf = Callable[[Volume, np.ndarray], "list[str]"]


# --------------------------------------------------------------------------------------------------
# Parameters


def _floats(values: Iterable[Any], name: str, n: int = 3) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"{name} must be {n} finite numbers, got {values!r}")
    return out


@dataclass(frozen=True)
class ElasticParams:
    """Parameters of `ElasticDeformation`.

    Attributes:
        seed: seed of the white noise behind the displacement field (the field itself is not stored).
        amplitude_mm: largest displacement of any voxel along any array axis, mm.
        smoothness_mm: standard deviation of the Gaussian that smooths the noise, mm; larger is
            smoother (organ volumes change by roughly amplitude / smoothness).
    """

    seed: int
    amplitude_mm: float
    smoothness_mm: float

    def __post_init__(self) -> None:
        if not 0 <= int(self.seed) < 2**63:
            raise ValueError(f"seed must be a non-negative 63-bit integer, got {self.seed}")
        if not (np.isfinite(self.amplitude_mm) and self.amplitude_mm >= 0):
            raise ValueError(f"amplitude_mm must be >= 0 mm, got {self.amplitude_mm}")
        if not (np.isfinite(self.smoothness_mm) and self.smoothness_mm > 0):
            raise ValueError(f"smoothness_mm must be > 0 mm, got {self.smoothness_mm}")


@dataclass(frozen=True)
class JitterParams:
    """Parameters of `RigidJitter`: a proper rotation (no reflection can be expressed) and a shift.

    Attributes:
        rotation_deg: angles about the world x, y, z axes (RAS+), degrees, applied in that order
            (extrinsic); each at most `MAX_JITTER_DEGREES` in magnitude.
        translation_mm: shift along world x, y, z, mm.
        centre_mm: world point the rotation turns about, mm; ``None``: the centroid of the labelled
            voxels (not background, not unknown) of the map it is applied to.
    """

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        rotation = _floats(self.rotation_deg, "rotation_deg")
        if max(abs(a) for a in rotation) > MAX_JITTER_DEGREES:
            raise ValueError(f"rotation_deg must stay within ±{MAX_JITTER_DEGREES}° per axis, got {rotation}")
        object.__setattr__(self, "rotation_deg", rotation)
        object.__setattr__(self, "translation_mm", _floats(self.translation_mm, "translation_mm"))
        if self.centre_mm is not None:
            object.__setattr__(self, "centre_mm", _floats(self.centre_mm, "centre_mm"))


@dataclass(frozen=True)
class ScalingParams:
    """Parameters of `OrganScaling`.

    Attributes:
        organ: class name of the organ to scale (e.g. ``"spleen"``).
        volume_factor: requested volume ratio after / before (the linear factor is its cube root).
        match_volume: adjust the linear factor (by at most ±25 %) so that the achieved volume comes
            close to the requested one although growth is blocked by other organs.
    """

    organ: str
    volume_factor: float
    match_volume: bool = True

    def __post_init__(self) -> None:
        if self.organ not in ID or self.organ in ("background", "body"):
            raise ValueError(f"organ must be an organ class name, got {self.organ!r}")
        if not (np.isfinite(self.volume_factor) and 0.1 <= self.volume_factor <= 10.0):
            raise ValueError(f"volume_factor must be between 0.1 and 10, got {self.volume_factor}")


@dataclass(frozen=True)
class TumourSpec:
    """One tumour to insert.

    Attributes:
        shape_index: index into the transform's shape bank.
        shape_source: the shape's ``source`` (checked on apply, so a record cannot silently be
            replayed with another bank).
        centre_mm: world position (RAS+ mm) of a host voxel centre where the shape's centroid goes.
        diameter_mm: target longest diameter, mm.
        rotation_deg: orientation of the shape, extrinsic x-y-z angles in degrees.
    """

    shape_index: int
    shape_source: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    rotation_deg: tuple[float, float, float]

    def __post_init__(self) -> None:
        if int(self.shape_index) < 0:
            raise ValueError(f"shape_index must be >= 0, got {self.shape_index}")
        object.__setattr__(self, "centre_mm", _floats(self.centre_mm, "centre_mm"))
        object.__setattr__(self, "rotation_deg", _floats(self.rotation_deg, "rotation_deg"))
        if not (np.isfinite(self.diameter_mm) and 1.0 <= self.diameter_mm <= 300.0):
            raise ValueError(f"diameter_mm must be between 1 and 300 mm, got {self.diameter_mm}")


@dataclass(frozen=True)
class TumourParams:
    """Parameters of `TumourInsertion`.

    Attributes:
        host: host organ name (one of `TUMOUR_HOSTS`).
        segment: colon segment the sites were drawn from, or ``None``.
        tumours: the tumours, inserted in order.
    """

    host: str
    segment: str | None
    tumours: tuple[TumourSpec, ...]

    def __post_init__(self) -> None:
        if self.host not in TUMOUR_HOSTS:
            raise ValueError(f"host must be one of {', '.join(TUMOUR_HOSTS)}, got {self.host!r}")
        tumours = tuple(t if isinstance(t, TumourSpec) else TumourSpec(**t) for t in self.tumours)
        if not tumours:
            raise ValueError("tumours must hold at least one TumourSpec")
        object.__setattr__(self, "tumours", tumours)


Params = ElasticParams | JitterParams | ScalingParams | TumourParams


def params_to_json(params: Params) -> dict[str, Any]:
    """Parameters as plain JSON types (tuples become lists)."""
    return _jsonable(asdict(params))


def params_from_json(kind: type[Params] | str, data: dict[str, Any]) -> Params:
    """Rebuild a parameter dataclass from `params_to_json` output.

    Args:
        kind: the dataclass or its transform's name (``"ElasticDeformation"`` …).
        data: the JSON dictionary.

    Raises:
        ValueError: unknown ``kind`` or fields.
    """
    cls = _TRANSFORMS[kind].params_type if isinstance(kind, str) and kind in _TRANSFORMS else kind
    if not isinstance(cls, type) or cls not in (ElasticParams, JitterParams, ScalingParams, TumourParams):
        raise ValueError(f"kind must be a parameter class or one of {', '.join(_TRANSFORMS)}, got {kind!r}")
    names = {f.name for f in fields(cls)}
    extra = set(data) - names
    if extra:
        raise ValueError(f"data has fields {sorted(extra)} that {cls.__name__} does not know")

    def tup(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    values = {k: tup(v) for k, v in data.items()}
    if cls is TumourParams:
        values["tumours"] = tuple(TumourSpec(**{k: tup(v) for k, v in t.items()}) for t in data["tumours"])
    return cls(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _check_inputs(labels: Volume, ct: Volume | None) -> None:
    if not isinstance(labels, Volume) or labels.kind != "labels":
        raise ValueError("labels must be a Volume of kind 'labels'")
    if not np.issubdtype(labels.array.dtype, np.integer):
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.array.dtype}")
    if ct is not None and (not isinstance(ct, Volume) or not ct.same_grid(labels)):
        raise ValueError("ct must be a Volume on the same grid (shape and affine) as labels")


def _step_meta(labels: Volume, name: str, params: Params, result: dict[str, Any]) -> dict[str, Any]:
    """New meta with this step appended to ``augmentations`` (copying the list, never sharing it)."""
    meta = dict(labels.meta)
    step = {"transform": name, "params": params_to_json(params), "result": _jsonable(result)}
    meta["augmentations"] = [*meta.get("augmentations", []), step]
    return meta


def _grid_points(shape: tuple[int, ...]) -> np.ndarray:
    """(3, X, Y, Z) float32 voxel indices."""
    return np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"))


def _warp_labels(array: np.ndarray, spacing: Sequence[float], coords: np.ndarray) -> np.ndarray:
    """Shape-based resampling of a label array at arbitrary source positions.

    Args:
        array: (X, Y, Z) integer class ids (UNKNOWN included, treated like any class).
        spacing: voxel size of ``array`` along its axes, mm.
        coords: (3, *out_shape) source voxel indices of every output voxel. Positions outside the
            array take the nearest edge voxel's class (the field of view continues its edge).

    Returns:
        (*out_shape) uint8 class ids: for each output voxel the class whose interpolated signed
        distance is smallest.
    """
    shape = np.array(array.shape)
    coords = np.stack([np.clip(coords[i], 0, shape[i] - 1) for i in range(3)]).astype(np.float32)
    nearest = tuple(np.rint(coords).astype(np.intp))
    out = np.asarray(array[nearest], dtype=np.uint8)
    classes = np.unique(array)
    if len(classes) == 1:
        return out
    # Away from boundaries every class's distance map agrees with nearest neighbour; only output
    # voxels whose nearest source voxel has another class within one voxel (the quadratic spline's
    # stencil) need the distance maps. At 6 mm this skips about 60 % of the volume (checked to give
    # the same result as a two-voxel band on the bundled scans).
    edge = ndimage.maximum_filter(array, size=3) != ndimage.minimum_filter(array, size=3)
    band = edge[nearest]
    points = coords[:, band]  # (3, M)
    if points.shape[1] == 0:
        return out
    best = np.full(points.shape[1], _FAR, dtype=np.float32)
    chosen = out[band]
    boxes = ndimage.find_objects(array.astype(np.int32, copy=False) + 1)  # +1 so class 0 has a box too
    margin = 3  # voxels around a class: the spline stencil never reaches the cropped-off border
    for cls in classes:
        box = boxes[int(cls)]
        lo = np.array([max(s.start - margin, 0) for s in box])
        hi = np.array([min(s.stop + margin, n) for s, n in zip(box, shape)])
        # Only points whose source falls inside the box can be inside this class.
        near = np.all((points >= lo[:, None]) & (points <= hi[:, None] - 1), axis=0)
        if not near.any():
            continue
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        sdf = signed_distance(array[region] == cls, tuple(spacing))
        # Quadratic B-spline, not linear: linear interpolation of a convex organ's distance map
        # overestimates it between samples, so thin or small organs (pancreas, vessels) lost 10-30 %
        # of their volume at every resampling (6 mm grid); quadratic splines keep the mean change
        # within ~1 % of nearest neighbour's (cubic does no better and costs more).
        coefficients = ndimage.spline_filter(sdf, order=2, output=np.float32, mode="nearest")
        values = ndimage.map_coordinates(coefficients, points[:, near] - lo[:, None].astype(np.float32), order=2,
                                         mode="nearest", prefilter=False)
        index = np.flatnonzero(near)
        take = values < best[index]
        best[index[take]] = values[take]
        chosen[index[take]] = cls
    out[band] = chosen
    return out


def _warp_ct(ct: Volume, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of CT at source voxel positions (3, X, Y, Z); edges replicate."""
    return ndimage.map_coordinates(ct.array.astype(np.float32), coords, order=1, mode="nearest").astype(np.float32)


def _labelled_centroid_mm(labels: Volume) -> np.ndarray:
    """World centroid of labelled voxels (not background, not unknown), else of the grid."""
    mask = (labels.array != 0) & (labels.array != UNKNOWN)
    index = np.argwhere(mask).mean(axis=0) if mask.any() else (np.array(labels.shape) - 1) / 2.0
    return labels.world_coordinates(index)


def _class_volumes_ml(labels: Volume) -> dict[str, float]:
    counts = np.bincount(labels.array.ravel(), minlength=256)
    return {NAMES[i]: round(float(counts[i]) * labels.voxel_volume_ml, 3) for i in range(1, len(NAMES)) if counts[i]}


def soft_ids(array: np.ndarray) -> np.ndarray:
    """Ids of `SOFT_CLASSES` usable here: background only where the map has no body outline."""
    ids = [ID[n] for n in SOFT_CLASSES if n != "background"]
    if not np.any(array == ID["body"]):
        ids.append(ID["background"])
    return np.array(ids, dtype=np.uint8)


def _fit_scale(
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


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """(N, 3) indices of the voxels of ``mask`` on its surface (where the farthest pair lies)."""
    return np.argwhere(mask & ~ndimage.binary_erosion(mask))


# --------------------------------------------------------------------------------------------------
# Transforms


class Transform(Protocol):
    """What `augment_case` needs from a transform."""

    params_type: type

    def applicable(self, labels: Volume) -> bool: ...

    def make_params(self, rng: np.random.Generator, labels: Volume | None = None) -> Any: ...

    def apply(self, labels: Volume, params: Any, ct: Volume | None = None) -> tuple[Volume, Volume | None]: ...


def _check_range(value: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return a, b


class ElasticDeformation:
    """Smooth random displacement field, applied shape-based to labels and linearly to CT.

    The field is Gaussian-smoothed white noise per array axis, drawn on a coarse grid (a third of
    the smoothness) and interpolated with cubic splines, so its look depends on millimetres, not on
    the voxel size; each component is then scaled so its largest magnitude is ``amplitude_mm``.

    Args:
        amplitude_mm: (min, max) range the amplitude is drawn from, mm.
        smoothness_mm: (min, max) range of the smoothing Gaussian's sigma, mm.
    """

    params_type = ElasticParams

    def __init__(self, amplitude_mm: Sequence[float] = (4.0, 10.0), smoothness_mm: Sequence[float] = (35.0, 60.0)):
        self.amplitude_mm = _check_range(amplitude_mm, "amplitude_mm", 0.0, 100.0)
        self.smoothness_mm = _check_range(smoothness_mm, "smoothness_mm", 1.0, 1000.0)

    def applicable(self, labels: Volume) -> bool:
        return True

    def make_params(self, rng: np.random.Generator, labels: Volume | None = None) -> ElasticParams:
        return ElasticParams(
            seed=int(rng.integers(0, 2**32)),  # 32 bits: exact in any JSON reader
            amplitude_mm=round(float(rng.uniform(*self.amplitude_mm)), 3),
            smoothness_mm=round(float(rng.uniform(*self.smoothness_mm)), 3),
        )

    @staticmethod
    def displacement(labels: Volume, params: ElasticParams) -> np.ndarray:
        """The field: (3, X, Y, Z) float32 displacement along each array axis, mm.

        An output voxel at index p shows what the input had at p + u(p) / spacing.
        """
        spacing = np.array(labels.spacing)
        step = params.smoothness_mm / 3.0  # coarse grid: 3 nodes per sigma resolve the Gaussian
        # Cubic-spline weights from coarse nodes to voxels, per axis: the field is a tensor product,
        # so interpolating axis by axis costs a few matrix products instead of a 3-D spline.
        weights = []
        for n, s in zip(labels.shape, spacing):
            position = np.arange(n) * s / step
            nodes = max(int(np.ceil(position[-1])) + 1, 4)
            weights.append(make_interp_spline(np.arange(nodes), np.eye(nodes), k=3)(position))
        rng = np.random.default_rng(params.seed)
        field = np.empty((3, *labels.shape), dtype=np.float32)
        for axis in range(3):
            noise = rng.standard_normal(tuple(w.shape[1] for w in weights))
            smooth = ndimage.gaussian_filter(noise, sigma=3.0, mode="reflect")
            component = np.einsum("xa,yb,zc,abc->xyz", *weights, smooth, optimize=True)
            peak = float(np.abs(component).max())
            field[axis] = component * (params.amplitude_mm / peak if peak > 0 else 0.0)
        return field

    def apply(self, labels: Volume, params: ElasticParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Deform ``labels`` (and ``ct`` on the same grid) by the field of ``params``.

        Returns:
            (labels, ct): same grid as the input; ``ct`` is ``None`` when none was given.
        """
        _check_inputs(labels, ct)
        field = self.displacement(labels, params)
        spacing = np.array(labels.spacing, dtype=np.float32)
        coords = _grid_points(labels.shape) + field / spacing[:, None, None, None]
        out = _warp_labels(labels.array, labels.spacing, coords)
        magnitude = float(np.sqrt((field**2).sum(0)).max())
        meta = _step_meta(labels, "ElasticDeformation", params, {"max_displacement_mm": round(magnitude, 2)})
        new_ct = ct.with_array(_warp_ct(ct, coords)) if ct is not None else None
        return labels.with_array(out, meta=meta), new_ct


def rotation_matrix(rotation_deg: Sequence[float]) -> np.ndarray:
    """(3, 3) proper rotation (determinant +1) from extrinsic x-y-z angles in degrees."""
    return Rotation.from_euler("xyz", np.asarray(rotation_deg, dtype=np.float64), degrees=True).as_matrix()


class RigidJitter:
    """Small random rotation and translation of the patient in the field of view.

    Mirroring is impossible by construction: the parameters hold only rotation angles (bounded by
    `MAX_JITTER_DEGREES`) and a shift, and a rotation has determinant +1, so the patient's right
    stays at larger world x.

    Args:
        max_rotation_deg: largest absolute angle about each world axis, degrees.
        max_translation_mm: largest absolute shift along each world axis, mm.
    """

    params_type = JitterParams

    def __init__(self, max_rotation_deg: float = 5.0, max_translation_mm: float = 10.0):
        if not (np.isfinite(max_rotation_deg) and 0.0 <= max_rotation_deg <= MAX_JITTER_DEGREES):
            raise ValueError(f"max_rotation_deg must be between 0 and {MAX_JITTER_DEGREES}, got {max_rotation_deg}")
        if not (np.isfinite(max_translation_mm) and 0.0 <= max_translation_mm <= 200.0):
            raise ValueError(f"max_translation_mm must be between 0 and 200 mm, got {max_translation_mm}")
        self.max_rotation_deg = float(max_rotation_deg)
        self.max_translation_mm = float(max_translation_mm)

    def applicable(self, labels: Volume) -> bool:
        return True

    def make_params(self, rng: np.random.Generator, labels: Volume | None = None) -> JitterParams:
        rotation = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg, 3)
        translation = rng.uniform(-self.max_translation_mm, self.max_translation_mm, 3)
        centre = None if labels is None else tuple(round(float(c), 3) for c in _labelled_centroid_mm(labels))
        return JitterParams(
            rotation_deg=tuple(round(float(a), 4) for a in rotation),  # type: ignore[arg-type]
            translation_mm=tuple(round(float(t), 3) for t in translation),  # type: ignore[arg-type]
            centre_mm=centre,  # type: ignore[arg-type]
        )

    @staticmethod
    def source_coordinates(labels: Volume, params: JitterParams) -> np.ndarray:
        """(3, X, Y, Z) float32: the input voxel index each output voxel shows."""
        centre = np.array(params.centre_mm) if params.centre_mm is not None else _labelled_centroid_mm(labels)
        rot = rotation_matrix(params.rotation_deg)
        a3, a0 = labels.affine[:3, :3], labels.affine[:3, 3]
        inv = np.linalg.inv(a3)
        # Forward map q -> R (q - c) + c + t; the output samples its inverse at each voxel's world point.
        matrix = inv @ rot.T @ a3
        offset = inv @ (rot.T @ (a0 - centre - np.array(params.translation_mm)) + centre - a0)
        grid = _grid_points(labels.shape)
        return (np.tensordot(matrix.astype(np.float32), grid, axes=1) + offset.astype(np.float32)[:, None, None, None])

    def apply(self, labels: Volume, params: JitterParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Rotate and shift ``labels`` (and ``ct``) on their own grid.

        Returns:
            (labels, ct): same grid as the input.
        """
        _check_inputs(labels, ct)
        coords = self.source_coordinates(labels, params)
        out = _warp_labels(labels.array, labels.spacing, coords)
        meta = _step_meta(labels, "RigidJitter", params, {})
        new_ct = ct.with_array(_warp_ct(ct, coords)) if ct is not None else None
        return labels.with_array(out, meta=meta), new_ct


class OrganScaling:
    """Grow or shrink one organ about its centroid, keeping the rest of the anatomy valid.

    The organ's signed distance map is sampled at ``c + (p - c) / s`` (linear factor
    ``s = volume_factor ** (1/3)``, c the centroid). Growth takes over only `SOFT_CLASSES`
    (never other organs, vessels, bone, tumour or unknown), so the achieved volume can fall short
    of the request; with ``match_volume`` the linear factor is adjusted (at most ±25 %) to make up
    for it, and the achieved ratio is recorded either way. Voxels the organ vacates become the
    nearest soft class (body, small bowel, colon; background only where the map has no body), or,
    where there is none, the nearest other known class. The CT (optional) is stretched the same
    way inside the organ, and vacated voxels copy the CT of the voxel whose class they took.

    Args:
        organs: organs to draw from (those present in the map).
        volume_factor: (min, max) range of the volume ratio drawn.
    """

    params_type = ScalingParams

    def __init__(self, organs: Sequence[str] = SCALABLE_ORGANS, volume_factor: Sequence[float] = (0.8, 1.6)):
        bad = [o for o in organs if o not in ID or o in ("background", "body")]
        if bad or not organs:
            raise ValueError(f"organs must be organ class names, got {list(organs)!r}")
        self.organs = tuple(organs)
        self.volume_factor = _check_range(volume_factor, "volume_factor", 0.1, 10.0)

    def _present(self, labels: Volume) -> list[str]:
        counts = np.bincount(labels.array.ravel(), minlength=256)
        return [o for o in self.organs if counts[ID[o]] > 0]

    def applicable(self, labels: Volume) -> bool:
        return bool(self._present(labels))

    def make_params(
        self, rng: np.random.Generator, labels: Volume | None = None, organ: str | None = None
    ) -> ScalingParams:
        """Draw an organ (among those present in ``labels`` unless given) and a volume factor.

        Raises:
            ValueError: no organ given and none of ``organs`` present in ``labels``.
        """
        if organ is None:
            choices = self._present(labels) if labels is not None else list(self.organs)
            if not choices:
                raise ValueError(f"labels contain none of the organs {', '.join(self.organs)}")
            organ = choices[int(rng.integers(len(choices)))]
        return ScalingParams(organ=organ, volume_factor=round(float(rng.uniform(*self.volume_factor)), 4))

    def apply(self, labels: Volume, params: ScalingParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Scale ``params.organ``; see the class docstring.

        Raises:
            ValueError: the organ is absent from ``labels``.
        """
        _check_inputs(labels, ct)
        array = labels.array
        organ_id = ID[params.organ]
        organ = array == organ_id
        n0 = int(organ.sum())
        if n0 == 0:
            raise ValueError(f"params.organ {params.organ!r} is not present in labels")
        shape = np.array(array.shape)
        spacing = labels.spacing
        centre = np.argwhere(organ).mean(axis=0)
        nominal = float(params.volume_factor) ** (1.0 / 3.0)
        limits = (nominal / 1.25, nominal * 1.25) if params.match_volume else (nominal, nominal)
        # The organ's signed distance in its bounding box (+2 voxels); farther is "outside".
        box = ndimage.find_objects(organ.astype(np.uint8))[0]
        lo = np.array([max(s.start - 2, 0) for s in box])
        hi = np.array([min(s.stop + 2, n) for s, n in zip(box, shape)])
        sdf = signed_distance(organ[tuple(slice(a, b) for a, b in zip(lo, hi))], spacing)
        # Quadratic splines as in `_warp_labels` (linear ones shrink convex shapes); beyond the box
        # the edge value (2 voxels outside the organ, positive) continues: outside.
        coefficients = ndimage.spline_filter(sdf, order=2, output=np.float32, mode="nearest")
        # Output region: the box scaled by the largest factor tried, about the centroid.
        reach = max(limits[1], 1.0)
        rlo = np.maximum(np.floor(centre + (lo - centre) * reach) - 2, 0).astype(int)
        rhi = np.minimum(np.ceil(centre + (hi - centre) * reach) + 3, shape).astype(int)
        region = tuple(slice(a, b) for a, b in zip(rlo, rhi))
        sub = array[region]
        allowed = organ[region] | np.isin(sub, soft_ids(array))
        grid = _grid_points(sub.shape) + rlo.astype(np.float32)[:, None, None, None]

        def grown(scale: float) -> tuple[np.ndarray, np.ndarray]:
            c = centre.astype(np.float32)[:, None, None, None]
            src = c + (grid - c) / scale
            points = (src - lo.astype(np.float32)[:, None, None, None]).reshape(3, -1)
            values = ndimage.map_coordinates(coefficients, points, order=2, mode="nearest",
                                             prefilter=False).reshape(sub.shape)
            return (values < 0) & allowed, src

        def measure(scale: float) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
            mask, src = grown(scale)
            return float(mask.sum()), (mask, src)

        scale, _, (mask, src) = _fit_scale(measure, nominal, n0 * float(params.volume_factor), 0.02, limits,
                                           power=1.0 / 3.0, iterations=8 if params.match_volume else 1)

        out = array.copy()
        out_sub = out[region]
        vacated = organ[region] & ~mask
        out_sub[mask] = organ_id
        new_ct = ct.array.astype(np.float32, copy=True) if ct is not None else None
        if new_ct is not None:
            stretched = ndimage.map_coordinates(ct.array.astype(np.float32), src.reshape(3, -1), order=1,
                                                mode="nearest").reshape(sub.shape)
            ct_sub = new_ct[region]
            ct_sub[mask] = stretched[mask]
        if vacated.any():
            fill_from = np.isin(out, soft_ids(array)) & (out != organ_id)
            if not fill_from.any():  # nothing soft anywhere: the nearest other known class
                fill_from = (out != organ_id) & (out != UNKNOWN)
            if fill_from.any():
                nearest = ndimage.distance_transform_edt(~fill_from, sampling=spacing, return_distances=False,
                                                         return_indices=True)
                index = tuple(nearest[i][region][vacated] for i in range(3))
                out_sub[vacated] = out[index]
                if new_ct is not None:
                    new_ct[region][vacated] = ct.array[index]
            else:
                out_sub[vacated] = 0
        n1 = int((out == organ_id).sum())
        result = {
            "organ": params.organ,
            "linear_scale": round(scale, 4),
            "volume_before_ml": round(n0 * labels.voxel_volume_ml, 3),
            "volume_after_ml": round(n1 * labels.voxel_volume_ml, 3),
            "achieved_volume_factor": round(n1 / n0, 4),
        }
        meta = _step_meta(labels, "OrganScaling", params, result)
        ct_out = ct.with_array(new_ct) if ct is not None else None
        return labels.with_array(out, meta=meta), ct_out


# --------------------------------------------------------------------------------------------------
# Tumour shapes


@dataclass(frozen=True, eq=False)
class TumourShape:
    """One real tumour's shape: a connected component of a tumour mask.

    Attributes:
        mask: (X, Y, Z) bool, cropped to the component plus one empty voxel on each side.
        spacing: voxel size of ``mask``, mm (as stored; for LiTS 117 the true spacing is unknown).
        source: where it came from, e.g. ``"lits-117-crop/labels.nii.gz#2:0"`` (file#id:component).
        sdf: signed distance of ``mask``, mm, negative inside (used for shape-based resampling).
        centroid_mm: centroid in the mask's own frame (index × spacing), mm.
        diameter_mm: longest diameter at ``spacing``, mm (`longest_diameter_mm`'s convention).
        radius_mm: largest distance from the centroid to a voxel centre, plus half a voxel, mm.
    """

    mask: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    sdf: np.ndarray = field(repr=False)
    centroid_mm: tuple[float, float, float]
    diameter_mm: float
    radius_mm: float

    @classmethod
    def from_mask(cls, mask: np.ndarray, spacing: Sequence[float], source: str) -> TumourShape:
        """Crop ``mask`` (bool (X, Y, Z)) to its voxels and derive the rest."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3 or not mask.any():
            raise ValueError(f"mask must be a non-empty 3-D array, got shape {mask.shape}, {int(mask.sum())} voxels")
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        crop = np.pad(mask[box], 1)
        spacing_t = tuple(float(s) for s in spacing)
        points = np.argwhere(crop)
        centroid = points.mean(axis=0) * np.array(spacing_t)
        radius = float(np.sqrt((((points * np.array(spacing_t)) - centroid) ** 2).sum(1)).max()) + 0.5 * max(spacing_t)
        diameter = longest_diameter_mm(_surface_points(crop), np.diag([*spacing_t, 1.0]))
        return cls(crop, spacing_t, source, signed_distance(crop, spacing_t),  # type: ignore[arg-type]
                   tuple(float(c) for c in centroid), diameter, radius)  # type: ignore[arg-type]


def load_tumour_shapes(
    paths_and_ids: Iterable[tuple[str | Path, int]],
    min_voxels: int = 200,
    max_axis_voxels: int = 48,
    root: str | Path | None = None,
) -> list[TumourShape]:
    """Extract tumour shapes from real masks: every 26-connected component of a tumour id.

    Args:
        paths_and_ids: (NIfTI file, tumour id) pairs.
        min_voxels: smaller components (at the file's resolution) are skipped: specks and partial
            volumes carry no shape.
        max_axis_voxels: components larger than this along an axis are resampled (shape-based) so
            that none is; a tumour is drawn at most ~12 voxels across at 6 mm, so detail beyond
            this only costs time.
        root: shown relative to this folder in ``source`` (default: the file's full path).

    Returns:
        Shapes in file order, largest component first within a file.

    Raises:
        InputError: a file is missing or unreadable.
        ValueError: bad ``min_voxels`` / ``max_axis_voxels``.
    """
    from guidegen.io.nifti import read_nifti

    if min_voxels < 1:
        raise ValueError(f"min_voxels must be >= 1, got {min_voxels}")
    if max_axis_voxels < 8:
        raise ValueError(f"max_axis_voxels must be >= 8, got {max_axis_voxels}")
    shapes: list[TumourShape] = []
    for path, tumour_id in paths_and_ids:
        volume = read_nifti(path, kind="labels")
        name = str(path)
        if root is not None and Path(path).is_relative_to(root):
            name = str(Path(path).relative_to(root))
        mask = volume.array == int(tumour_id)
        box = ndimage.find_objects(mask.astype(np.uint8))
        if not box or box[0] is None:
            continue
        crop = mask[box[0]]  # label components in the tumour's bounding box only (the file can be big)
        components, n = ndimage.label(crop, structure=_CONN26)
        sizes = np.bincount(components.ravel())[1:]
        for rank, index in enumerate(np.argsort(-sizes, kind="stable")):
            if sizes[index] < min_voxels:
                break
            component = components == index + 1
            spacing = np.array(volume.spacing)
            sub = ndimage.find_objects(component.astype(np.uint8))[0]
            component = component[sub]
            extent = np.array(component.shape)
            if extent.max() > max_axis_voxels:
                # Coarser isotropic-in-mm grid whose longest side has max_axis_voxels voxels.
                new_spacing = float((extent * spacing).max()) / (max_axis_voxels - 2)
                new_shape = tuple(int(np.ceil(e * s / new_spacing)) + 2 for e, s in zip(extent, spacing))
                src = Volume(np.pad(component, 1).astype(np.uint8), np.diag([*spacing, 1.0]), "labels")
                origin = -0.5 * spacing + 0.5 * new_spacing  # both grids start at the padded crop's outer corner
                target = np.diag([new_spacing] * 3 + [1.0])
                target[:3, 3] = origin
                component = resample_labels(src, target, new_shape, mark_outside_unknown=False).array == 1
                spacing = np.full(3, new_spacing)
                if not component.any():
                    continue
            shapes.append(TumourShape.from_mask(component, spacing, f"{name}#{tumour_id}:{rank}"))
    return shapes


def default_data_dir() -> Path:
    """The repository's ``data/real`` folder (where the bundled real masks live)."""
    import guidegen

    return Path(guidegen.__file__).resolve().parents[2] / "data" / "real"


@functools.lru_cache(maxsize=4)
def _default_bank(data_dir: str) -> tuple[TumourShape, ...]:
    root = Path(data_dir)
    return tuple(load_tumour_shapes([(root / rel, i) for rel, i in DEFAULT_TUMOUR_SOURCES], root=root))


def default_tumour_shapes(data_dir: str | Path | None = None) -> list[TumourShape]:
    """The default shape bank: the LiTS 117 liver lesions and the MSD colon 50 primary.

    Loaded once per folder and cached (reading the colon mask takes about a second).

    Args:
        data_dir: folder holding ``lits-117-crop/`` and ``masks-only/``; default `default_data_dir`.

    Raises:
        InputError: the folder or a file is missing.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise InputError(root, "tumour shape folder not found; pass data_dir= the folder holding data/real")
    return list(_default_bank(str(root.resolve())))


# --------------------------------------------------------------------------------------------------
# Tumour insertion


class TumourInsertion:
    """Insert real tumour shapes, resized to a target longest diameter, into a host organ.

    A shape's signed distance map is rotated, scaled and centred at a host voxel and sampled
    linearly on the label grid (shape-based resampling); the scale is refined (proportional steps,
    then bisection; `_fit_scale`) until the longest diameter on the grid, in world mm, is as close
    to the target as the voxels allow. The tumour overwrites the host, soft tissue
    (`SOFT_CLASSES`) and earlier tumour, never other organs, vessels, bone or unknown; of what may
    be written, the connected part holding the centre is kept, so each insertion is one lesion.

    Sites are drawn among host voxels (optionally of one colon segment), preferring, in turn,
    voxels deep enough that the whole tumour fits inside the host, voxels at least half as deep
    and far enough from every protected class (the volume's edge counts as protected), and else
    the deepest quarter; later tumours of one case avoid earlier ones where possible. ``make_params``
    rasterises each draw and redraws shape, orientation and site (up to 8 times) until the tumour
    comes within 10 % of the target diameter, so the parameters it returns are known to work.
    The CT, if given, is returned unchanged (the mask sampler needs labels only).

    Args:
        shapes: the shape bank; ``None``: `default_tumour_shapes` (loaded on first use).
        hosts: host organs to draw from (those present in the map).
        diameter_mm: (min, max) target diameter range for every host, mm; ``None``:
            `DIAMETER_RANGES_MM` per host.
        counts: host → (min, max) number of tumours; default `COUNT_RANGES` (others: one).
        site_of: ``site_of(labels, points)`` names the colon segment of each world point
            (``points`` (N, 3) RAS+ mm) — needed to request or draw a segment.
        segments: segments to draw from for colon tumours when ``site_of`` is given (those present).
        data_dir: folder for the default bank.
    """

    params_type = TumourParams

    def __init__(
        self,
        shapes: Sequence[TumourShape] | None = None,
        hosts: Sequence[str] = TUMOUR_HOSTS,
        diameter_mm: Sequence[float] | None = None,
        counts: dict[str, tuple[int, int]] | None = None,
        site_of: SiteOf | None = None,
        segments: Sequence[str] = COLON_SEGMENTS,
        data_dir: str | Path | None = None,
    ):
        bad = [h for h in hosts if h not in TUMOUR_HOSTS]
        if bad or not hosts:
            raise ValueError(f"hosts must be among {', '.join(TUMOUR_HOSTS)}, got {list(hosts)!r}")
        if shapes is not None and not shapes:
            raise ValueError("shapes must hold at least one TumourShape")
        self._shapes = list(shapes) if shapes is not None else None
        self.data_dir = data_dir
        self.hosts = tuple(hosts)
        self.diameter_mm = _check_range(diameter_mm, "diameter_mm", 1.0, 300.0) if diameter_mm is not None else None
        self.counts = dict(COUNT_RANGES if counts is None else counts)
        for host, (a, b) in self.counts.items():
            if host not in TUMOUR_HOSTS or not 1 <= a <= b <= 20:
                raise ValueError(f"counts must map host names to 1 <= min <= max <= 20, got {host!r}: {(a, b)}")
        bad_segments = [s for s in segments if s not in COLON_SEGMENTS]
        if bad_segments:
            raise ValueError(f"segments must be among {', '.join(COLON_SEGMENTS)}, got {bad_segments}")
        self.segments = tuple(segments)
        self.site_of = site_of

    @property
    def shapes(self) -> list[TumourShape]:
        if self._shapes is None:
            self._shapes = default_tumour_shapes(self.data_dir)
            if not self._shapes:
                raise ValueError("the default tumour shape bank is empty")
        return self._shapes

    def _present(self, labels: Volume) -> list[str]:
        counts = np.bincount(labels.array.ravel(), minlength=256)
        return [h for h in self.hosts if counts[ID[h]] > 0]

    def applicable(self, labels: Volume) -> bool:
        return bool(self._present(labels))

    def make_params(
        self,
        rng: np.random.Generator,
        labels: Volume | None = None,
        host: str | None = None,
        segment: str | None = None,
        diameter_mm: float | None = None,
        count: int | None = None,
    ) -> TumourParams:
        """Draw host, sites, diameters, shapes and orientations.

        Args:
            rng: random generator.
            labels: the map the tumours go into (required: sites are host voxels).
            host: host organ; default: drawn among ``hosts`` present.
            segment: colon segment to place the tumours in (needs ``site_of``); default: for the
                colon, drawn among ``segments`` present when ``site_of`` is set, else anywhere.
            diameter_mm: target diameter for every tumour; default: drawn per tumour.
            count: number of tumours; default: drawn from ``counts``.

        Raises:
            ValueError: ``labels`` missing, host absent, segment requested without ``site_of``,
                no host voxel in the requested segment, bad ``count``.
        """
        if labels is None:
            raise ValueError("labels is required: tumour sites are drawn among host voxels")
        _check_inputs(labels, None)
        if host is None:
            present = self._present(labels)
            if not present:
                raise ValueError(f"labels contain none of the hosts {', '.join(self.hosts)}")
            host = present[int(rng.integers(len(present)))]
        elif host not in TUMOUR_HOSTS:
            raise ValueError(f"host must be one of {', '.join(TUMOUR_HOSTS)}, got {host!r}")
        array = labels.array
        host_mask = array == ID[host]
        if not host_mask.any():
            raise ValueError(f"host {host!r} is not present in labels")
        candidates = np.argwhere(host_mask)
        if segment is not None or (host == "colon" and self.site_of is not None):
            if self.site_of is None:
                raise ValueError(f"segment {segment!r} requested but no site_of was given")
            names = np.asarray(self.site_of(labels, labels.world_coordinates(candidates)), dtype=object)
            if len(names) != len(candidates):
                raise ValueError(f"site_of returned {len(names)} names for {len(candidates)} points")
            if segment is None:
                options = [s for s in self.segments if np.any(names == s)]
                segment = options[int(rng.integers(len(options)))] if options else None
            if segment is not None:
                candidates = candidates[names == segment]
                if len(candidates) == 0:
                    raise ValueError(f"segment {segment!r}: no {host} voxel lies in that segment")
        if count is None:
            a, b = self.counts.get(host, (1, 1))
            count = int(rng.integers(a, b + 1))
        if not 1 <= count <= 20:
            raise ValueError(f"count must be between 1 and 20, got {count}")
        low, high = self.diameter_mm or DIAMETER_RANGES_MM[host]

        spacing = labels.spacing
        # Distances inside the host and to anything protected, mm. The padding counts the volume's
        # edge as protected: beyond it the anatomy is unknown, and a tumour cut by the edge would
        # not have the diameter asked for.
        allowed = host_mask | np.isin(array, soft_ids(array)) | (array == ID["tumour"])
        depth = ndimage.distance_transform_edt(np.pad(host_mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        clearance = ndimage.distance_transform_edt(np.pad(allowed, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        cand_depth = depth[tuple(candidates.T)]
        cand_clear = clearance[tuple(candidates.T)]
        cand_world = labels.world_coordinates(candidates)
        shapes = self.shapes
        soft = soft_ids(array)
        work = array.copy()  # the map as apply will see it, tumour after tumour
        specs: list[TumourSpec] = []
        placed: list[tuple[np.ndarray, float]] = []
        for _ in range(count):
            target = float(diameter_mm) if diameter_mm is not None else float(rng.uniform(low, high))
            # A shape with thin parts can jump past the target diameter on a coarse grid (a bridge
            # appears or vanishes as it grows), and clipping by protected neighbours can stop it
            # short: draw shape, orientation and site again (up to 8 times) until the rasterised
            # tumour comes within 10 % of the target, else keep the closest draw.
            best: tuple[float, TumourSpec, tuple[slice, ...], np.ndarray, np.ndarray, float] | None = None
            for _attempt in range(8):
                index = int(rng.integers(len(shapes)))
                # Uniform over all orientations; positional rng because scipy renamed the keyword.
                rotation = Rotation.random(None, rng).as_euler("xyz", degrees=True)
                # Room the tumour needs around its centre: its reach from the centroid, plus a voxel.
                need = shapes[index].radius_mm * target / shapes[index].diameter_mm + max(spacing)
                apart = np.ones(len(candidates), dtype=bool)
                for centre, reach in placed:
                    apart &= np.linalg.norm(cand_world - centre, axis=1) >= reach + need - max(spacing)
                pool = None
                for ok in (cand_depth >= need, (cand_depth >= need / 2) & (cand_clear >= need)):
                    if np.any(ok & apart):
                        pool = np.flatnonzero(ok & apart)
                        break
                if pool is None:
                    base = np.flatnonzero(apart) if apart.any() else np.arange(len(candidates))
                    pool = base[cand_depth[base] >= np.quantile(cand_depth[base], 0.75)]
                centre = cand_world[int(pool[int(rng.integers(len(pool)))])]
                spec = TumourSpec(
                    shape_index=index,
                    shape_source=shapes[index].source,
                    centre_mm=tuple(round(float(c), 4) for c in centre),  # type: ignore[arg-type]
                    diameter_mm=round(target, 3),
                    rotation_deg=tuple(round(float(a), 4) for a in rotation),  # type: ignore[arg-type]
                )
                box, mask, diameter, _ = self._place(work, labels.affine, spec, ID[host], soft)
                err = abs(diameter - spec.diameter_mm) / spec.diameter_mm
                if best is None or err < best[0]:
                    best = (err, spec, box, mask, centre, need)
                if err <= 0.1:
                    break
            _, spec, box, mask, centre, need = best  # type: ignore[misc]
            work[box][mask] = ID["tumour"]
            placed.append((centre, need))
            specs.append(spec)
        return TumourParams(host=host, segment=segment, tumours=tuple(specs))

    def _place(self, out: np.ndarray, affine: np.ndarray, spec: TumourSpec, host_id: int,
               soft: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, float, float]:
        """Where ``spec``'s tumour goes in the label array ``out`` (not modified).

        Returns:
            (box, mask, diameter_mm, scale): the voxels (a bool mask over ``out[box]``), their
            longest diameter and the shape's scale factor.

        Raises:
            ValueError: ``spec`` names a shape this bank does not hold (index or source differ).
        """
        shapes = self.shapes
        if spec.shape_index >= len(shapes) or shapes[spec.shape_index].source != spec.shape_source:
            raise ValueError(f"params: shape {spec.shape_index} ({spec.shape_source}) is not in this shape bank")
        shape = shapes[spec.shape_index]
        rot = rotation_matrix(spec.rotation_deg)
        centre = np.array(spec.centre_mm)
        centre_idx = np.rint(np.linalg.inv(affine)[:3] @ np.append(centre, 1.0)).astype(int)
        tumour_id = ID["tumour"]

        def measure(scale: float) -> tuple[float, tuple[tuple[slice, ...], np.ndarray]]:
            box, inside = self._rasterise(shape, rot, scale, centre, affine, out.shape)
            sub = out[box]
            mask = inside & ((sub == host_id) | np.isin(sub, soft) | (sub == tumour_id))
            mask = self._keep_centre_component(mask, centre_idx - np.array([s.start for s in box]))
            diameter = longest_diameter_mm(_surface_points(mask), affine) if mask.any() else 0.0
            return diameter, (box, mask)

        scale, diameter, (box, mask) = _fit_scale(measure, spec.diameter_mm / shape.diameter_mm, spec.diameter_mm, 0.02)
        return box, mask, diameter, scale

    def _rasterise(self, shape: TumourShape, rot: np.ndarray, scale: float, centre_mm: np.ndarray,
                   affine: np.ndarray, grid_shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray]:
        """The shape, rotated, scaled by ``scale`` and centred at ``centre_mm``, on the label grid.

        Returns:
            (box, inside): the grid box around the tumour and a bool mask over it.
        """
        a3, a0 = affine[:3, :3], affine[:3, 3]
        inv = np.linalg.inv(a3)
        reach = shape.radius_mm * scale + 2 * float(np.linalg.norm(a3, axis=0).max())
        centre_idx = inv @ (centre_mm - a0)
        half = np.abs(inv) @ np.full(3, reach)  # the ball's bounding box in voxels
        lo = np.maximum(np.floor(centre_idx - half), 0).astype(int)
        hi = np.minimum(np.ceil(centre_idx + half) + 1, grid_shape).astype(int)
        if np.any(hi <= lo):
            return tuple(slice(0, 0) for _ in range(3)), np.zeros((0, 0, 0), dtype=bool)
        # Grid voxel p -> world w -> shape frame q = R^T (w - c) / scale + centroid -> shape index q / spacing.
        to_shape = np.diag(1.0 / np.array(shape.spacing)) @ rot.T / scale
        matrix = to_shape @ a3
        offset = to_shape @ (a0 + a3 @ lo - centre_mm) + np.array(shape.centroid_mm) / np.array(shape.spacing)
        values = ndimage.affine_transform(shape.sdf, matrix, offset, output_shape=tuple(hi - lo), order=1,
                                          mode="constant", cval=float(_FAR))
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), values < 0

    def apply(self, labels: Volume, params: TumourParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Insert the tumours of ``params`` as class ``tumour``.

        Returns:
            (labels, ct): ``ct`` unchanged. ``labels.meta["annotated"]``, when present, gains
            ``"tumour"`` (the inserted tumours are known; the class must be measured).

        Raises:
            ValueError: a spec names a shape the bank does not hold (index or source differ).
        """
        _check_inputs(labels, ct)
        host_id = ID[params.host]
        tumour_id = ID["tumour"]
        out = labels.array.copy()
        soft = soft_ids(labels.array)
        results = []
        for spec in params.tumours:
            box, mask, diameter, scale = self._place(out, labels.affine, spec, host_id, soft)
            sub = out[box]
            was_host = float((sub[mask] == host_id).mean()) if mask.any() else 0.0
            sub[mask] = tumour_id
            results.append({
                "diameter_mm": round(diameter, 2),
                "target_diameter_mm": spec.diameter_mm,
                "volume_ml": round(int(mask.sum()) * labels.voxel_volume_ml, 3),
                "host_fraction": round(was_host, 4),
                "scale": round(scale, 5),
            })
        meta = _step_meta(labels, "TumourInsertion", params, {"host": params.host, "segment": params.segment,
                                                               "tumours": results})
        if "annotated" in meta and "tumour" not in meta["annotated"]:
            meta["annotated"] = [*meta["annotated"], "tumour"]
        return labels.with_array(out, meta=meta), ct

    @staticmethod
    def _keep_centre_component(mask: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """The 26-connected component holding ``centre`` (else the largest)."""
        if not mask.any():
            return mask
        components, n = ndimage.label(mask, structure=_CONN26)
        if n == 1:
            return mask
        if np.all(centre >= 0) and np.all(centre < mask.shape) and components[tuple(centre)] > 0:
            keep = components[tuple(centre)]
        else:
            keep = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
        return components == keep


# --------------------------------------------------------------------------------------------------
# Chains


_TRANSFORMS: dict[str, type] = {
    "ElasticDeformation": ElasticDeformation,
    "RigidJitter": RigidJitter,
    "OrganScaling": OrganScaling,
    "TumourInsertion": TumourInsertion,
}


@dataclass(frozen=True)
class AugmentConfig:
    """Which transforms `augment_case` applies, with what probability, in this order.

    Global geometry comes first and anatomy changes last, so that the volumes and diameters the
    record reports are those of the final map (a later deformation would change them slightly).

    Attributes:
        elastic, p_elastic: `ElasticDeformation` settings and probability (``None``: never).
        jitter, p_jitter: `RigidJitter` …
        scaling, p_scaling, max_scalings: `OrganScaling`; each of up to ``max_scalings`` draws
            (distinct organs) happens with probability ``p_scaling``.
        tumour, p_tumour: `TumourInsertion` (default bank loaded on first use).
    """

    elastic: ElasticDeformation | None = field(default_factory=ElasticDeformation)
    p_elastic: float = 0.8
    jitter: RigidJitter | None = field(default_factory=RigidJitter)
    p_jitter: float = 0.8
    scaling: OrganScaling | None = field(default_factory=OrganScaling)
    p_scaling: float = 0.5
    max_scalings: int = 2
    tumour: TumourInsertion | None = field(default_factory=TumourInsertion)
    p_tumour: float = 0.4

    def __post_init__(self) -> None:
        for name in ("p_elastic", "p_jitter", "p_scaling", "p_tumour"):
            p = getattr(self, name)
            if not (0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if not 0 <= self.max_scalings <= 10:
            raise ValueError(f"max_scalings must be between 0 and 10, got {self.max_scalings}")

    def transform(self, name: str) -> Any:
        """The configured instance for a transform name (a default one where not configured)."""
        attribute = {"ElasticDeformation": "elastic", "RigidJitter": "jitter", "OrganScaling": "scaling",
                     "TumourInsertion": "tumour"}.get(name)
        if attribute is None:
            raise ValueError(f"name must be one of {', '.join(_TRANSFORMS)}, got {name!r}")
        return getattr(self, attribute) or _TRANSFORMS[name]()


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()[:16]


def augment_pair(
    labels: Volume, ct: Volume | None, rng: np.random.Generator | int, config: AugmentConfig | None = None
) -> tuple[Volume, Volume | None, dict[str, Any]]:
    """`augment_case` with a CT on the same grid, transformed consistently where that makes sense.

    Returns:
        (labels, ct, record); see `augment_case`.
    """
    config = config or AugmentConfig()
    rng = np.random.default_rng(rng)
    _check_inputs(labels, ct)
    record: dict[str, Any] = {"version": RECORD_VERSION, "input_sha256": _digest(labels.array),
                              "shape": list(labels.shape), "spacing_mm": [round(s, 4) for s in labels.spacing]}
    start = len(labels.meta.get("augmentations", []))
    current, current_ct = labels, ct
    chain: list[tuple[Any, float]] = [(config.elastic, config.p_elastic), (config.jitter, config.p_jitter)]
    chain += [(config.scaling, config.p_scaling)] * config.max_scalings
    chain += [(config.tumour, config.p_tumour)]
    scaled: set[str] = set()
    for transform, p in chain:
        if transform is None or rng.random() >= p or not transform.applicable(current):
            continue
        if isinstance(transform, OrganScaling):
            left = [o for o in transform._present(current) if o not in scaled]
            if not left:
                continue
            params = transform.make_params(rng, current, organ=left[int(rng.integers(len(left)))])
            scaled.add(params.organ)
        else:
            params = transform.make_params(rng, current)
        current, current_ct = transform.apply(current, params, current_ct)
    record["steps"] = current.meta.get("augmentations", [])[start:]
    record["volumes_ml"] = _class_volumes_ml(current)
    return current, current_ct, _jsonable(record)


def augment_case(
    labels: Volume, rng: np.random.Generator | int, config: AugmentConfig | None = None
) -> tuple[Volume, dict[str, Any]]:
    """Apply a random chain of augmentations to a label map.

    Args:
        labels: GuideGen label map, (X, Y, Z) uint8, any spacing.
        rng: random generator (or an integer seed).
        config: transforms and probabilities; default `AugmentConfig()`.

    Returns:
        (labels, record): the augmented map (same grid) and a JSON-serialisable record::

            {"version": 1, "input_sha256": ..., "shape": [...], "spacing_mm": [...],
             "steps": [{"transform": "OrganScaling", "params": {...}, "result": {...}}, ...],
             "volumes_ml": {"liver": ..., ...}}

        ``result`` holds what was achieved (e.g. ``achieved_volume_factor``, tumour
        ``diameter_mm``); `replay` re-applies ``steps``.
    """
    out, _, record = augment_pair(labels, None, rng, config)
    return out, record


def replay(
    labels: Volume, record: dict[str, Any], ct: Volume | None = None, config: AugmentConfig | None = None,
    check_input: bool = True,
) -> tuple[Volume, Volume | None]:
    """Re-apply the steps of an `augment_case` record (no randomness involved).

    Args:
        labels: the same input map the record was made from.
        record: the record (or its JSON round trip).
        ct: optional CT on the labels' grid.
        config: supplies the tumour shape bank (and site_of); default `AugmentConfig()`.
        check_input: refuse a ``labels`` whose content differs from the recorded input.

    Raises:
        ValueError: record of another version, other input, or unknown transforms.
    """
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"record has version {record.get('version')!r}; this code replays {RECORD_VERSION}")
    if check_input and record.get("input_sha256") not in (None, _digest(labels.array)):
        raise ValueError("labels differ from the map the record was made from (input_sha256)")
    config = config or AugmentConfig()
    for step in record.get("steps", []):
        name = step.get("transform")
        if name not in _TRANSFORMS:
            raise ValueError(f"record step names an unknown transform {name!r}")
        params = params_from_json(name, step["params"])
        labels, ct = config.transform(name).apply(labels, params, ct)
    return labels, ct
