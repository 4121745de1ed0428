"""DICOM series and DICOM SEG reading, checked on the real data in data/real (see SOURCES.md)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from guidegen.errors import InputError
from guidegen.io.dicom import list_dicom_series, read_dicom_series
from guidegen.io.dicom_seg import read_dicom_seg
from guidegen.io.nifti import read_nifti

REAL = Path(__file__).resolve().parents[2] / "data" / "real"
EXAMPLE_B = REAL / "totalseg-example-b"
DCMQI = REAL / "dcmqi-ct-3slice"
DCMQI_SEG = DCMQI / "liver-seg.dcm"
DCMQI_SERIES_UID = "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"
TOTALSEG_LIVER = 5


@pytest.fixture(scope="module")
def example_b():
    return read_dicom_series(EXAMPLE_B / "dicom")


@pytest.fixture(scope="module")
def ct3():
    return read_dicom_series(DCMQI / "ct")


def copy_files(files, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def assert_input_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --- DICOM series -----------------------------------------------------------------------------


def test_example_b_has_the_grid_of_its_nifti_labels(example_b):
    labels = read_nifti(EXAMPLE_B / "labels.nii.gz", kind="labels")
    assert example_b.kind == "ct" and example_b.array.dtype == np.float32
    assert example_b.shape == labels.shape == (512, 512, 20)
    np.testing.assert_allclose(example_b.affine, labels.affine, atol=1e-3)
    np.testing.assert_allclose(example_b.spacing, (0.977, 0.977, 2.0), atol=1e-3)
    assert example_b.orientation == "RAS"
    assert example_b.meta["source"] == str(EXAMPLE_B / "dicom")
    assert example_b.meta["modality"] == "CT"
    assert example_b.meta["frame_of_reference_uid"].startswith("1.3.12.2.1107.5.1.4.60064")


def test_example_b_values_are_hounsfield_units(example_b):
    array = example_b.array
    air = array[array < -900]
    assert air.size > 0.2 * array.size  # the air around the body and in the lungs
    assert -1030 < float(np.median(air)) < -970
    soft_tissue = (array > 0) & (array < 100)
    assert soft_tissue.mean() > 0.05
    assert array.max() < 3072


def test_example_b_liver_label_lands_on_the_liver(example_b):
    labels = read_nifti(EXAMPLE_B / "labels.nii.gz", kind="labels")
    liver = labels.array == TOTALSEG_LIVER
    assert liver.sum() > 100_000
    mean_hu = float(example_b.array[liver].mean())  # about 89 HU: contrast-enhanced liver
    assert 40 < mean_hu < 200


def test_list_dicom_series():
    (series,) = list_dicom_series(EXAMPLE_B / "dicom")
    assert (series.series_uid, series.description, series.modality, series.n_files) == ("", "CT Body 3.0", "CT", 20)
    (series,) = list_dicom_series(DCMQI / "ct")
    assert (series.series_uid, series.modality, series.n_files) == (DCMQI_SERIES_UID, "CT", 3)


def test_file_names_and_instance_numbers_do_not_set_the_order(tmp_path, example_b):
    files = sorted((EXAMPLE_B / "dicom").iterdir())
    rng = np.random.default_rng(0)
    instance_numbers = rng.permutation(len(files)) + 1
    for k, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        dataset.InstanceNumber = int(instance_numbers[k])
        # Reversed names: sorting by name now gives an order unrelated to the slice positions.
        dataset.save_as(tmp_path / f"{path.name[::-1]}.dcm")
    volume = read_dicom_series(tmp_path)
    assert volume.same_grid(example_b, atol=1e-6)
    np.testing.assert_array_equal(volume.array, example_b.array)


def test_two_series_in_one_folder_must_be_chosen(tmp_path, ct3):
    folder = copy_files([*(EXAMPLE_B / "dicom").iterdir(), *(DCMQI / "ct").iterdir()], tmp_path / "mixed")
    assert {info.series_uid for info in list_dicom_series(folder)} == {"", DCMQI_SERIES_UID}
    with pytest.raises(InputError) as excinfo:
        read_dicom_series(folder)
    message = assert_input_error(excinfo, folder)
    assert DCMQI_SERIES_UID in message and "CT Body 3.0" in message and "20 files" in message

    chosen = read_dicom_series(folder, series_uid=DCMQI_SERIES_UID)
    assert chosen.same_grid(ct3) and np.array_equal(chosen.array, ct3.array)
    assert read_dicom_series(folder, series_uid="").shape == (512, 512, 20)  # example-b's UID is empty
    with pytest.raises(InputError) as excinfo:
        read_dicom_series(folder, series_uid="1.2.3.4")
    assert "1.2.3.4" in assert_input_error(excinfo, folder)


def test_dcmqi_ct_geometry(ct3):
    assert ct3.shape == (512, 512, 3)
    np.testing.assert_allclose(ct3.spacing, (0.810547, 0.810547, 1.0), atol=1e-4)  # positions 1 mm apart
    assert ct3.orientation == "RAS"


# --- DICOM SEG --------------------------------------------------------------------------------


def test_seg_onto_its_ct_covers_the_liver(ct3):
    labels, segments = read_dicom_seg(DCMQI_SEG, reference=ct3)
    assert segments == {1: "Liver"}
    assert labels.kind == "labels" and labels.array.dtype == np.uint8
    assert labels.same_grid(ct3, atol=1e-9)
    liver = labels.array == 1
    assert liver.sum(axis=(0, 1)).min() > 30_000  # about 35 000 pixels in each of the 3 slices
    mean_hu = float(ct3.array[liver].mean())  # about 37 HU (unenhanced liver)
    assert 0 < mean_hu < 100
    # Air in front of the body, inside the field of view; the corners are outside it, padded with
    # -3024 ("anything below -1024 is air", SOURCES.md).
    assert -1024 <= float(ct3.array[236:276, 470:500].mean()) < -950
    assert np.all(ct3.array[:16, :16] <= -1024) and np.all(ct3.array[-16:, -16:] <= -1024)
    assert not liver[:16, :16].any()


def test_seg_on_its_own_grid_and_from_a_folder_agree(ct3):
    on_reference, _ = read_dicom_seg(DCMQI_SEG, reference=ct3)
    own, segments = read_dicom_seg(DCMQI_SEG)
    assert segments == {1: "Liver"}
    assert own.orientation == "RAS" and own.same_grid(ct3, atol=1e-3)
    np.testing.assert_array_equal(own.array, on_reference.array)
    from_folder, _ = read_dicom_seg(DCMQI_SEG, reference_folder=DCMQI / "ct")
    np.testing.assert_array_equal(from_folder.array, on_reference.array)


def write_seg(path: Path, pixels: np.ndarray, segmentation_type: str, **options) -> Path:
    """A DICOM SEG on the 3-slice CT made with highdicom: Liver = segment 1, Spleen = segment 2.

    Args:
        pixels: (frames, rows, columns, segments) for BINARY / FRACTIONAL, (frames, rows, columns)
            of segment numbers for LABELMAP; frames in the order 01, 02, 03.dcm.
    """
    sources = [pydicom.dcmread(source) for source in sorted((DCMQI / "ct").iterdir())]
    for dataset in sources:
        del dataset.SpecificCharacterSet  # empty in these files, and highdicom refuses ''
    n_segments = int(pixels.max()) if pixels.ndim == 3 else pixels.shape[-1]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=code,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label, code in ((1, "Liver", codes.SCT.Liver), (2, "Spleen", codes.SCT.Spleen))[:n_segments]
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="guidegen tests",
        manufacturer_model_name="guidegen tests",
        software_versions="0",
        device_serial_number="0",
        **options,
    )
    seg.save_as(path)
    return path


@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")
def test_overlapping_segments_later_segment_wins(tmp_path, ct3):
    mask = np.zeros((3, 512, 512, 2), dtype=bool)
    mask[:, 100:200, 100:200, 0] = True
    mask[1:, 150:250, 150:250, 1] = True  # overlaps segment 1 in frames 02 and 03
    path = write_seg(tmp_path / "two-segments.dcm", mask, "BINARY")

    on_reference, segments = read_dicom_seg(path, reference=ct3)
    own, _ = read_dicom_seg(path)
    assert segments == {1: "Liver", 2: "Spleen"}
    assert own.same_grid(ct3, atol=1e-3)
    np.testing.assert_array_equal(own.array, on_reference.array)
    counts = np.bincount(on_reference.array.ravel(), minlength=3)
    assert counts[1] == 3 * 100 * 100 - 2 * 50 * 50 and counts[2] == 2 * 100 * 100
    # Frame pixel (row 175, column 175) → RAS voxel (511 - 175, 511 - 175): LPS→RAS flips x and y.
    # Frames 02 and 03 (z = -127.69, -128.69 mm) are slices 1 and 0 after sorting from the feet.
    assert on_reference.array[336, 336].tolist() == [2, 2, 1]


@pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")
@pytest.mark.parametrize("segmentation_type", ["FRACTIONAL", "LABELMAP"])
def test_fractional_and_labelmap_segs(tmp_path, ct3, segmentation_type):
    if segmentation_type == "FRACTIONAL":
        pixels = np.zeros((3, 512, 512, 1), dtype=np.float32)
        pixels[:, 100:200, 100:200] = 0.7
        pixels[:, 100:120, 100:200] = 0.3  # below one half: outside
        options = {"fractional_type": "PROBABILITY"}
    else:
        pixels = np.zeros((3, 512, 512), dtype=np.uint8)
        pixels[:, 120:200, 100:200] = 1
        options = {}
    path = write_seg(tmp_path / "seg.dcm", pixels, segmentation_type, **options)
    on_reference, segments = read_dicom_seg(path, reference=ct3)
    own, _ = read_dicom_seg(path)
    assert segments == {1: "Liver"}  # a label map's "Background" segment 0 is not a label
    assert own.same_grid(ct3, atol=1e-3)
    np.testing.assert_array_equal(own.array, on_reference.array)
    assert on_reference.array.sum(axis=(0, 1)).tolist() == [80 * 100] * 3


@pytest.mark.parametrize(
    ("shift_mm", "problem"),
    [
        ((0.4 * 0.810547, 0, 0), "does not fall on the grid"),  # 0.4 pixel sideways
        ((0, 0, 0.5), "does not fall on the grid"),  # half a slice
        ((0, 0, 1.0), "outside"),  # one whole slice: the top frame has no slice to go to
    ],
)
def test_seg_off_the_reference_grid(ct3, shift_mm, problem):
    affine = ct3.affine.copy()
    affine[:3, 3] += shift_mm
    with pytest.raises(InputError) as excinfo:
        read_dicom_seg(DCMQI_SEG, reference=replace(ct3, affine=affine))
    assert problem in assert_input_error(excinfo, DCMQI_SEG)


def test_seg_with_another_frame_of_reference(ct3):
    other = replace(ct3, meta={**ct3.meta, "frame_of_reference_uid": "1.2.3.4"})
    with pytest.raises(InputError) as excinfo:
        read_dicom_seg(DCMQI_SEG, reference=other)
    assert "FrameOfReferenceUID" in assert_input_error(excinfo, DCMQI_SEG)


@pytest.mark.parametrize("name", ["not-there.dcm", "ct/01.dcm"])
def test_seg_bad_files(name):
    path = DCMQI / name
    with pytest.raises(InputError) as excinfo:
        read_dicom_seg(path)
    assert_input_error(excinfo, path)


# --- bad series -------------------------------------------------------------------------------


def test_missing_and_empty_folders(tmp_path):
    for folder, problem in ((tmp_path / "nope", "no such folder"), (tmp_path, "empty")):
        with pytest.raises(InputError) as excinfo:
            read_dicom_series(folder)
        assert problem in assert_input_error(excinfo, folder)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    for read in (read_dicom_series, list_dicom_series):
        with pytest.raises(InputError) as excinfo:
            read(tmp_path)
        assert "no DICOM image" in assert_input_error(excinfo, tmp_path)


def test_non_dicom_files_beside_a_series_are_ignored(tmp_path, ct3):
    folder = copy_files((DCMQI / "ct").iterdir(), tmp_path)
    (folder / "README.txt").write_text("scan notes\n")
    np.testing.assert_array_equal(read_dicom_series(folder).array, ct3.array)


@pytest.mark.parametrize("keep", [300, 5000])  # cut in the header / in the pixel data
def test_truncated_file(tmp_path, keep):
    first, *rest = sorted((DCMQI / "ct").iterdir())
    folder = copy_files(rest, tmp_path)
    truncated = folder / first.name
    truncated.write_bytes(first.read_bytes()[:keep])
    with pytest.raises(InputError) as excinfo:
        read_dicom_series(folder)
    assert "truncated" in assert_input_error(excinfo, truncated)


def test_duplicate_slice_position(tmp_path):
    folder = copy_files((DCMQI / "ct").iterdir(), tmp_path)
    shutil.copy(folder / "02.dcm", folder / "02-copy.dcm")
    with pytest.raises(InputError) as excinfo:
        read_dicom_series(folder)
    assert "duplicate" in assert_input_error(excinfo, folder)


def test_single_slice(tmp_path):
    folder = copy_files([DCMQI / "ct" / "01.dcm"], tmp_path)
    with pytest.raises(InputError) as excinfo:
        read_dicom_series(folder)
    assert "single DICOM slice" in assert_input_error(excinfo, folder)


def test_two_slices_are_enough(tmp_path):
    folder = copy_files(sorted((DCMQI / "ct").iterdir())[:2], tmp_path)
    assert read_dicom_series(folder).shape == (512, 512, 2)


def test_missing_slice_makes_uneven_gaps(tmp_path):
    files = sorted((EXAMPLE_B / "dicom").iterdir())
    folder = copy_files(files[:9] + files[10:], tmp_path)
    with pytest.raises(InputError) as excinfo:
        read_dicom_series(folder)
    message = assert_input_error(excinfo, folder)
    assert "gap of 4.000 mm" in message and "median gap is 2.000 mm" in message
