"""The bank of real tumour shapes that `TumourInsertion` draws from (`TumourShape`).

Each shape is one connected component of a real tumour mask (LiTS, MSD colon by default), kept with
its signed distance map so that it can be rotated and resized shape-based.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from guidegen.data.ops.base import CONNECTIVITY_26, surface_points
from guidegen.errors import InputError
from guidegen.grids.geometry import longest_diameter_mm
from guidegen.grids.resample import resample_labels, signed_distance
from guidegen.io.volume import Volume
from guidegen.paths import default_data_dir

#: Real tumour masks used by `default_tumour_shapes`: (file below the data folder, tumour id).
DEFAULT_TUMOUR_SOURCES: tuple[tuple[str, int], ...] = (
    ("lits-117-crop/labels.nii.gz", 2),  # LiTS volume 117: several liver lesions (spacing unknown)
    ("masks-only/msd_colon_050_tumour.nii.gz", 1),  # MSD Task10 colon case 50: a colon primary
)


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
        diameter = longest_diameter_mm(surface_points(crop), np.diag([*spacing_t, 1.0]))
        return cls(
            crop,
            spacing_t,
            source,
            signed_distance(crop, spacing_t),  # type: ignore[arg-type]
            tuple(float(c) for c in centroid),
            diameter,
            radius,
        )  # type: ignore[arg-type]


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
        components, n = ndimage.label(crop, structure=CONNECTIVITY_26)
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


@functools.lru_cache(maxsize=4)
def _default_bank(data_dir: str) -> tuple[TumourShape, ...]:
    root = Path(data_dir)
    return tuple(load_tumour_shapes([(root / rel, i) for rel, i in DEFAULT_TUMOUR_SOURCES], root=root))


def default_tumour_shapes(data_dir: str | Path | None = None) -> list[TumourShape]:
    """The default shape bank: the LiTS 117 liver lesions and the MSD colon 50 primary.

    Loaded once per folder and cached (reading the colon mask takes about a second).

    Args:
        data_dir: folder holding ``lits-117-crop/`` and ``masks-only/``; default `guidegen.paths.default_data_dir`.

    Raises:
        InputError: the folder or a file is missing.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise InputError(root, "tumour shape folder not found; pass data_dir= the folder holding data/real")
    return list(_default_bank(str(root.resolve())))
