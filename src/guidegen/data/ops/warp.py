"""Shape-based resampling of label maps (and linear resampling of CT) at displaced positions.

Resampling of labels is shape-based (Raya & Udupa 1990), as in `guidegen.grids.resample`: every
class's signed distance map (mm) is interpolated at the deformed positions and each voxel takes
the class it lies deepest inside. Boundaries follow the interpolated zero level sets, so they stay
smooth (no nearest-neighbour staircases), and every voxel gets exactly one class (no gaps at
junctions of three classes). Deformations and jitter interpolate with quadratic B-splines rather
than linearly, which keeps thin and small organs from losing volume at every resampling (see
`warp_labels`); only voxels near a class boundary are interpolated at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from guidegen.data.ops.base import FAR_OUTSIDE_MM
from guidegen.grids.resample import signed_distance
from guidegen.io.volume import Volume


def grid_points(shape: tuple[int, ...]) -> np.ndarray:
    """(3, X, Y, Z) float32 voxel indices."""
    return np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"))


def warp_labels(array: np.ndarray, spacing: Sequence[float], coords: np.ndarray) -> np.ndarray:
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
    best = np.full(points.shape[1], FAR_OUTSIDE_MM, dtype=np.float32)
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
        values = ndimage.map_coordinates(
            coefficients, points[:, near] - lo[:, None].astype(np.float32), order=2, mode="nearest", prefilter=False
        )
        index = np.flatnonzero(near)
        take = values < best[index]
        best[index[take]] = values[take]
        chosen[index[take]] = cls
    out[band] = chosen
    return out


def warp_ct(ct: Volume, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of CT at source voxel positions (3, X, Y, Z); edges replicate."""
    return ndimage.map_coordinates(ct.array.astype(np.float32), coords, order=1, mode="nearest").astype(np.float32)
