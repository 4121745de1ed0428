"""Upsampling of a sampled label map to the image grid, without staircases and without breaking structures.

The mask sampler works on a coarse grid (e.g. 6 mm); the CT generator needs the image grid (3 mm).
Nearest-neighbour upsampling gives 2×2×2 blocks — staircase surfaces the CT generator would copy.
We use the shape-based interpolation of `guidegen.grids.resample.resample_labels` (Raya & Udupa 1990:
each class's signed distance map is interpolated linearly, every voxel takes the class it lies
deepest inside), which gives smooth, piecewise-planar surfaces.

Interpolating distance maps can cut a thin structure (a vessel or the pancreas one coarse voxel
wide, or two voxels touching only at an edge) into pieces. We check this per class against a
reference that preserves the coarse map's connectivity exactly — its nearest-neighbour upsampling,
in which each coarse voxel becomes a block and neighbouring voxels stay neighbours — and repair
classes whose number of 26-connected components grew:

1. **bridge**: grow the smaller pieces, one voxel per iteration, into the nearest-neighbour blocks
   of the same class (the only places the class may legitimately occupy), until the pieces join
   or ``bridge_iterations`` is reached;
2. **prune**: if pieces remain, keep the ``n`` largest components (``n`` = the reference count)
   plus any component of at least ``keep_component_ml``, and give the other voxels the class of
   the nearest voxel of another class.

The result never has more components per class than the coarse map (for pieces under
``keep_component_ml``), and surfaces stay smooth everywhere except the few bridged voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from guidegen.grids.resample import field_of_view, resample_labels
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import UNKNOWN

__all__ = ["component_counts", "upsample_grid", "upsample_labels"]

#: 26-connectivity: voxels touching by a face, an edge or a corner are connected.
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def component_counts(array: np.ndarray, classes: Sequence[int] | None = None) -> dict[int, int]:
    """Number of 26-connected components of every class id present (0 and UNKNOWN excluded)."""
    if classes is None:
        classes = [int(c) for c in np.unique(array) if c not in (0, UNKNOWN)]
    # A class's components lie inside its bounding box: label only that box (one pass finds them all).
    boxes = ndimage.find_objects(np.asarray(array).astype(np.int32, copy=False))
    counts = {}
    for c in classes:
        box = boxes[int(c) - 1] if 0 < int(c) <= len(boxes) else None
        counts[int(c)] = 0 if box is None else int(ndimage.label(array[box] == c, structure=_CONNECTIVITY)[1])
    return counts


def upsample_grid(
    labels: Volume, spacing: Sequence[float] = (3.0, 3.0, 3.0), shape: Sequence[int] | None = None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The target grid (affine, shape) with ``spacing`` mm, same axis directions and same centre as ``labels``.

    Without ``shape`` the grid covers the same field of view: ``round(shape_in · spacing_in / spacing)``
    voxels per axis (a 64-voxel 6 mm axis becomes 128 voxels of 3 mm, edges coinciding).
    """
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (3,) or not np.all(np.isfinite(spacing_arr)) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing}")
    old_spacing = np.asarray(labels.spacing)
    if shape is None:
        shape_arr = np.maximum(1, np.round(np.asarray(labels.shape) * old_spacing / spacing_arr)).astype(int)
    else:
        shape_arr = np.asarray(shape, dtype=int)
        if shape_arr.shape != (3,) or np.any(shape_arr < 1):
            raise ValueError(f"shape must be three positive sizes, got {shape}")
    directions = labels.affine[:3, :3] / old_spacing  # unit column vectors of the axes
    centre = labels.world_coordinates((np.asarray(labels.shape) - 1) / 2.0)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing_arr
    affine[:3, 3] = centre - affine[:3, :3] @ ((shape_arr - 1) / 2.0)
    return affine, (int(shape_arr[0]), int(shape_arr[1]), int(shape_arr[2]))


def _nearest(labels: Volume, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resampling (keeps the source's connectivity when upsampling); outside → 0."""
    m = np.linalg.inv(labels.affine) @ affine
    return ndimage.affine_transform(
        labels.array, m[:3, :3], m[:3, 3], output_shape=shape, order=0, mode="constant", cval=0
    )


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component map, sizes) with sizes[0] = 0 for the background."""
    comp, n = ndimage.label(mask, structure=_CONNECTIVITY)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    sizes[0] = 0
    return comp, sizes


def _bridge(out: np.ndarray, cls: int, allowed: np.ndarray, target: int, iterations: int) -> None:
    """Grow the non-largest pieces of ``cls`` into ``allowed`` voxels until ≤ ``target`` components."""
    # The class grows by at most one voxel per iteration: everything happens inside its bounding box
    # widened by the iterations (and one more for the last dilation), so only that box is worked on.
    where = np.argwhere(out == cls)
    if where.size == 0:
        return
    lo = np.maximum(where.min(0) - iterations - 1, 0)
    hi = np.minimum(where.max(0) + iterations + 2, out.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    out, allowed = out[box], allowed[box]  # views: `out` is written through
    for _ in range(iterations):
        comp, sizes = _components(out == cls)
        if len(sizes) - 1 <= target:
            return
        small = (comp > 0) & (comp != int(np.argmax(sizes)))
        grow = ndimage.binary_dilation(small, structure=_CONNECTIVITY) & allowed & (out != cls)
        if not grow.any():
            return
        out[grow] = cls


def _prune(out: np.ndarray, cls: int, target: int, keep_voxels: float) -> None:
    """Keep the ``target`` largest components of ``cls`` (and any ≥ ``keep_voxels``); relabel the rest."""
    comp, sizes = _components(out == cls)
    n = len(sizes) - 1
    if n <= target:
        return
    order = np.argsort(sizes[1:])[::-1] + 1
    keep = np.zeros(n + 1, dtype=bool)
    keep[order[:target]] = True
    keep[1:] |= sizes[1:] >= keep_voxels
    remove = ~keep[comp] & (comp > 0)
    if not remove.any():
        return
    # Nearest voxel of another class, searched in a box around the removed voxels (cheap).
    idx = np.argwhere(remove)
    lo = np.maximum(idx.min(0) - 4, 0)
    hi = np.minimum(idx.max(0) + 5, out.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = out[box]
    other = sub != cls
    if not other.any():
        sub[remove[box]] = 0
        return
    nearest = ndimage.distance_transform_edt(~other, return_distances=False, return_indices=True)
    rm = remove[box]
    sub[rm] = sub[tuple(nearest[:, rm])]


def upsample_labels(
    labels: Volume,
    spacing: Sequence[float] = (3.0, 3.0, 3.0),
    shape: Sequence[int] | None = None,
    affine: np.ndarray | None = None,
    *,
    fix_connectivity: bool = True,
    keep_component_ml: float = 5.0,
    bridge_iterations: int = 3,
) -> Volume:
    """Resample a coarse label map onto a finer grid with smooth surfaces and no new fragments.

    Args:
        labels: label map (X, Y, Z) of GuideGen ids (UNKNOWN = 255 allowed), e.g. the sampler's 6 mm grid.
        spacing: target voxel size in mm (ignored when ``affine`` is given).
        shape: target shape; default: the same field of view (see `upsample_grid`).
        affine: explicit target (4, 4) affine (then ``shape`` is required), e.g. a CT's grid.
        fix_connectivity: bridge or prune pieces so no class has more 26-connected components than
            the coarse map (see the module docstring).
        keep_component_ml: pieces at least this large (mL) are never pruned.
        bridge_iterations: how many voxels pieces may grow to rejoin their structure.

    Returns:
        uint8 label `Volume` on the target grid; voxels outside the input's field of view are UNKNOWN.
    """
    if labels.kind != "labels":
        raise ValueError(f"labels must be a label Volume, got kind {labels.kind!r}")
    if affine is None:
        affine, shape_t = upsample_grid(labels, spacing, shape)
    else:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        if shape is None:
            raise ValueError("shape is required when affine is given")
        shape_t = tuple(int(s) for s in shape)
        if len(shape_t) != 3 or min(shape_t) < 1:
            raise ValueError(f"shape must be three positive sizes, got {shape}")
    if keep_component_ml <= 0:
        raise ValueError(f"keep_component_ml must be positive, got {keep_component_ml}")
    if bridge_iterations < 0:
        raise ValueError(f"bridge_iterations must be >= 0, got {bridge_iterations}")
    src = labels.with_array(np.asarray(labels.array).astype(np.uint8, copy=False))
    # Target voxels within half a source voxel of the border fall outside the source array, where
    # the distance maps are undefined; one voxel of edge padding lets classes reach the border.
    pad_affine = src.affine.copy()
    pad_affine[:3, 3] -= src.affine[:3, :3] @ np.ones(3)
    padded = Volume(np.pad(src.array, 1, mode="edge"), pad_affine, "labels")
    out = resample_labels(padded, affine, shape_t, mark_outside_unknown=False)
    out.array[~field_of_view(src, affine, shape_t)] = UNKNOWN
    if fix_connectivity:
        nearest = _nearest(src, affine, shape_t)
        reference = component_counts(nearest)
        voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        keep_voxels = keep_component_ml / voxel_ml
        array = out.array
        for cls, count in component_counts(array).items():
            target = reference.get(cls, 0)
            if count <= target or target == 0:
                continue
            _bridge(array, cls, nearest == cls, target, bridge_iterations)
            _prune(array, cls, target, keep_voxels)
        # Bridging one class takes voxels from its neighbours: check every class once more.
        for cls, count in component_counts(array).items():
            target = reference.get(cls, 0)
            if target and count > target:
                _prune(array, cls, target, keep_voxels)
    out.meta = dict(labels.meta)
    return out
