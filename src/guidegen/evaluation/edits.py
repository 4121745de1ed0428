"""Measuring an edit of a real scan (`guidegen edit`, issue 25): the seam and the tumours' HU.

* `seam_jumps`: the mean absolute HU difference between face-neighbouring voxels one inside and one
  outside the edit region (changed voxels + margin), against the same statistic between
  neighbouring voxels of the *real* scan elsewhere in the same tissue; also inside the blend zone of
  the margin, so that a step moved inwards by the blend is not hidden.
* `tumour_texture`: a tumour's interior mean HU and its grain (the standard deviation of the HU
  minus its 3 mm in-plane average), for comparing edited tumours with real ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from guidegen.images.grain import lesion_texture

__all__ = ["neighbour_differences", "seam_jumps", "tumour_texture"]


def neighbour_differences(
    hu: np.ndarray, labels: np.ndarray, first: np.ndarray, second: np.ndarray, by_axis: bool = False
) -> dict:
    """Mean |ΔHU| of face-neighbour pairs (a in ``first``, b in ``second``) of the same label, per label.

    Args:
        hu: (X, Y, Z) HU.
        labels: (X, Y, Z) label ids.
        first, second: (X, Y, Z) bool masks.
        by_axis: keep pairs along each array axis apart (neighbours 0.6 mm apart in-plane and 5 mm
            apart across slices differ by different amounts in any real scan).

    Returns:
        label id (or ``(label id, axis)`` with ``by_axis``) → (mean |ΔHU|, number of pairs).
    """
    hu = hu.astype(np.float64)
    sums: dict = {}
    counts: dict = {}
    for axis in range(3):
        for a, b in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
            sa = [slice(None)] * 3
            sb = [slice(None)] * 3
            sa[axis], sb[axis] = a, b
            sa, sb = tuple(sa), tuple(sb)
            pair = first[sa] & second[sb] & (labels[sa] == labels[sb])
            if not pair.any():
                continue
            diff = np.abs(hu[sa][pair] - hu[sb][pair])
            lab = labels[sa][pair]
            for value in np.unique(lab):
                sel = lab == value
                key = (int(value), axis) if by_axis else int(value)
                sums[key] = sums.get(key, 0.0) + float(diff[sel].sum())
                counts[key] = counts.get(key, 0) + int(sel.sum())
    return {k: (sums[k] / counts[k], counts[k]) for k in sums}


def _per_label(by_axis: dict) -> dict[int, tuple[float, int]]:
    """`neighbour_differences` ``by_axis`` output summed over the directions: label → (mean, pairs)."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for (label, _), (mean, n) in by_axis.items():
        sums[label] = sums.get(label, 0.0) + mean * n
        counts[label] = counts.get(label, 0) + n
    return {k: (sums[k] / counts[k], counts[k]) for k in sums}


def _weighted(per_label: dict[int, tuple[float, int]], weights: dict[int, int]) -> float | None:
    total = sum(weights[k] for k in weights if k in per_label)
    if total == 0:
        return None
    return sum(per_label[k][0] * weights[k] for k in weights if k in per_label) / total


def seam_jumps(
    edited: np.ndarray,
    real: np.ndarray,
    labels: np.ndarray,
    distance_mm: np.ndarray,
    margin_mm: float,
    box: Sequence[slice],
    exclude_labels: Sequence[int] = (),
) -> dict:
    """Seam statistics of one edit (module docstring).

    Args:
        edited, real: (X, Y, Z) HU of the edited and the real CT.
        labels: (X, Y, Z) edited label map.
        distance_mm: distance (mm) to the nearest changed voxel inside ``box`` (`EditRegion.distance_mm`).
        margin_mm: the edit's margin (region = distance ≤ margin).
        box: the region's bounding box in the full arrays (`EditRegion.box`).
        exclude_labels: labels left out (e.g. background air, where neighbours differ by nothing).

    Returns:
        ``{"seam_hu", "blend_hu", "real_hu", "real_matched_hu", "real_at_seam_hu",
        "real_in_blend_hu", "seam_pairs", "per_label": {id: [seam, real, real at the seam]}}``:
        mean |ΔHU| across the region's border; between voxels of the blend zone (margin/2 < d ≤
        margin); between neighbours of the same labels in the real scan outside the box
        (``real_matched_hu``: the same with the seam's share of pairs along each axis); and across
        the same border and inside the same blend zone in the real scan (the real CT's own
        roughness there: gas beside bowel wall makes it far above the scan's average); each
        weighted by the seam's pair count per label.
    """
    box = tuple(box)
    region = np.zeros(edited.shape, bool)
    blend = np.zeros(edited.shape, bool)
    region[box] = distance_mm <= margin_mm
    blend[box] = (distance_mm > 0.5 * margin_mm) & (distance_mm <= margin_mm)
    outside_box = np.ones(edited.shape, bool)
    outside_box[box] = False
    keep = ~np.isin(labels, list(exclude_labels))
    # Pairs by label and direction; the per-label figures are their sums (each pair set counted once).
    seam_axes = neighbour_differences(edited, labels, region & keep, ~region & keep, by_axis=True)
    reference_axes = neighbour_differences(real, labels, outside_box & keep, outside_box & keep, by_axis=True)
    seam, reference = _per_label(seam_axes), _per_label(reference_axes)
    inner = neighbour_differences(edited, labels, blend & keep, blend & keep)
    in_place = neighbour_differences(real, labels, region & keep, ~region & keep)
    blend_in_place = neighbour_differences(real, labels, blend & keep, blend & keep)
    weights = {k: n for k, (_, n) in seam.items()}
    return {
        "seam_hu": _weighted(seam, weights),
        "blend_hu": _weighted(inner, weights),
        "real_hu": _weighted(reference, weights),
        "real_matched_hu": _weighted(reference_axes, {k: n for k, (_, n) in seam_axes.items()}),
        "real_at_seam_hu": _weighted(in_place, weights),
        "real_in_blend_hu": _weighted(blend_in_place, weights),
        "seam_pairs": int(sum(weights.values())),
        "per_label": {
            int(k): [
                round(seam[k][0], 1),
                round(reference[k][0], 1) if k in reference else None,
                round(in_place[k][0], 1) if k in in_place else None,
            ]
            for k in seam
        },
    }


def tumour_texture(hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float], depth_mm: float = 2.0) -> dict:
    """Interior mean HU and grain (std of HU minus its 3 mm in-plane average) of a tumour mask
    (`guidegen.images.grain.lesion_texture`, the measure edits set new tumours' grain by).

    ``hu`` and ``mask`` have slices last (canonical RAS+ arrays). Interior: voxels more than
    ``depth_mm`` inside the mask in their slice (all voxels when fewer than 20).
    """
    mean, grain = lesion_texture(hu, mask, spacing, depth_mm)
    return {"voxels": int(mask.sum()), "mean_hu": round(mean, 1), "grain_hu": round(grain, 1)}
