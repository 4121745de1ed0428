"""Texture statistics of a CT inside labelled tissue: mean, grain and adjacent-slice change.

These are the measurements the native-resolution texture model (`guidegen.images.texture`) is
fitted to and checked against. All work on the array as it is (any axis order, any voxel size):
the *slice axis* is the array axis closest to the patient's cranio-caudal direction, the other two
are in-plane, and every length is in millimetres, so scans of different voxel sizes are comparable.

Definitions (per tissue class; the first two follow the usual noise-measurement practice of a
detrended region of interest inside homogeneous tissue, e.g. AAPM TG-233, Samei et al. 2019):

* **interior**: voxels of the class at least ``depth_mm`` (default 3 mm) from the class border
  within their own slice, so that partial volume with the neighbours does not count as texture.
* **grain** (HU): the standard deviation over the interior of the in-plane *detrended* CT, that is
  HU minus a Gaussian average of the class's own voxels in the same slice (a normalised
  convolution: neighbours outside the class are not averaged in). ``trend_mm`` sets which scales
  count: the default 1 mm keeps only fine grain, the scales a 3 mm model grid cannot carry (a
  Gaussian of σ 1 mm halves the power at 0.19 cycles/mm, close to the 0.17 cycles/mm Nyquist
  frequency of a 3 mm grid); 4 mm also keeps the blotches of a few millimetres ("coarse grain").
* **adjacent-slice change** (HU): the mean of |HU(k+1) − HU(k)| over voxels in the interior of
  both slices, raw HU (no detrending): what flicker or missing noise between slices shows.
* **slice correlation**: the correlation of the fine detrended CT between adjacent slices.
* **in-plane correlation**: of the fine detrended CT between neighbours 1 and 2 pixels apart
  along each in-plane axis (averaged over both axes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from guidegen.grids.geometry import superior_axis
from guidegen.io.volume import HU_MIN, Volume
from guidegen.labels.vocabulary import ID

__all__ = [
    "TissueTexture",
    "detrend",
    "inplane_distance",
    "interior",
    "lesion_residual",
    "lesion_texture",
    "measure_texture",
    "slice_axis",
    "to_slices_last",
]

#: Interior depth (mm) and the in-plane trends (mm) of the fine and coarse grain.
DEPTH_MM = 3.0
FINE_TREND_MM = 1.0
COARSE_TREND_MM = 4.0
#: Fewer interior voxels than this and a statistic is not reported (``None``).
MIN_VOXELS = 200
#: A lesion's grain (`lesion_texture`): its own in-plane trend (mm) and interior depth (mm). A lesion
#: of a centimetre has almost no voxel 3 mm inside its border, and a 3 mm trend keeps the
#: few-millimetre heterogeneity of a tumour, not only the scanner's noise.
LESION_TREND_MM = 3.0
LESION_DEPTH_MM = 2.0
#: A lesion with fewer interior voxels than this is measured on all its voxels.
LESION_MIN_INTERIOR = 20


def slice_axis(affine: np.ndarray) -> int:
    """The array axis whose direction is closest to world z (superior–inferior)."""
    return superior_axis(affine)[0]


def to_slices_last(
    array: np.ndarray, spacing: Iterable[float], axis: int
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A view of ``array`` with the slice axis last, and the spacing in that order."""
    sp = tuple(float(s) for s in spacing)
    order = [a for a in range(3) if a != axis] + [axis]
    return np.moveaxis(array, axis, -1), (sp[order[0]], sp[order[1]], sp[order[2]])  # type: ignore[return-value]


def inplane_distance(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of each voxel of ``mask`` (X, Y, Z; slices last) to the nearest voxel outside
    it in the same slice; 0 outside. In-plane, because slices may be far thicker than pixels."""
    out = np.zeros(mask.shape, dtype=np.float64)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        out[..., k] = ndimage.distance_transform_edt(mask[..., k], sampling=spacing[:2])
    return out


def interior(mask: np.ndarray, spacing: tuple[float, float, float], depth_mm: float = DEPTH_MM) -> np.ndarray:
    """Voxels of ``mask`` (X, Y, Z; slices last) more than ``depth_mm`` from its border in their slice."""
    return inplane_distance(mask, spacing) > depth_mm


def detrend(hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], trend_mm: float) -> np.ndarray:
    """HU minus the Gaussian (σ ``trend_mm``) in-plane average of the ``mask`` voxels of each slice.

    Args:
        hu: (X, Y, Z) HU, slices last.
        mask: (X, Y, Z) bool, the tissue whose voxels form the average.
        spacing: voxel size (mm) in the same order.
        trend_mm: σ of the Gaussian in mm.

    Returns:
        (X, Y, Z) float32 residual; zero outside ``mask``.
    """
    sigma = (trend_mm / spacing[0], trend_mm / spacing[1])
    out = np.zeros(hu.shape, dtype=np.float32)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        m = mask[..., k].astype(np.float32)
        values = hu[..., k].astype(np.float32) * m
        trend = ndimage.gaussian_filter(values, sigma, mode="nearest") / np.maximum(
            ndimage.gaussian_filter(m, sigma, mode="nearest"), 1e-6
        )
        out[..., k] = (hu[..., k] - trend) * m
    return out


def lesion_residual(
    hu: np.ndarray, mask: np.ndarray, spacing: Iterable[float], depth_mm: float = LESION_DEPTH_MM
) -> tuple[np.ndarray, np.ndarray]:
    """(interior, residual) of a lesion (arrays slices last): the residual is HU minus its
    `LESION_TREND_MM` in-plane average over the lesion's own voxels (linear in ``hu``); the
    interior is all of ``mask`` when fewer than `LESION_MIN_INTERIOR` voxels lie ``depth_mm`` inside."""
    sp = tuple(float(s) for s in spacing)
    where = interior(mask, sp, depth_mm)  # type: ignore[arg-type]
    if where.sum() < LESION_MIN_INTERIOR:
        where = mask
    return where, detrend(hu.astype(np.float32), mask, sp, LESION_TREND_MM)  # type: ignore[arg-type]


def lesion_texture(
    hu: np.ndarray, mask: np.ndarray, spacing: Iterable[float], depth_mm: float = LESION_DEPTH_MM
) -> tuple[float, float]:
    """A lesion's (interior mean HU, grain HU): grain is the standard deviation of `lesion_residual`
    over the interior."""
    where, residual = lesion_residual(hu, mask, spacing, depth_mm)
    return float(hu[where].mean()), float(residual[where].std())


@dataclass(frozen=True)
class TissueTexture:
    """Texture statistics of one tissue class (HU; ``None`` where too few voxels)."""

    voxels: int
    mean: float
    grain: float
    coarse_grain: float
    adjacent_change: float | None
    slice_correlation: float | None
    inplane_correlation: tuple[float, float]

    def to_dict(self) -> dict:
        return {
            k: (round(v, 3) if isinstance(v, float) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
        }


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def _lag_correlation(residual: np.ndarray, inside: np.ndarray, lag: int) -> float | None:
    pairs_a, pairs_b = [], []
    for axis in (0, 1):
        n = residual.shape[axis]
        if n <= lag:
            continue
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(lag, n), slice(0, n - lag)
        both = inside[tuple(head)] & inside[tuple(tail)]
        pairs_a.append(residual[tuple(head)][both])
        pairs_b.append(residual[tuple(tail)][both])
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
    return _correlation(a, b) if a.size >= MIN_VOXELS else None


def tissue_texture(
    hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], depth_mm: float = DEPTH_MM
) -> TissueTexture | None:
    """Statistics of one tissue (arrays slices last; see the module docstring); ``None`` if its
    interior has fewer than `MIN_VOXELS` voxels."""
    inside = interior(mask, spacing, depth_mm)
    n = int(inside.sum())
    if n < MIN_VOXELS:
        return None
    hu = np.maximum(hu.astype(np.float32), HU_MIN)  # scanner padding is air
    fine = detrend(hu, mask, spacing, FINE_TREND_MM)
    coarse = detrend(hu, mask, spacing, COARSE_TREND_MM)
    both = inside[..., 1:] & inside[..., :-1]
    adjacent = slice_corr = None
    if both.sum() >= MIN_VOXELS:
        adjacent = float(np.abs(np.diff(hu, axis=2))[both].mean())
        slice_corr = _correlation(fine[..., 1:][both], fine[..., :-1][both])
    lags = tuple(_lag_correlation(fine, inside, lag) for lag in (1, 2))
    return TissueTexture(
        voxels=n,
        mean=float(hu[inside].mean()),
        grain=float(fine[inside].std()),
        coarse_grain=float(coarse[inside].std()),
        adjacent_change=adjacent,
        slice_correlation=slice_corr,
        inplane_correlation=tuple(float("nan") if c is None else c for c in lags),
    )  # type: ignore[arg-type]


def measure_texture(
    ct: Volume, labels: Volume, classes: Iterable[str] | None = None, depth_mm: float = DEPTH_MM
) -> dict[str, TissueTexture]:
    """Texture statistics of each class of a label map in a CT on the same grid.

    Args:
        ct: CT `Volume` (HU).
        labels: label `Volume` in GuideGen ids, on the CT's grid.
        classes: class names to measure; default every class present (not background).
        depth_mm: interior depth.

    Returns:
        class name → `TissueTexture`, for classes with a large enough interior.
    """
    if not ct.same_grid(labels):
        raise ValueError(f"ct and labels must share a grid, got {ct.shape} and {labels.shape}")
    axis = slice_axis(ct.affine)
    hu, spacing = to_slices_last(np.asarray(ct.array), ct.spacing, axis)
    lab, _ = to_slices_last(np.asarray(labels.array), labels.spacing, axis)
    names = list(classes) if classes is not None else [n for n, i in ID.items() if i > 0 and np.any(lab == i)]
    out = {}
    for name in names:
        stats = tissue_texture(hu, lab == ID[name], spacing, depth_mm)
        if stats is not None:
            out[name] = stats
    return out
