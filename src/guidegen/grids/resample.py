"""Resampling CT and label maps onto an axis-aligned RAS+ grid.

CT: linear interpolation, with Gaussian pre-filtering along axes that are downsampled (anti-aliasing).
Labels: **shape-based interpolation** (Raya & Udupa 1990): each class's signed distance map (mm) is
interpolated linearly and every target voxel takes the class it lies deepest inside. Unlike nearest
neighbour this gives smooth surfaces between thick slices instead of staircases, and unlike
one-hot + argmax it does not depend on the other classes' smoothing. Signed distances are computed
only in a box around each class, so cost scales with organ size, not scan size.

Where two classes touch, a target point can lie inside neither class's interpolated shape (half-way
between their voxels each signed distance is 0; between thick slices of anisotropic voxels it can be
above 0 for both). Such a point would become background, drawn as air by the CT generator, though
no background voxel lies near it. A point with no background voxel among the source voxels it
interpolates between takes the class it lies nearest to instead.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from guidegen.io.volume import HU_MIN, Volume
from guidegen.labels.vocabulary import UNKNOWN

__all__ = ["field_of_view", "grid_affine", "resample_ct", "resample_labels", "signed_distance"]

_FAR = 1e6  # "very far outside" in mm


def grid_affine(spacing: tuple[float, float, float], origin: np.ndarray) -> np.ndarray:
    """Axis-aligned RAS+ affine with the given voxel size (mm) and world position of voxel 0."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    return affine


def _index_map(source: Volume, target_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) taking target voxel indices to source voxel indices."""
    m = np.linalg.inv(source.affine) @ target_affine
    return m[:3, :3], m[:3, 3]


def resample_ct(ct: Volume, target_affine: np.ndarray, shape: tuple[int, int, int]) -> Volume:
    """Linear resampling of CT (HU) onto a target grid; outside the scan is air (-1024 HU)."""
    matrix, offset = _index_map(ct, target_affine)
    data = np.maximum(ct.array.astype(np.float32), HU_MIN)  # scanner padding (-2048, -3024) is air
    # Downsampling factor per source axis: target step measured in source voxels.
    step = np.linalg.norm(matrix, axis=1)
    sigma = np.where(step > 1.5, 0.4 * step, 0.0)
    if np.any(sigma > 0):
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
    out = ndimage.affine_transform(
        data, matrix, offset, output_shape=shape, order=1, mode="constant", cval=float(HU_MIN)
    )
    return Volume(out.astype(np.float32), target_affine, "ct", dict(ct.meta))


def field_of_view(source: Volume, target_affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) bool: target voxels whose centre falls inside the source scan."""
    matrix, offset = _index_map(source, target_affine)
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    src = matrix.astype(np.float32) @ idx + offset.astype(np.float32)[:, None]
    inside = np.ones(src.shape[1], dtype=bool)
    for axis in range(3):
        inside &= (src[axis] >= -0.5) & (src[axis] <= source.shape[axis] - 0.5)
    return inside.reshape(shape)


def signed_distance(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Signed Euclidean distance in mm: negative inside, positive outside, ±half a voxel at the border."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    half = 0.5 * min(spacing)
    return np.where(mask, -inside + half, outside - half).astype(np.float32)


def _target_box(
    matrix: np.ndarray, offset: np.ndarray, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int, int]
) -> tuple[tuple[slice, ...] | None, np.ndarray]:
    """The target voxels (a box of slices, and its first index) whose source index ``matrix @ t +
    offset`` can fall inside the source box [lo, hi); one voxel of slack each side. ``None`` when
    none does."""
    corners = np.array(np.meshgrid(*[(a - 1.0, b) for a, b in zip(lo, hi)], indexing="ij")).reshape(3, -1)
    target = np.linalg.solve(matrix, corners - offset[:, None])
    t_lo = np.maximum(np.floor(target.min(axis=1)).astype(int) - 1, 0)
    t_hi = np.minimum(np.ceil(target.max(axis=1)).astype(int) + 2, np.asarray(shape))
    if np.any(t_hi <= t_lo):
        return None, t_lo
    return tuple(slice(int(a), int(b)) for a, b in zip(t_lo, t_hi)), t_lo.astype(np.float64)


def resample_labels(
    labels: Volume, target_affine: np.ndarray, shape: tuple[int, int, int], mark_outside_unknown: bool = True
) -> Volume:
    """Shape-based resampling of a label map (any ids, including UNKNOWN) onto a target grid.

    Voxels outside the source's field of view become UNKNOWN when ``mark_outside_unknown`` (we do
    not know what is there), else background.
    """
    matrix, offset = _index_map(labels, target_affine)
    spacing = labels.spacing
    best = np.full(shape, _FAR, dtype=np.float32)
    out = np.zeros(shape, dtype=np.uint8)
    nearest = np.full(shape, _FAR, dtype=np.float32)  # smallest signed distance of any class, inside or not
    nearest_class = np.zeros(shape, dtype=np.uint8)
    margin = np.ceil(2.0 * np.linalg.norm(matrix, axis=1)).astype(int) + 2  # a few target voxels
    classes = np.unique(labels.array)
    for cls in classes:
        if cls == 0:
            continue
        mask = labels.array == cls
        nz = np.nonzero(mask)
        lo = np.maximum([int(a.min()) for a in nz] - margin, 0)
        hi = np.minimum([int(a.max()) + 1 for a in nz] + margin, labels.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        sdf = signed_distance(mask[box], spacing)
        # Only target voxels whose source position falls inside the box get a value other than
        # `_FAR` (mode "constant" does not interpolate beyond the input's edges): transform that part.
        t_box, t_lo = _target_box(matrix, offset, lo, hi, shape)
        if t_box is None:
            continue
        # Shift the index map so that it addresses the box, from the target sub-box's first voxel.
        sdf_t = ndimage.affine_transform(
            sdf,
            matrix,
            offset - lo + matrix @ t_lo,
            output_shape=tuple(s.stop - s.start for s in t_box),
            order=1,
            mode="constant",
            cval=_FAR,
        )
        best_b, out_b, nearest_b, nearest_class_b = best[t_box], out[t_box], nearest[t_box], nearest_class[t_box]
        take = (sdf_t < 0) & (sdf_t < best_b)
        best_b[take] = sdf_t[take]
        out_b[take] = cls
        closer = sdf_t < nearest_b
        nearest_b[closer] = sdf_t[closer]
        nearest_class_b[closer] = cls
    if 0 in classes:
        # Background is possible only where a background voxel is among the interpolation's corners.
        background = ndimage.affine_transform(
            (labels.array == 0).astype(np.float32), matrix, offset, output_shape=shape, order=1, mode="nearest"
        )
        gap = (out == 0) & (background == 0) & (nearest < _FAR)
    else:
        gap = (out == 0) & (nearest < _FAR)
    out[gap] = nearest_class[gap]
    if mark_outside_unknown:
        out[~field_of_view(labels, target_affine, shape)] = UNKNOWN
    return Volume(out, target_affine, "labels", dict(labels.meta))
