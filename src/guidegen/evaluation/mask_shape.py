"""Shape features of the organs in a label map, for comparing sampled maps with real ones.

Per organ (`organ_shape`), on the map's own voxel grid (compare maps at one spacing: every surface
measure depends on it):

* ``volume_ml``: voxel count × voxel volume.
* ``x_mm``, ``y_mm``, ``z_mm``: the organ's centroid relative to a landmark, world RAS+ mm (+x the
  patient's right, +y anterior, +z superior). The landmark (`landmark_mm`) is the midpoint of the
  two kidneys' centroids: present in every abdominal map, whatever the field of view, and the body
  outline is not labelled in the TotalSegmentator maps. Without both kidneys there is no position.
* ``surface_to_volume`` (1/mm): surface area / volume. The surface area is the sum of the surface
  elements of every 2×2×2 voxel neighbourhood (Nikolov et al. 2018, "Deep learning to achieve
  clinically applicable segmentation of head and neck anatomy", as
  `monai.metrics.utils.get_mask_edges` computes them with a spacing), close to a marching-cubes
  area and far closer than counting voxel faces.
* ``sphericity``: ``π^(1/3) (6 V)^(2/3) / A`` (Wadell 1935): 1 for a ball, lower for flat,
  elongated or rough shapes.
* ``solidity`` (compactness): volume / volume of the convex hull of the voxels' corners
  (`scipy.spatial.ConvexHull`): 1 for a convex shape, lower for a curved tube or a lobulated lump.
* ``roughness_mm``: mean symmetric surface distance between the organ and a smoothed copy of it
  (Gaussian of σ = ``smoothing_mm``, thresholded where it keeps the organ's volume); a
  surface-roughness proxy: a ball or a smooth lump hardly moves (a voxelised ball: 0 mm), bumps,
  folds and spikes smaller than σ are flattened and move by about their height.
* ``components``: number of 26-connected components (every speck counts).

`colon_path` checks that the colon is one tube from caecum to rectum (see there). `map_shapes`
measures every organ of `SHAPE_ORGANS` and the colon path of one map; for real maps it can leave out
the organs that the scan's field of view cuts (`CUT_SENSITIVE`, `is_cut`): a liver cut at the
dome has the volume and shape of the cut, not of a liver.

Only the organ's own voxels count: a tumour inside an organ is a cavity here (compare tumour-free
maps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.spatial import ConvexHull, QhullError

from guidegen.evaluation.mask_arguments import check_class_names, check_label_volume
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, UNKNOWN

#: The organs whose shape is compared (issue 24): solid organs, stomach, colon, aorta, small bowel.
SHAPE_ORGANS: tuple[str, ...] = (
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "pancreas",
    "stomach",
    "colon",
    "aorta",
    "small_bowel",
)
#: The features of one organ, in table order.
SHAPE_FEATURES: tuple[str, ...] = (
    "volume_ml",
    "x_mm",
    "y_mm",
    "z_mm",
    "surface_to_volume",
    "sphericity",
    "solidity",
    "roughness_mm",
    "components",
)
#: Organs whose statistics a real map's field of view falsifies when it cuts them (`map_shapes`'
#: ``skip_cut``). The tubes (colon, small bowel, aorta) are not here: an abdomen–pelvis scan cuts
#: the aorta always and the rectum often, and sampled maps are cut the same way.
CUT_SENSITIVE: tuple[str, ...] = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "stomach")
#: σ of the Gaussian that smooths an organ for ``roughness_mm``, mm (one voxel of the mask sampler).
SMOOTHING_MM = 8.0
#: A colon whose largest component holds at least this share of its voxels is "in one piece"
#: (the component check's threshold, `guidegen.evaluation.mask_anatomy.MIN_MAIN_FRACTION`).
ONE_PIECE_FRACTION = 0.95
#: The colon path's side checks: a point is "on the left / right" when it lies this share of the
#: colon's half width beyond its x centre.
SIDE_FRACTION = 0.3

_FULL = np.ones((3, 3, 3), dtype=bool)


def _crop(mask: np.ndarray, pad: int) -> np.ndarray:
    """The mask's bounding box with ``pad`` background voxels on every side."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return np.pad(mask[box], pad)


def surface_area_mm2(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Surface area of a binary mask, mm² (2×2×2 surface elements, see the module docstring)."""
    if not mask.any():
        return 0.0
    from monai.metrics.utils import get_mask_edges  # monai's import takes seconds: only when measuring

    crop = _crop(mask, 1)  # the elements at the grid edge need the background beyond it
    tensor = torch.from_numpy(crop)
    spacing = tuple(float(s) for s in spacing)
    _, _, areas, _ = get_mask_edges(tensor, tensor, crop=False, spacing=spacing)
    return float(areas.double().sum())


def solidity(mask: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Volume / convex hull volume (the hull of the corners of the mask's border voxels)."""
    if not mask.any():
        return None
    crop = _crop(mask, 1)
    scale = np.asarray(spacing, dtype=np.float64)
    border = np.argwhere(crop & ~ndimage.binary_erosion(crop)) * scale
    corners = (np.indices((2, 2, 2)).reshape(3, -1).T - 0.5) * scale
    try:
        # The hull of every border voxel's corners is the hull of the centres' hull vertices plus
        # the corner offsets (a Minkowski sum): far fewer points.
        vertices = border[ConvexHull(border).vertices]
    except QhullError:
        vertices = border  # centres in a plane or on a line (a sheet one voxel thick): all of them
    hull = ConvexHull((vertices[:, None, :] + corners[None]).reshape(-1, 3))
    return float(crop.sum() * float(np.prod(spacing)) / hull.volume)


def roughness_mm(mask: np.ndarray, spacing: Sequence[float], smoothing_mm: float = SMOOTHING_MM) -> float | None:
    """Mean symmetric surface distance between a mask and its smoothed copy of equal volume, mm."""
    if not mask.any():
        return None
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    spacing = tuple(float(s) for s in spacing)
    margin = int(math.ceil(3 * smoothing_mm / min(spacing))) + 1
    crop = _crop(mask, margin)
    field = ndimage.gaussian_filter(crop.astype(np.float32), sigma=[smoothing_mm / s for s in spacing]).ravel()
    # Thresholding at the level that keeps the volume (not at 0.5) leaves a ball a ball: smoothing
    # alone would shrink every convex shape by about σ² × mean curvature, and hide the roughness.
    voxels = int(crop.sum())
    level = np.partition(field, field.size - voxels)[field.size - voxels]
    smooth = (field >= level).reshape(crop.shape)
    edges_raw, edges_smooth = get_mask_edges(crop, smooth, crop=False)
    there = get_surface_distance(edges_raw, edges_smooth, spacing=spacing)
    back = get_surface_distance(edges_smooth, edges_raw, spacing=spacing)
    return float(np.concatenate([np.asarray(there).ravel(), np.asarray(back).ravel()]).mean())


def is_cut(mask: np.ndarray, array: np.ndarray) -> bool:
    """Whether an organ touches a face of the grid or a voxel of unknown class (outside the scan)."""
    if not mask.any():
        return False
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    if any(b.start == 0 or b.stop == n for b, n in zip(box, mask.shape)):
        return True
    grown = tuple(slice(b.start - 1, b.stop + 1) for b in box)
    near = ndimage.binary_dilation(mask[grown], structure=_FULL)
    return bool((array[grown][near] == UNKNOWN).any())


def component_count(mask: np.ndarray) -> int:
    """Number of 26-connected components."""
    return int(ndimage.label(mask, structure=_FULL)[1]) if mask.any() else 0


def organ_shape(
    mask: np.ndarray,
    labels: Volume,
    landmark: np.ndarray | None,
    smoothing_mm: float = SMOOTHING_MM,
) -> dict[str, float | None]:
    """The `SHAPE_FEATURES` of one organ mask on ``labels``' grid (``None`` where not measurable).

    Args:
        mask: (X, Y, Z) bool, the organ's voxels.
        labels: the map it comes from (its affine gives spacing and world positions).
        landmark: world RAS+ mm of the position landmark (`landmark_mm`), or ``None``.
        smoothing_mm: σ of the roughness smoothing.
    """
    features: dict[str, float | None] = dict.fromkeys(SHAPE_FEATURES)
    voxels = int(mask.sum())
    features["components"] = float(component_count(mask))
    if voxels == 0:
        features["volume_ml"] = 0.0
        return features
    spacing = labels.spacing
    volume_mm3 = voxels * float(np.prod(spacing))
    area = surface_area_mm2(mask, spacing)
    features["volume_ml"] = volume_mm3 / 1000.0
    if landmark is not None:
        centroid = labels.world_coordinates(np.argwhere(mask).mean(axis=0))
        features["x_mm"], features["y_mm"], features["z_mm"] = (float(v) for v in centroid - landmark)
    features["surface_to_volume"] = area / volume_mm3
    features["sphericity"] = math.pi ** (1 / 3) * (6 * volume_mm3) ** (2 / 3) / area
    features["solidity"] = solidity(mask, spacing)
    features["roughness_mm"] = roughness_mm(mask, spacing, smoothing_mm)
    return features


def landmark_mm(labels: Volume) -> np.ndarray | None:
    """Midpoint of the right and left kidneys' centroids, world RAS+ mm; ``None`` without both."""
    array = np.asarray(labels.array)
    centroids = []
    for name in ("kidney_right", "kidney_left"):
        index = np.argwhere(array == ID[name])
        if not len(index):
            return None
        centroids.append(labels.world_coordinates(index.mean(axis=0)))
    return (centroids[0] + centroids[1]) / 2.0


@dataclass(frozen=True)
class ColonPath:
    """Continuity of the colon (`colon_path`).

    Attributes:
        components: 26-connected components of the colon.
        main_fraction: share of the colon's voxels in the largest component.
        one_piece: ``main_fraction >= ONE_PIECE_FRACTION``.
        path_mm: length of the geodesic path between the two ends of the largest component's tube
            (rectum and caecum), mm.
        path_ordered: that path runs rectum → left side → flexures → right side → caecum (see
            `colon_path`).
        failed: the first ordering condition that fails (``None`` when ordered).
    """

    components: int
    main_fraction: float
    one_piece: bool
    path_mm: float
    path_ordered: bool
    failed: str | None

    @property
    def continuous(self) -> bool:
        """One piece and one ordered tube from caecum to rectum."""
        return self.one_piece and self.path_ordered

    def to_dict(self) -> dict[str, Any]:
        return {
            "components": self.components,
            "main_fraction": round(self.main_fraction, 4),
            "one_piece": self.one_piece,
            "path_mm": round(self.path_mm, 1),
            "path_ordered": self.path_ordered,
            "continuous": self.continuous,
            "failed": self.failed,
        }


def _geodesic(points: np.ndarray, spacing: np.ndarray, start: int, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimal-path costs and predecessors from ``start`` over 26-neighbouring voxels; a step costs
    its length (mm) divided by the mean ``depth`` (mm from the border) of its two voxels."""
    low = points.min(axis=0) - 1
    local = points - low
    index = np.full(local.max(axis=0) + 2, -1, dtype=np.int64)
    index[tuple(local.T)] = np.arange(len(points))
    rows, cols, weights = [], [], []
    for offset in np.argwhere(_FULL) - 1:
        if tuple(offset) <= (0, 0, 0):
            continue  # each undirected edge once
        neighbour = index[tuple((local + offset).T)]
        found = neighbour >= 0
        rows.append(np.nonzero(found)[0])
        cols.append(neighbour[found])
        step = float(np.linalg.norm(offset * spacing))
        weights.append(step * 2.0 / (depth[found] + depth[neighbour[found]]))
    graph = sparse.csr_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(len(points), len(points))
    )
    distance, predecessors = csgraph.dijkstra(graph, directed=False, indices=start, return_predecessors=True)
    return distance, predecessors


def colon_path(mask: np.ndarray, labels: Volume) -> ColonPath | None:
    """Whether the colon is one tube from caecum to rectum.

    On the largest 26-connected component, the two ends of the tube are found by a double sweep of
    geodesic distances through its voxels (the voxel farthest from the lowest voxel, then the voxel
    farthest from that one): in a whole colon they are the caecum and the rectum, and the caecum is
    the end on the patient's right. Walking the geodesic path from the rectum end to the caecum end,
    the colon is ordered when: both ends lie in the lower half of the colon's height; the caecum
    end lies on the right side (as below; a mirrored colon's right end is its rectum); the path
    reaches the left side (x ≤ centre − ``SIDE_FRACTION`` × half width: descending colon) before it
    last visits the right side (x ≥ centre + ``SIDE_FRACTION`` × half width: ascending colon); and
    its highest point (the flexures / transverse colon) lies between those two visits, in the upper
    half. A colon drawn as scattered
    pieces, a lump, a ring without ends or a tube that turns back fails one of these.

    Args:
        mask: (X, Y, Z) bool colon voxels on ``labels``' grid (canonical or not: world axes decide).
        labels: the map (affine).

    Returns:
        `ColonPath`, or ``None`` without colon voxels.
    """
    if not mask.any():
        return None
    components, count = ndimage.label(mask, structure=_FULL)
    sizes = np.bincount(components.ravel())[1:]
    main = int(np.argmax(sizes)) + 1
    points = np.argwhere(components == main)
    world = labels.world_coordinates(points)
    spacing = np.asarray(labels.spacing)
    # Walking the tube's middle: loops that touch at 8 mm are joined through a thin neck, which a
    # cost of 1 / depth makes dear, so the path keeps to the lumen (Deschamps & Cohen 2001).
    depth = ndimage.distance_transform_edt(np.pad(components == main, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    depth = depth[tuple(points.T)]
    cost, _ = _geodesic(points, spacing, int(np.argmin(world[:, 2])), depth)
    first = int(np.argmax(cost))
    cost, predecessors = _geodesic(points, spacing, first, depth)
    second = int(np.argmax(cost))
    path = [second]
    while path[-1] != first:
        path.append(int(predecessors[path[-1]]))
    track = world[path[::-1]]  # first end → second end
    if track[0, 0] > track[-1, 0]:
        track = track[::-1]  # from the rectum (left end) to the caecum (right end)
    x_low, x_high = float(world[:, 0].min()), float(world[:, 0].max())
    z_mid = float(world[:, 2].min() + world[:, 2].max()) / 2.0
    centre, half = (x_low + x_high) / 2.0, (x_high - x_low) / 2.0
    left = np.nonzero(track[:, 0] <= centre - SIDE_FRACTION * half)[0]
    right = np.nonzero(track[:, 0] >= centre + SIDE_FRACTION * half)[0]
    top = int(np.argmax(track[:, 2]))
    failed = None
    if max(track[0, 2], track[-1, 2]) >= z_mid:
        failed = "an end of the tube is not in the lower half"
    elif track[-1, 0] < centre + SIDE_FRACTION * half:
        failed = "no end on the patient's right side (caecum)"
    elif not len(left) or not len(right) or left[0] >= right[-1]:
        failed = "does not run from the left side to the right side"
    elif not left[0] <= top <= right[-1] or track[top, 2] < z_mid:
        failed = "does not rise to the flexures between the left and right sides"
    fraction = float(sizes[main - 1]) / float(sizes.sum())
    return ColonPath(
        components=int(count),
        main_fraction=fraction,
        one_piece=fraction >= ONE_PIECE_FRACTION,
        path_mm=float(np.linalg.norm(np.diff(track, axis=0), axis=1).sum()),
        path_ordered=failed is None,
        failed=failed,
    )


@dataclass(frozen=True)
class MapShape:
    """Shape features of one label map: organ → feature → value, and the colon's continuity."""

    organs: dict[str, dict[str, float | None]]
    colon: ColonPath | None
    spacing: tuple[float, float, float]
    cut: tuple[str, ...] = ()  # organs left out because the field of view cuts them

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacing_mm": list(self.spacing),
            "left_out_cut": list(self.cut),
            "organs": {
                o: {k: (None if v is None else round(v, 4)) for k, v in f.items()} for o, f in self.organs.items()
            },
            "colon": None if self.colon is None else self.colon.to_dict(),
        }


def map_shapes(
    labels: Volume,
    organs: Sequence[str] = SHAPE_ORGANS,
    smoothing_mm: float = SMOOTHING_MM,
    skip_cut: Sequence[str] = (),
) -> MapShape:
    """`organ_shape` of every organ in ``organs`` and `colon_path` of one label map (GuideGen ids).

    Organs without voxels get ``volume_ml = 0`` and no other feature; classes not annotated in the
    map (``labels.meta["annotated"]``, when given) are left out, and so are the organs of
    ``skip_cut`` that `is_cut` finds cut (real maps: `CUT_SENSITIVE`; sampled maps: none, a cut
    organ is a fault of the sample).

    Raises:
        ValueError: ``labels`` not a label `Volume`, or unknown class names.
    """
    array = check_label_volume(labels, "labels")
    organs = check_class_names(organs, NAMES[1:], "organs")
    annotated = labels.meta.get("annotated")
    landmark = landmark_mm(labels)
    shapes = {}
    cut = []
    for name in organs:
        if annotated is not None and name not in annotated:
            continue
        mask = array == ID[name]
        if name in skip_cut and is_cut(mask, array):
            cut.append(name)
            continue
        shapes[name] = organ_shape(mask, labels, landmark, smoothing_mm)
    colon = None
    if "colon" in organs and (annotated is None or "colon" in annotated):
        colon = colon_path(array == ID["colon"], labels)
    return MapShape(organs=shapes, colon=colon, spacing=labels.spacing, cut=tuple(cut))
