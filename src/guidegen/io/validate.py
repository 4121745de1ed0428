"""Checks shared by every reader: each failure is an `InputError` naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from guidegen.errors import InputError
from guidegen.io.volume import Volume

#: Plausible voxel sizes for clinical CT, mm. Outside this a header is almost surely broken.
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 100.0
#: Refuse volumes that would not fit in memory as float32 on a laptop (2**30 voxels = 4 GB).
MAX_VOXELS = 2**30
#: Largest label id we accept in any source vocabulary (TotalSegmentator uses up to 117).
MAX_LABEL_ID = 255


def check_affine(path: str | Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)):
        raise InputError(path, "the header's affine contains NaN or infinite values")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "the header's affine is singular (a voxel size of zero?)")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(
            path,
            f"implausible voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm "
            f"(expected {MIN_SPACING_MM}-{MAX_SPACING_MM} mm)",
        )


def check_shape(path: str | Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Accept 3-D, or 4-D/5-D with trailing singleton axes; refuse 2-D images and huge volumes."""
    dims = [int(s) for s in shape]
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) < 3:
        raise InputError(path, f"is a {len(dims)}-D image of shape {tuple(shape)}, expected a 3-D volume")
    if len(dims) > 3:
        raise InputError(
            path, f"has shape {tuple(shape)}: expected a 3-D volume, not a time series or multi-channel image"
        )
    if min(dims) < 1:
        raise InputError(path, f"has an empty axis (shape {tuple(shape)})")
    if int(np.prod(dims, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(
            path, f"is too large ({tuple(dims)} = {np.prod(dims, dtype=np.int64):,} voxels, limit {MAX_VOXELS:,})"
        )
    return dims[0], dims[1], dims[2]


def check_ct_values(path: str | Path, array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(path, f"has voxel type {array.dtype}, expected real numbers (Hounsfield units)")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(path, "contains NaN or infinite intensities")
    if (
        array.size
        and np.issubdtype(array.dtype, np.floating)
        and float(np.abs(array).max()) > float(np.finfo(np.float32).max)
    ):
        raise InputError(
            path, f"has intensities up to {float(np.abs(array).max()):.3g}, too large for Hounsfield units"
        )


def labels_to_integers(path: str | Path, array: np.ndarray) -> np.ndarray:
    """Return the label array as uint8 (or uint16 for large vocabularies), refusing bad values."""
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(path, f"has voxel type {array.dtype}, expected integer label ids")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(path, "label map contains NaN or infinite values")
        if not np.array_equal(array, np.round(array)):
            raise InputError(path, "label map has non-integer values (is this an image rather than labels?)")
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    if lo < 0:
        raise InputError(path, f"label map has negative ids (minimum {lo})")
    if hi > MAX_LABEL_ID:
        raise InputError(
            path, f"label map has ids up to {hi}, more than a label map can hold ({MAX_LABEL_ID}); is this a CT?"
        )
    return array.astype(np.uint8)


def check_same_grid(ct: Volume, labels: Volume, ct_path: str | Path, labels_path: str | Path) -> None:
    if not ct.same_grid(labels, atol=1e-2):
        raise InputError(
            labels_path,
            f"is not on the CT's grid ({ct_path}): shape {labels.shape} vs {ct.shape}, "
            f"spacing {tuple(round(s, 3) for s in labels.spacing)} vs {tuple(round(s, 3) for s in ct.spacing)} mm, "
            f"orientation {labels.orientation} vs {ct.orientation}",
        )
