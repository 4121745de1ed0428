"""NIfTI (.nii, .nii.gz) reading and writing through nibabel, with the checks users need."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from guidegen.errors import InputError
from guidegen.io.atomic import atomic_file
from guidegen.io.validate import check_affine, check_ct_values, check_shape, labels_to_integers
from guidegen.io.volume import HU_MAX, HU_MIN, Volume, VolumeKind, canonical

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Deflate never compresses better than about 1032:1: a .nii.gz cannot hold more than this many
#: bytes of data per byte of file.
MAX_DEFLATE_RATIO = 1032


@contextlib.contextmanager
def quiet_nibabel() -> Iterator[None]:
    """Keep nibabel from logging the header fixes it tries to stderr: our errors say what is wrong."""
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def is_nifti(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | Path, kind: VolumeKind = "ct", reorient: bool = True) -> Volume:
    """Read a NIfTI file into a canonical (RAS+) `Volume`.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        kind: ``"ct"`` keeps intensities as float32 HU; ``"labels"`` checks for non-negative
            integer ids and returns uint8.
        reorient: reorder axes to RAS+ (lossless). Only turn off to inspect a file as stored.

    Raises:
        InputError: missing, unreadable, truncated, not 3-D, bad header, bad values.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file (.nii or .nii.gz)")
    if not is_nifti(path):
        raise InputError(path, "is not a NIfTI file (expected .nii or .nii.gz)")
    try:
        with quiet_nibabel():
            image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(path, f"is a {type(image).__name__}, not a NIfTI image")
        shape = check_shape(path, image.shape)
        _check_data_size(path, image.header, shape)
        zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
        if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
            raise InputError(
                path,
                f"the header's voxel size {tuple(float(z) for z in zooms)} is zero, negative or not a number (affine "
                "singular)",
            )
        check_affine(path, image.affine)
        with quiet_nibabel():
            data = np.asanyarray(image.dataobj)
    except InputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"is truncated or corrupt ({exc.__class__.__name__}: {exc})") from None
    except MemoryError:
        raise InputError(path, "is too large to load into memory") from None
    except Exception as exc:  # nibabel raises many types for bad headers; all mean "not readable"
        raise InputError(path, f"is not a readable NIfTI file ({exc.__class__.__name__}: {exc})") from None
    data = data.reshape(shape)
    if kind == "labels":
        array = labels_to_integers(path, data)
    else:
        check_ct_values(path, data)
        array = data.astype(np.float32, copy=False)
    volume = Volume(
        array=array,
        affine=image.affine,
        kind=kind,
        meta={"source": str(path), "orientation_on_disk": "".join(nib.aff2axcodes(image.affine))},
    )
    return canonical(volume) if reorient else volume


def _check_data_size(path: Path, header: nib.Nifti1Header, shape: tuple[int, int, int]) -> None:
    """Refuse a header that declares more voxel data than the file can hold, before any is allocated."""
    needed = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    capacity = size * MAX_DEFLATE_RATIO + 1024 if compressed else size
    if needed > capacity:
        raise InputError(
            path,
            f"is truncated or corrupt: its header declares {needed:,} bytes of voxel data, the file "
            f"holds {'at most ' if compressed else ''}{capacity:,}",
        )


def to_nifti_image(volume: Volume, ct_dtype: np.dtype | str | None = None) -> nib.Nifti1Image:
    """CT as int16 HU (clipped to the 12-bit CT range), labels as uint8; qform and sform set.

    ``ct_dtype``: store a CT's values as they are in this dtype instead (no rounding or clipping
    beyond the cast), for outputs that must equal an input file voxel for voxel (`guidegen edit`).
    """
    if volume.kind == "labels":
        data = volume.array.astype(np.uint8)
    elif ct_dtype is not None:
        data = np.asarray(volume.array).astype(ct_dtype)
    else:
        data = np.clip(np.rint(volume.array), HU_MIN, HU_MAX).astype(np.int16)
    image = nib.Nifti1Image(data, volume.affine)
    image.set_qform(volume.affine, code=1)  # scanner coordinates
    image.set_sform(volume.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if volume.kind == "ct":
        image.header["descrip"] = b"GuideGen CT, Hounsfield units"
    else:
        image.header["descrip"] = b"GuideGen label map"
    return image


def write_nifti(
    volume: Volume, path: str | Path, overwrite: bool = False, ct_dtype: np.dtype | str | None = None
) -> Path:
    """Write atomically (temporary name, then rename). Refuses to overwrite unless asked.
    ``ct_dtype``: see `to_nifti_image`."""
    path = Path(path)
    if not is_nifti(path):
        raise InputError(path, "output name must end in .nii or .nii.gz")
    with atomic_file(path, overwrite) as tmp:
        nib.save(to_nifti_image(volume, ct_dtype), str(tmp))
    return path
