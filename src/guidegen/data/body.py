"""Body outline: from CT (everything of the patient inside the skin, without table and air), or,
for a label map without a CT and without a body class, derived from its labelled structures.

The CT generator was trained on prepared maps (`guidegen.data.prepare`) in which every voxel inside
the patient carries a class: "body" wherever no annotated class is, background (0) only outside
the patient, which it draws as air. A user's map must look the same (`complete_body`), or the
generator draws organs floating in air.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from guidegen.io.volume import Volume, canonical, reorient_like
from guidegen.labels.vocabulary import ID, UNKNOWN

#: Soft tissue starts well above -500 HU; air and lung parenchyma (-900 … -700) are below.
BODY_THRESHOLD_HU = -500.0
#: A derived body outline is the hull of the labelled structures of each axial slice (taken over
#: ±``DERIVED_BODY_SLAB_MM`` along z, so that a pelvic slice holding only the bladder borrows the
#: outline of the abdomen above it) grown by ``DERIVED_BODY_MARGIN_MM`` of subcutaneous tissue.
#: Measured on the bundled real maps whose body outline comes from their CT (benchmarks/body_margin.py,
#: docs/results/byom_labels.txt): best margins 20–27.5 mm (TotalSegmentator maps with bone, AMOS maps
#: without), 35 mm for TotalSegmentator maps with their bones removed; 30 mm over ±100 mm gives Dice
#: 0.91–0.95 with the real outline, 0.86 for the abdomen–pelvis map without its bones.
DERIVED_BODY_MARGIN_MM = 30.0
DERIVED_BODY_SLAB_MM = 100.0


def body_outline(ct: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """(X, Y, Z) bool body mask.

    Threshold at -500 HU, an in-plane opening of about 5 mm to cut the thin patient table and
    blankets away, keep the largest 3-D component, then fill holes slice by slice (lungs and bowel
    gas are inside the body) and in 3-D.
    """
    mask = ct > BODY_THRESHOLD_HU
    radius = np.maximum(1, np.round(2.5 / np.asarray(spacing[:2]))).astype(int)
    structure = np.zeros((2 * radius[0] + 1, 2 * radius[1] + 1, 1), dtype=bool)
    xx, yy = np.ogrid[-radius[0] : radius[0] + 1, -radius[1] : radius[1] + 1]
    structure[..., 0] = (xx / radius[0]) ** 2 + (yy / radius[1]) ** 2 <= 1.0
    opened = ndimage.binary_opening(mask, structure=structure)
    components, n = ndimage.label(opened)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    # Undo the opening's erosion of the skin surface inside the kept component.
    body = ndimage.binary_dilation(body, structure=structure) & mask | body
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return ndimage.binary_fill_holes(body)


def slice_hulls(mask: np.ndarray, spacing: tuple[float, float, float], slab_mm: float = 0.0) -> np.ndarray:
    """(X, Y, Z) bool: per axial slice, the convex hull of ``mask`` in that slice (or in a slab around it).

    Args:
        mask: (X, Y, Z) bool, axial slices along the last axis.
        spacing: voxel size in mm.
        slab_mm: the hull of slice k covers the mask's pixels within ``±slab_mm`` of it along z, so a
            slice where only one small structure is labelled (the bladder in the pelvis) borrows the
            outline of its neighbours.
    """
    hull = np.zeros(mask.shape, dtype=bool)
    reach = int(np.floor(slab_mm / spacing[2] + 1e-6)) if slab_mm > 0 else 0
    present = np.flatnonzero(mask.any(axis=(0, 1)))
    if present.size == 0:
        return hull
    for k in range(mask.shape[2]):
        lo, hi = max(0, k - reach), min(mask.shape[2], k + reach + 1)
        if not np.any((present >= lo) & (present < hi)):
            continue
        hull[:, :, k] = _convex_hull_2d(mask[:, :, lo:hi].any(axis=2))
    return hull


def _convex_hull_2d(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of the True pixels of a 2-D mask (pixel centres; degenerate sets as they are)."""
    points = np.argwhere(mask)
    if len(points) < 3:
        return mask.copy()
    lo, hi = points.min(0), points.max(0) + 1
    if np.any(hi - lo < 2):  # a straight line of pixels has no area: keep it
        out = np.zeros_like(mask)
        out[lo[0] : hi[0], lo[1] : hi[1]] = True
        return out
    try:
        hull = ConvexHull(points)
    except QhullError:  # collinear points
        return mask.copy()
    triangles = Delaunay(points[hull.vertices])
    grid = np.stack(np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij"), axis=-1).reshape(
        -1, 2
    )
    inside = triangles.find_simplex(grid, tol=1e-9) >= 0
    out = np.zeros_like(mask)
    out[lo[0] : hi[0], lo[1] : hi[1]] = inside.reshape(hi[0] - lo[0], hi[1] - lo[1])
    return out | mask


def grow_in_plane(mask: np.ndarray, spacing: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` within each axial slice (Euclidean, in mm)."""
    if margin_mm <= 0:
        return mask.copy()
    out = np.zeros_like(mask)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        out[:, :, k] = ndimage.distance_transform_edt(~mask[:, :, k], sampling=spacing[:2]) <= margin_mm
    return out


def _enclosed(labelled: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: ``labelled`` with the holes of every axial slice filled."""
    out = np.empty_like(labelled)
    for k in range(labelled.shape[2]):
        out[:, :, k] = ndimage.binary_fill_holes(labelled[:, :, k])
    return out


def derive_body(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    margin_mm: float = DERIVED_BODY_MARGIN_MM,
    slab_mm: float = DERIVED_BODY_SLAB_MM,
) -> np.ndarray:
    """(X, Y, Z) bool body outline of a label map (axial slices along the last axis) that has none.

    The hull of the labelled structures per slice (`slice_hulls`, over ±``slab_mm``) grown by
    ``margin_mm`` (`grow_in_plane`), plus the labelled voxels themselves. Slices with no structure
    within the slab get no body.
    """
    structures = (labels != 0) & (labels != UNKNOWN) & (labels != ID["body"])
    return grow_in_plane(slice_hulls(structures, spacing, slab_mm), spacing, margin_mm) | structures


@dataclass(frozen=True)
class BodyCompletion:
    """What `complete_body` did.

    Attributes:
        labels: the map with class "body" wherever background lay inside the body outline.
        annotated: the annotated classes, "body" added when the outline was derived (``None`` stays
            ``None``: every class annotated).
        derived: whether the outline was derived from the structures (the map had no "body" voxel).
        body_voxels: voxels that became "body".
    """

    labels: Volume
    annotated: frozenset[str] | None
    derived: bool
    body_voxels: int


def complete_body(
    labels: Volume,
    annotated: Iterable[str] | None = None,
    *,
    margin_mm: float = DERIVED_BODY_MARGIN_MM,
    slab_mm: float = DERIVED_BODY_SLAB_MM,
) -> BodyCompletion:
    """Give a label map the body outline the CT generator expects, as preparation gives training maps.

    * The map has "body" voxels: background enclosed by labelled voxels within an axial slice (a
      structure mapped to background, such as the lungs of a TotalSegmentator map) becomes "body",
      as `body_outline` fills the holes of a CT's outline.
    * It has none (TotalSegmentator, AMOS, DICOM-SEG maps): the outline is derived (`derive_body`)
      and the background inside it becomes "body", which is then annotated.

    Unknown voxels (255) are left as they are (see `unknown_as_body`). Works in any orientation;
    the returned map has the input's array order and affine.
    """
    if labels.kind != "labels":
        raise ValueError(f"labels must be a label Volume, got kind {labels.kind!r}")
    upright = canonical(labels)
    array = np.asarray(upright.array).astype(np.uint8, copy=True)
    derived = not bool(np.any(array == ID["body"]))
    if derived:
        inside = derive_body(array, upright.spacing, margin_mm, slab_mm)
    else:
        inside = _enclosed((array != 0) & (array != UNKNOWN))
    fill = inside & (array == 0)
    array[fill] = ID["body"]
    ann = None if annotated is None else frozenset(annotated) | ({"body"} if derived else set())
    completed = reorient_like(upright.with_array(array), labels.affine)
    return BodyCompletion(completed, ann, derived, int(fill.sum()))


def unknown_as_body(labels: Volume) -> Volume:
    """Unknown voxels (255) inside the body shown as "body", the way preparation shows unannotated tissue.

    In training, 255 marks only voxels outside the scanned field of view, where the CT is air, and
    the generator draws it as air; unannotated tissue inside the patient was always "body" (with
    the hidden classes' annotated flags off). So unknown voxels enclosed by labelled voxels within
    an axial slice become "body" for the generator; unknown voxels reaching the edge of the slice
    outside the labelled region stay unknown (outside the scan).
    """
    upright = canonical(labels)
    array = np.asarray(upright.array)
    unknown = array == UNKNOWN
    if not unknown.any():
        return labels
    turn = unknown & _enclosed((array != 0) & ~unknown)
    if not turn.any():
        return labels
    array = array.copy()
    array[turn] = ID["body"]
    return reorient_like(upright.with_array(array), labels.affine)
