from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from guidegen.errors import InputError, OutputExistsError
from guidegen.io.nifti import read_nifti, write_nifti
from guidegen.io.volume import Volume, canonical


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _save_zero_spacing(path):
    """A header whose sform has an all-zero first row (nibabel refuses to write one, so patch bytes)."""
    path = path.with_suffix("")  # .nii, uncompressed, so the header bytes can be patched
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[280:296] = np.zeros(4, "<f4").tobytes()  # srow_x
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_text("hello"), p)[1], "not a readable NIfTI"),
        (lambda p: _save(p, np.zeros((8, 8), np.float32)), "2-D image"),
        (lambda p: _save(p, np.zeros((4, 4, 4, 3), np.float32)), "not a time series"),
        (lambda p: _save(p, np.full((4, 4, 4), np.nan, np.float32)), "NaN"),
        (_save_zero_spacing, "singular"),
        (lambda p: _save(p, np.zeros((4, 4, 4), np.float32), np.diag([1e4, 1, 1, 1.0])), "implausible voxel spacing"),
    ],
)
def test_bad_ct_files(tmp_path, make, problem):
    path = make(tmp_path / "bad.nii.gz")
    with pytest.raises(InputError) as info:
        read_nifti(path)
    message = str(info.value)
    assert problem in message and str(path) in message and "\n" not in message


def test_truncated_gzip(tmp_path, real):
    src = real / "totalseg-example-a" / "ct.nii.gz"
    data = src.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated|not a readable"):
        read_nifti(bad)
    # A gzip whose inflated content is cut inside the header.
    bad2 = tmp_path / "short.nii.gz"
    bad2.write_bytes(gzip.compress(gzip.decompress(data)[:200]))
    with pytest.raises(InputError):
        read_nifti(bad2)


@pytest.mark.parametrize(
    "data, problem",
    [
        (np.full((4, 4, 4), 1.5, np.float32), "non-integer"),
        (np.full((4, 4, 4), -1, np.int16), "negative"),
        (np.full((4, 4, 4), 1000, np.int16), "more than a label map can hold"),
    ],
)
def test_bad_label_files(tmp_path, data, problem):
    path = _save(tmp_path / "labels.nii.gz", data)
    with pytest.raises(InputError, match=problem):
        read_nifti(path, kind="labels")


def test_float_labels_with_integer_values_are_accepted(real):
    # The MSD colon mask is stored as float32 0/1: integral floats are fine.
    vol = read_nifti(real / "masks-only" / "msd_colon_050_tumour.nii.gz", kind="labels")
    assert vol.array.dtype == np.uint8 and set(np.unique(vol.array)) == {0, 1}


def test_reading_a_directory_or_other_extension(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        read_nifti(tmp_path)
    other = tmp_path / "x.png"
    other.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="not a NIfTI"):
        read_nifti(other)
    shutil.rmtree(tmp_path)


def test_real_scans_become_canonical_ras(real):
    # msd-spleen-8 and the AMOS slices are stored LAS / LAI; inside GuideGen everything is RAS.
    for case in ("msd-spleen-8", "amos-0001-slices", "totalseg-example-a"):
        raw = nib.load(str(real / case / "ct.nii.gz"))
        vol = read_nifti(real / case / "ct.nii.gz")
        assert vol.orientation == "RAS"
        assert sorted(vol.shape) == sorted(raw.shape)
        # Same world position for the same voxel content: the centre of mass of the body in mm.
        raw_data = np.asanyarray(raw.dataobj).astype(np.float32)
        c_raw = nib.affines.apply_affine(raw.affine, np.argwhere(raw_data > -300).mean(0))
        c_new = vol.world_coordinates(np.argwhere(vol.array > -300).mean(0))
        np.testing.assert_allclose(c_raw, c_new, atol=1e-3)


def test_canonical_is_lossless_for_labels(real):
    raw = nib.load(str(real / "msd-spleen-8" / "labels.nii.gz"))
    vol = read_nifti(real / "msd-spleen-8" / "labels.nii.gz", kind="labels")
    assert vol.array.dtype == np.uint8
    assert int(vol.array.sum()) == int(np.asanyarray(raw.dataobj).sum())
    assert vol.spacing == pytest.approx((0.785, 0.785, 7.5), abs=1e-3)


def test_liver_is_on_the_patients_right(real):
    # RAS+: x grows towards the patient's right, so the liver's x is larger than the spleen's.
    labels = read_nifti(real / "totalseg-example-a" / "labels.nii.gz", kind="labels")
    liver = labels.world_coordinates(np.argwhere(labels.array == 5).mean(0))
    spleen = labels.world_coordinates(np.argwhere(labels.array == 1).mean(0))
    assert liver[0] > spleen[0] + 100


def test_write_round_trip_dtypes(tmp_path, real):
    ct = read_nifti(real / "totalseg-example-a" / "ct.nii.gz")
    out = write_nifti(ct, tmp_path / "ct.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.int16
    back = read_nifti(out)
    assert back.same_grid(ct)
    # int32 source with values up to 3382 HU: clipped to the 12-bit CT range, nothing else changes.
    np.testing.assert_array_equal(back.array, np.clip(ct.array, -1024, 3071))
    labels = read_nifti(real / "totalseg-example-a" / "labels.nii.gz", kind="labels")
    write_nifti(labels, tmp_path / "labels.nii.gz")
    assert nib.load(str(tmp_path / "labels.nii.gz")).get_data_dtype() == np.uint8


def test_write_refuses_to_overwrite(tmp_path):
    vol = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    write_nifti(vol, tmp_path / "a.nii.gz")
    with pytest.raises(OutputExistsError):
        write_nifti(vol, tmp_path / "a.nii.gz")
    write_nifti(vol, tmp_path / "a.nii.gz", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]  # no temporary left behind


def test_canonical_flip_keeps_world_positions():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    affine = np.diag([-2.0, 1.0, -3.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    vol = canonical(Volume(data, affine))
    assert vol.orientation == "RAS"
    for idx in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:
        world = Volume(data, affine).world_coordinates(np.array(idx))
        new_idx = np.round(np.linalg.inv(vol.affine) @ np.append(world, 1))[:3].astype(int)
        assert vol.array[tuple(new_idx)] == data[idx]
