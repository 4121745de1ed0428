"""`Volume`: a 3-D array with its voxel-to-world affine, in GuideGen's canonical orientation.

World coordinates are RAS+ millimetres as NIfTI and nibabel define them (x grows towards the
patient's right, y towards anterior, z towards superior). `canonical()` reorders and flips the array
axes, without resampling, so that they follow x, y, z in that order: ``array[:, :, k]`` is axial
slice k counted from the feet upwards, and ``nibabel.aff2axcodes`` reads "RAS". DICOM's LPS patient
coordinates are converted to RAS on reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import nibabel as nib
import numpy as np

VolumeKind = Literal["ct", "labels"]

#: HU range stored for CT: air (-1024) to dense bone / metal clip (3071), the 12-bit CT range.
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class Volume:
    """A 3-D image or label map and its affine.

    Attributes:
        array: voxel values, shape (X, Y, Z). CT: Hounsfield units (any numeric dtype inside,
            int16 when written). Labels: non-negative integer class ids.
        affine: (4, 4) voxel index → world RAS+ millimetres.
        kind: ``"ct"`` or ``"labels"``; picks interpolation (linear vs label-aware) and output dtype.
        meta: free-form provenance (source path, vocabulary, annotated classes …).
    """

    array: np.ndarray
    affine: np.ndarray
    kind: VolumeKind = "ct"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3-D (X, Y, Z), got shape {self.array.shape}")
        if self.kind not in ("ct", "labels"):
            raise ValueError(f"kind must be 'ct' or 'labels', got {self.kind!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"`` (nibabel's convention: where each axis points)."""
        return "".join(nib.orientations.aff2axcodes(self.affine))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """The same geometry with another array (and optionally other fields)."""
        changes.setdefault("meta", dict(self.meta))
        return replace(self, array=array, **changes)

    def same_grid(self, other: Volume, atol: float = 1e-3) -> bool:
        """Whether both volumes share shape and affine (to ``atol`` mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def world_coordinates(self, index: np.ndarray) -> np.ndarray:
        """Voxel indices (..., 3) → RAS+ mm (..., 3)."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]


def canonical(volume: Volume) -> Volume:
    """Reorder and flip axes (no resampling) so the affine is closest to RAS+.

    Equivalent to ``nibabel.as_closest_canonical``: lossless, and labels stay exact.
    """
    ornt = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return volume
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape)
    return replace(volume, array=np.ascontiguousarray(array), affine=affine, meta=dict(volume.meta))


def reorient_like(volume: Volume, affine: np.ndarray) -> Volume:
    """Reorder and flip axes (no resampling) so the array's axes point as ``affine``'s do.

    The inverse of `canonical` for a file stored with ``affine``: ``reorient_like(canonical(v),
    v.affine)`` gives back ``v``'s array order, shape and affine. Where the result's affine agrees
    with ``affine`` to 1e-4 mm it is ``affine`` itself, so a writer copies the input's header exactly.
    """
    affine = np.asarray(affine, dtype=np.float64)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(volume.affine), nib.orientations.io_orientation(affine)
    )
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        out_array, out_affine = volume.array, volume.affine
    else:
        out_array = np.ascontiguousarray(nib.orientations.apply_orientation(volume.array, transform))
        out_affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape)
    if np.allclose(out_affine, affine, atol=1e-4):
        out_affine = affine.copy()
    return replace(volume, array=out_array, affine=out_affine, meta=dict(volume.meta))


class LabelInfo(Protocol):
    """What writers need of a label class; `guidegen.labels.vocabulary.LabelClass` has it.

    Defined here because io sits below the label vocabulary: callers pass the classes in.
    """

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def display(self) -> str: ...
