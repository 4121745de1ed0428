"""Which side of the patient a kidney label lies on, from world coordinates.

A label map names its kidneys ``kidney_right`` and ``kidney_left``, but a network can draw the
"left kidney" on the patient's right (issue 24), and a reader that trusted the names would report
a tumour placed in that label as a left-kidney tumour although it lies on the right. Sides are
therefore read from positions: world coordinates are RAS+ as `guidegen.io.volume` defines them
(+x towards the patient's right), reached through the volume's affine, so a map stored RAS or LPS
(or any axis order) gives the same answer.

Rule (`kidneys_swapped`):

* Both kidney labels present: the one whose centroid lies at larger world x is the right kidney,
  whatever its label says. Needs no midline, so it holds on maps cropped off-centre.
* One kidney present: it is on the side of the midline its centroid lies on, when it lies more than
  `SIDE_MARGIN_MM` from it; the midline is the aorta's centroid x when the aorta is drawn, else the
  middle of the labelled voxels' x extent (1st-99th percentile) when the body outline is drawn.
  Otherwise its side cannot be told and its label is trusted.
"""

from __future__ import annotations

import numpy as np

from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, UNKNOWN

__all__ = ["KIDNEYS", "SIDE_MARGIN_MM", "centroid_x", "kidneys_swapped", "midline_x", "world_side"]

#: The two kidney classes, right first.
KIDNEYS = ("kidney_right", "kidney_left")
#: A lone kidney whose centroid lies closer than this to the midline keeps its label's side, mm.
SIDE_MARGIN_MM = 10.0


def centroid_x(labels: Volume, array: np.ndarray, class_id: int) -> float | None:
    """World x (RAS+ mm) of the centroid of one class's voxel centres; ``None`` without voxels."""
    index = np.nonzero(array == class_id)
    if len(index[0]) == 0:
        return None
    mean_index = np.array([i.mean() for i in index])
    return float(labels.world_coordinates(mean_index)[0])


def midline_x(labels: Volume, array: np.ndarray) -> float | None:
    """World x of the patient's midline: the aorta's centroid, else the middle of the labelled voxels'
    x extent (1st-99th percentile, ignoring stray voxels) when the body outline is drawn; else ``None``.
    """
    aorta = centroid_x(labels, array, ID["aorta"])
    if aorta is not None:
        return aorta
    if not np.any(array == ID["body"]):
        return None  # without the body outline the labelled voxels need not span the body
    inside = (array != 0) & (array != UNKNOWN)
    # Percentiles from the profile along the array axis closest to world x (no per-voxel list).
    axis = int(np.argmax(np.abs(labels.affine[0, :3])))
    profile = inside.sum(axis=tuple(a for a in range(3) if a != axis)).astype(np.float64)
    cumulative = np.cumsum(profile) / profile.sum()
    low, high = (int(np.searchsorted(cumulative, q)) for q in (0.01, 0.99))
    centre = (np.array(array.shape, dtype=np.float64) - 1) / 2
    ends = []
    for i in (low, high):
        point = centre.copy()
        point[axis] = i
        ends.append(float(labels.world_coordinates(point)[0]))
    return (ends[0] + ends[1]) / 2.0


def kidneys_swapped(labels: Volume, array: np.ndarray | None = None) -> bool:
    """Whether the map's kidney labels lie on the opposite sides of the patient to their names.

    Args:
        labels: label map in GuideGen ids, any orientation (its affine maps to RAS+ mm).
        array: ``labels.array`` as integers, when the caller already has it.

    Returns:
        ``True`` when the ``kidney_right`` label lies at the patient's left of the ``kidney_left``
        label, or a lone kidney lies on the other side of the midline than its name says (see the
        module's rule); ``False`` otherwise, including when the side cannot be told.
    """
    array = labels.array if array is None else array
    right = centroid_x(labels, array, ID["kidney_right"])
    left = centroid_x(labels, array, ID["kidney_left"])
    if right is not None and left is not None:
        return right < left
    lone = right if right is not None else left
    if lone is None:
        return False
    side = world_side(lone, midline_x(labels, array))
    return side is not None and side != ("right" if right is not None else "left")


def world_side(x_mm: float, midline_mm: float | None, margin_mm: float = SIDE_MARGIN_MM) -> str | None:
    """``"right"`` or ``"left"`` of the patient for a world x (RAS+: larger x = more to the right);
    ``None`` without a midline or within ``margin_mm`` of it."""
    if midline_mm is None or abs(x_mm - midline_mm) < margin_mm:
        return None
    return "right" if x_mm > midline_mm else "left"
