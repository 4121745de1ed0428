"""Slice-to-slice level consistency for bring-your-own-mask CT: one organ, one level along z.

Why (measured for issue 28; ``docs/results/byom_native.txt``): the image generator draws a volume
slice by slice, and each slice draws an organ at a somewhat different mean level. On the held-out
AMOS 0001 map the generated spleen's interior mean runs −34, 6, 31, 38, 41, 34, 9 HU over its seven
5 mm slices (the real one: 36–46 HU), so its adjacent-slice change is dominated by these level
jumps (16 HU against the real 8.5 HU, which is scanner noise). Real parenchyma, fluid and blood
enhance uniformly along z within a scan: a level that changes from one slice to the next by more
than noise is the generator's, not the anatomy's.

What is done, per structure of `CONSISTENT_CLASSES` (solid organs, fluid, blood):

1. **per-slice level**: on slices where the structure's interior (voxels at least `DEPTH_MM` from
   its in-plane border, away from partial volume with the neighbours) covers at least
   `MIN_AREA_MM2`: the first slice's median HU, then from slice to slice the median of the paired
   difference over the interior the two slices share (so that an in-plane pattern both slices
   show, a rim darker than the core, does not count as a level change; the difference of the two
   medians where they share too little);
2. **smooth trend along z**: a robust locally weighted linear regression of those levels against
   the slice position (LOWESS: Cleveland, J Am Stat Assoc 1979;74:829–836), Gaussian kernel of
   σ `TREND_SIGMA_MM` in millimetres, each slice weighted by its interior area (up to
   `FULL_WEIGHT_AREA_MM2`), started from a Theil–Sen line and reweighted by Tukey's bisquare of
   its residual (cut-off `REJECT_HU`) so that a slice drawn at a wrong level does not pull the
   trend towards it. A local *linear* fit reproduces a linear z-gradient exactly, so a real smooth
   gradient along an organ (an enhancement that changes along a vessel, a scan's slow drift) is
   kept (a curved one up to a bias of about f''·σ²/2);
3. **offsets removed**: every voxel of the structure in that slice is shifted by the trend minus
   the slice's level, the shifts centred so that the interior's mean stays. The in-plane pattern
   within a slice (the network's texture, any texture added later) and the organ's level as a
   whole stay the network's.

Not touched: tumours (their own level step, `guidegen.images.levels`, and real necrosis or
enhancement rims), gas or content-filled structures (stomach, bowel: heterogeneity is real), bone,
lungs, heart (chambers of different enhancement), body, unknown; kidneys in contrast phases or an
unknown phase (how much cortex and medulla a slice cuts changes its mean for real); slices where a
structure's interior is too small to measure (organ tips thinner than a few millimetres); and
structures measured on fewer than `MIN_SLICES` slices. Labels are never changed.
"""

from __future__ import annotations

import numpy as np

from guidegen.images.grain import interior, slice_axis, to_slices_last
from guidegen.io.volume import HU_MAX, HU_MIN
from guidegen.labels.vocabulary import ID

__all__ = [
    "CONSISTENT_CLASSES",
    "UNENHANCED_ONLY",
    "even_slice_levels",
    "level_trend",
    "slice_offsets",
]

#: Structures whose level should not jump between slices: parenchyma, fluid, blood.
CONSISTENT_CLASSES: tuple[str, ...] = (
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "pancreas",
    "gallbladder",
    "urinary_bladder",
    "aorta",
    "inferior_vena_cava",
    "portal_vein",
    "other_artery",
    "other_vein",
)
#: Of those, the ones evened only in an unenhanced scan (cortex and medulla differ after contrast).
UNENHANCED_ONLY: tuple[str, ...] = ("kidney_right", "kidney_left")
#: σ (mm) of the Gaussian kernel of the z trend: its full width at half maximum is 35 mm, several
#: slices of any usual thickness, so the trend follows changes along an organ over centimetres only.
TREND_SIGMA_MM = 15.0
#: In-plane interior depth (mm) of the per-slice level.
DEPTH_MM = 2.0
#: A slice's level is measured where the structure's interior covers at least this area (mm²).
MIN_AREA_MM2 = 50.0
#: A slice's weight in the trend grows with its interior area up to this (mm², a 36 mm disc: a middling
#: organ section), then stays. An organ's tip (partial volume through the slice, and where the generator
#: errs most) says less about its level than a full section, but a median over 1000 mm² is already
#: precise to well under 1 HU, so a larger slice is no more trustworthy (and must not pull the trend).
FULL_WEIGHT_AREA_MM2 = 1000.0
#: Fewer measured slices than this and a structure is left as drawn.
MIN_SLICES = 3
#: Robustness iterations of the trend, and the bisquare cut-off (HU): a slice further than this from the
#: trend has no say in it, one a few HU off keeps nearly its full weight (a real scan's slice levels lie
#: within 1–6 HU of their trend: AMOS 0001, the tips' partial volume included).
ROBUST_ITERATIONS = 6
REJECT_HU = 20.0


def level_trend(
    z_mm: np.ndarray, levels: np.ndarray, weights: np.ndarray, sigma_mm: float = TREND_SIGMA_MM
) -> np.ndarray:
    """The robust smooth trend of per-slice levels along z (module docstring, step 2).

    Args:
        z_mm: (K,) slice positions (mm).
        levels: (K,) per-slice levels (HU).
        weights: (K,) non-negative reliability weights (e.g. interior areas).
        sigma_mm: σ of the Gaussian kernel (mm).

    Returns:
        (K,) trend at each slice (HU).
    """
    z = np.asarray(z_mm, dtype=np.float64)
    y = np.asarray(levels, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if not (z.shape == y.shape == w.shape and z.ndim == 1):
        raise ValueError(
            f"z_mm, levels and weights must be equal-length 1-D arrays, got {z.shape}, {y.shape}, {w.shape}"
        )
    if sigma_mm <= 0:
        raise ValueError(f"sigma_mm must be positive, got {sigma_mm}")
    kernel = np.exp(-0.5 * ((z[:, None] - z[None, :]) / sigma_mm) ** 2)  # (at, from)
    trend = _theil_sen(z, y, w)  # a robust start that already follows a gradient
    for _ in range(ROBUST_ITERATIONS):
        robust = np.clip(1.0 - ((y - trend) / REJECT_HU) ** 2, 0.0, None) ** 2
        if not np.any(w * robust > 0):
            break
        trend = _local_linear(z, y, kernel * (w * robust)[None, :])
    return trend


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _theil_sen(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted Theil–Sen line through (z, y) at each z: the weighted median of the pairwise
    slopes (pair weight w_i·w_j), then the weighted median intercept (Sen, J Am Stat Assoc
    1968;63:1379–1389); indifferent to a good share of far-off points."""
    i, j = np.triu_indices(z.size, k=1)
    pair = w[i] * w[j]
    slope = _weighted_median((y[j] - y[i]) / (z[j] - z[i]), pair) if pair.sum() > 0 else 0.0
    return _weighted_median(y - slope * z, w) + slope * z


def _local_linear(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares line through (z, y) around each z (row i of ``w`` weights the fit at z[i])."""
    dz = z[None, :] - z[:, None]
    s0, s1, s2 = w.sum(1), (w * dz).sum(1), (w * dz * dz).sum(1)
    t0, t1 = (w * y[None, :]).sum(1), (w * dz * y[None, :]).sum(1)
    det = s0 * s2 - s1 * s1
    flat = t0 / np.maximum(s0, 1e-12)  # a weighted mean where the points do not fix a slope
    sloped = (s2 * t0 - s1 * t1) / np.where(det > 0, det, 1.0)
    return np.where(det > 1e-9 * np.maximum(s0 * s2, 1e-12), sloped, flat)


def _step(hu: np.ndarray, inside: np.ndarray, k0: int, k1: int, pixel_area: float) -> float:
    """The level change from slice ``k0`` to ``k1`` (HU): the median of the paired difference over
    voxels inside in both when they are adjacent and share `MIN_AREA_MM2` (an in-plane pattern that
    the two slices share cancels), else the difference of the two slices' medians."""
    if k1 == k0 + 1:
        both = inside[..., k0] & inside[..., k1]
        if both.sum() * pixel_area >= MIN_AREA_MM2:
            return float(np.median(hu[..., k1][both] - hu[..., k0][both]))
    return float(np.median(hu[..., k1][inside[..., k1]]) - np.median(hu[..., k0][inside[..., k0]]))


def slice_offsets(hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, int]:
    """Each slice's level minus the structure's z trend (HU), 0 where not measured.

    Args:
        hu: (X, Y, Z) HU, slices last.
        mask: (X, Y, Z) bool, the structure.
        spacing: voxel size (mm) in the same order.

    Returns:
        ((Z,) offsets, number of slices measured).
    """
    inside = interior(mask, spacing, DEPTH_MM)
    pixel_area = spacing[0] * spacing[1]
    areas = inside.sum(axis=(0, 1)) * pixel_area
    measured = np.flatnonzero(areas >= MIN_AREA_MM2)
    offsets = np.zeros(mask.shape[2], dtype=np.float64)
    if measured.size < MIN_SLICES:
        return offsets, int(measured.size)
    levels = np.zeros(measured.size)
    levels[0] = float(np.median(hu[..., measured[0]][inside[..., measured[0]]]))
    for i in range(1, measured.size):
        levels[i] = levels[i - 1] + _step(hu, inside, int(measured[i - 1]), int(measured[i]), pixel_area)
    weights = np.minimum(areas[measured] / FULL_WEIGHT_AREA_MM2, 1.0)
    trend = level_trend(measured * spacing[2], levels, weights, TREND_SIGMA_MM)
    offsets[measured] = levels - trend
    # The organ's overall level stays the network's: the offsets of its interior voxels (the tissue,
    # not the partial volume at its border) average to zero.
    voxels = areas[measured]
    offsets[measured] -= float((offsets[measured] * voxels).sum() / voxels.sum())
    return offsets, int(measured.size)


def even_slice_levels(
    hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, phase: str | None
) -> tuple[np.ndarray, dict]:
    """Remove slice-to-slice level jumps of homogeneous structures (module docstring).

    Args:
        hu: (X, Y, Z) HU (float), any axis order.
        labels: (X, Y, Z) GuideGen ids on the same grid; never changed.
        affine: the grid's affine (voxel sizes, slice axis).
        phase: the contrast phase (kidneys are evened only when it is "non_contrast").

    Returns:
        (float32 HU clipped to the stored range, JSON-able record: per structure the slices
        measured and the root-mean-square and largest offset removed, HU).
    """
    if hu.shape != labels.shape:
        raise ValueError(f"hu and labels must have the same shape, got {hu.shape} and {labels.shape}")
    axis = slice_axis(affine)
    spacing_all = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    out, spacing = to_slices_last(np.array(hu, dtype=np.float32), spacing_all, axis)
    lab, _ = to_slices_last(np.asarray(labels), spacing_all, axis)
    record: dict = {}
    for name in CONSISTENT_CLASSES:
        if name in UNENHANCED_ONLY and phase != "non_contrast":
            continue
        mask = lab == ID[name]
        if not mask.any():
            continue
        offsets, measured = slice_offsets(out, mask, spacing)
        if measured < MIN_SLICES:
            record[name] = {"slices_measured": measured, "left": f"fewer than {MIN_SLICES} slices measured"}
            continue
        for k in np.flatnonzero(offsets):
            out[..., k][mask[..., k]] -= np.float32(offsets[k])
        moved = offsets[offsets != 0]
        record[name] = {
            "slices_measured": measured,
            "rms_offset_hu": round(float(np.sqrt(np.mean(moved**2))) if moved.size else 0.0, 1),
            "max_offset_hu": round(float(np.max(np.abs(moved))) if moved.size else 0.0, 1),
        }
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return np.moveaxis(out, -1, axis), record
