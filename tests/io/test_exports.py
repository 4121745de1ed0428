"""Exports for other tools: nnU-Net v2 raw datasets, DICOM CT series and DICOM SEG."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from guidegen.errors import InputError, OutputExistsError
from guidegen.io import dicom_write, nnunet
from guidegen.io.dicom import read_dicom_series
from guidegen.io.dicom_seg import read_dicom_seg
from guidegen.io.dicom_write import DicomStudyInfo, write_dicom_ct_series
from guidegen.io.nifti import read_nifti, write_nifti
from guidegen.io.nnunet import NnunetCase, read_nnunet_label_mapping
from guidegen.io.volume import HU_MAX, HU_MIN, Volume, canonical
from guidegen.labels.remap import remap_labels
from guidegen.labels.vocabulary import CLASSES, ID, UNKNOWN, preview_colour

EXAMPLE_A = Path(__file__).resolve().parents[2] / "data" / "real" / "totalseg-example-a"
#: 12 slices of example-a through liver, kidneys, pancreas and spleen (14 GuideGen classes).
FIRST_SLICE, N_SLICES = 78, 12
GRID = np.array([[1.5, 0, 0, -20.0], [0, 1.5, 0, 10.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
SHAPE = (16, 14, 6)


def small_case(case_id: str, class_ids: list[int], seed: int = 0, affine: np.ndarray = GRID) -> NnunetCase:
    """A tiny CT (random HU) with one box per class."""
    rng = np.random.default_rng(seed)
    ct = Volume(rng.normal(40, 300, SHAPE).astype(np.float32), affine, "ct")
    labels = np.zeros(SHAPE, np.uint8)
    for j, class_id in enumerate(class_ids):
        labels[1 + 3 * j : 3 + 3 * j, 3:8, 1:5] = class_id
    return NnunetCase(case_id, ct, Volume(labels, affine, "labels"))


def write_nnunet_dataset(*args, **kwargs) -> Path:
    """The exporter with GuideGen's vocabulary, as the pipeline and CLI call it."""
    return nnunet.write_nnunet_dataset(*args, label_classes=CLASSES, **kwargs)


def write_dicom_seg(*args, **kwargs) -> Path:
    colours = {c.id: preview_colour(c.id) for c in CLASSES}
    return dicom_write.write_dicom_seg(*args, label_classes=CLASSES, colours=colours, **kwargs)


def test_io_layer_unknown_id_is_the_vocabulary_s():
    # io may not import guidegen.labels (layer contract), so it repeats the id; keep them equal.
    assert nnunet.DEFAULT_UNKNOWN_ID == dicom_write.DEFAULT_UNKNOWN_ID == UNKNOWN


def load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


# --- nnU-Net ------------------------------------------------------------------------------------


def test_nnunet_dataset_layout_ids_and_json(tmp_path):
    cases = [small_case("case_a", [ID["liver"], ID["spleen"]]), small_case("case-b", [ID["tumour"]], seed=1)]
    folder = write_nnunet_dataset(cases, tmp_path / "raw", 42, "GuideGenTest")
    assert folder == tmp_path / "raw" / "Dataset042_GuideGenTest"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["case-b_0000.nii.gz", "case_a_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["case-b.nii.gz", "case_a.nii.gz"]

    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 2
    # One fixed table: every GuideGen class declared with its own GuideGen id, present or not.
    assert meta["labels"] == {c.name: c.id for c in CLASSES}
    block = meta["guidegen"]
    assert block["nnunet_to_guidegen"] == {str(c.id): c.id for c in CLASSES}
    assert block["guidegen_to_nnunet"] == {str(c.id): c.id for c in CLASSES}
    assert set(block["cases"]) == {"case_a", "case-b"} and "generator" in block
    assert read_nnunet_label_mapping(folder) == {c.id: c.id for c in CLASSES}

    image = nib.load(str(folder / "imagesTr" / "case_a_0000.nii.gz"))
    assert image.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.affine, GRID)
    np.testing.assert_array_equal(
        load(folder / "imagesTr" / "case_a_0000.nii.gz"), np.clip(np.rint(cases[0].ct.array), HU_MIN, HU_MAX)
    )
    label_image = nib.load(str(folder / "labelsTr" / "case_a.nii.gz"))
    assert label_image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(label_image.affine, image.affine)
    for case in cases:  # the label files hold GuideGen ids unchanged
        np.testing.assert_array_equal(load(folder / "labelsTr" / f"{case.case_id}.nii.gz"), case.labels.array)


def test_nnunet_exports_of_different_runs_share_their_labels(tmp_path):
    # Issue 28: ids used to be numbered over the classes present, so liver was 2 in one run, 1 in another.
    one = write_nnunet_dataset([small_case("a", [ID["liver"], ID["spleen"]])], tmp_path / "run1", 1, "Run")
    two = write_nnunet_dataset([small_case("b", [ID["tumour"], ID["colon"], ID["liver"]])], tmp_path / "run2", 1, "Run")
    meta_one, meta_two = (json.loads((d / "dataset.json").read_text()) for d in (one, two))
    assert meta_one["labels"] == meta_two["labels"]
    assert meta_one["guidegen"]["guidegen_to_nnunet"] == meta_two["guidegen"]["guidegen_to_nnunet"]
    liver_one = load(one / "labelsTr" / "a.nii.gz")[
        small_case("a", [ID["liver"], ID["spleen"]]).labels.array == ID["liver"]
    ]
    liver_two = load(two / "labelsTr" / "b.nii.gz")[
        small_case("b", [ID["tumour"], ID["colon"], ID["liver"]]).labels.array == ID["liver"]
    ]
    assert set(liver_one.tolist()) == set(liver_two.tolist()) == {meta_one["labels"]["liver"]}


def test_nnunet_existing_dataset_is_not_overwritten(tmp_path):
    write_nnunet_dataset([small_case("a", [4])], tmp_path, 7, "Keep")
    with pytest.raises(OutputExistsError):
        write_nnunet_dataset([small_case("b", [1])], tmp_path, 7, "Keep")
    folder = write_nnunet_dataset([small_case("b", [1])], tmp_path, 7, "Keep", overwrite=True)
    assert [p.name for p in (folder / "labelsTr").iterdir()] == ["b.nii.gz"]
    with pytest.raises(InputError, match="already used by Dataset007_Keep"):
        write_nnunet_dataset([small_case("c", [1])], tmp_path, 7, "Other")  # -d 7 would be ambiguous


def test_nnunet_append_keeps_ids_and_refuses_mismatched_labels(tmp_path):
    folder = write_nnunet_dataset([small_case("a", [4, 11])], tmp_path, 3, "Grow")
    write_nnunet_dataset([small_case("b", [11], seed=1)], tmp_path, 3, "Grow", append=True)
    write_nnunet_dataset([small_case("c", [1], seed=2)], tmp_path, 3, "Grow", append=True)  # a class new to the dataset
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and set(meta["guidegen"]["cases"]) == {"a", "b", "c"}
    assert meta["labels"] == {c.name: c.id for c in CLASSES}
    assert set(np.unique(load(folder / "labelsTr" / "b.nii.gz"))) == {0, 11}

    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(InputError, match="already holds a case 'A'"):  # ids collide ignoring case
        write_nnunet_dataset([small_case("A", [4])], tmp_path, 3, "Grow", append=True)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing half-added
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3

    with pytest.raises(InputError, match="has no dataset.json"):
        write_nnunet_dataset([small_case("x", [4])], tmp_path, 4, "Missing", append=True)
    # A dataset written before the fixed table (only the classes present, renumbered) keeps its ids,
    # and refuses classes it does not declare.
    old = write_nnunet_dataset([small_case("a", [4])], tmp_path, 5, "Old")
    meta = json.loads((old / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": 1}
    meta["guidegen"]["nnunet_to_guidegen"] = {"0": 0, "1": 4}
    meta["guidegen"]["guidegen_to_nnunet"] = {"0": 0, "4": 1}
    (old / "dataset.json").write_text(json.dumps(meta))
    write_nnunet_dataset([small_case("b", [4])], tmp_path, 5, "Old", append=True)
    assert set(np.unique(load(old / "labelsTr" / "b.nii.gz"))) == {0, 1}
    with pytest.raises(InputError, match=r"spleen \(1\)"):  # would need a new id
        write_nnunet_dataset([small_case("c", [1])], tmp_path, 5, "Old", append=True)


def test_nnunet_unknown_voxels_refused_or_written_as_background(tmp_path):
    case = small_case("a", [4])
    case.labels.array[0, 0, :] = UNKNOWN
    with pytest.raises(InputError, match="6 unknown voxels"):
        write_nnunet_dataset([case], tmp_path, 1, "Unknown")
    folder = write_nnunet_dataset([case], tmp_path, 1, "Unknown", unknown="background")
    assert load(folder / "labelsTr" / "a.nii.gz")[0, 0, :].tolist() == [0] * 6
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["guidegen"]["cases"]["a"]["unknown_voxels_to_background"] == 6
    assert "background" in meta["guidegen"]["unknown_voxels"]


@pytest.mark.parametrize(
    ("cases", "problem"),
    [
        ([small_case("../evil", [4])], "not usable in file names"),
        ([small_case("a b", [4])], "not usable in file names"),
        ([small_case("same", [4]), small_case("SAME", [1])], "given twice"),
        (
            [
                NnunetCase(
                    "a", small_case("a", [4]).ct, small_case("a", [4], affine=GRID * [[1], [1], [1.01], [1]]).labels
                )
            ],
            "not on the CT's grid",
        ),
        ([NnunetCase("a", small_case("a", [4]).labels, small_case("a", [4]).labels)], "kind 'labels'"),
        ([small_case("a", [40])], "not GuideGen classes"),
        ([], "no cases"),
    ],
)
def test_nnunet_refuses_bad_cases(tmp_path, cases, problem):
    with pytest.raises(InputError, match=problem):
        write_nnunet_dataset(cases, tmp_path, 9, "Bad")
    assert not (tmp_path / "Dataset009_Bad").exists()


@pytest.mark.parametrize(("dataset_id", "name"), [(0, "X"), (1000, "X"), (True, "X"), (1, "a/b"), (1, "")])
def test_nnunet_refuses_bad_dataset_id_or_name(tmp_path, dataset_id, name):
    with pytest.raises(InputError):
        write_nnunet_dataset([small_case("a", [4])], tmp_path, dataset_id, name)


_VERIFY_SCRIPT = """
import json, sys
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print("@@@ " + folder, flush=True)
        try:
            verify_dataset_integrity(folder, num_processes=1)
            status = "ok"
        except Exception as exc:
            status = f"{type(exc).__name__}: {exc}"
        print("@@@ result " + json.dumps(status), flush=True)
"""


def run_nnunet_check(tmp_path: Path, folders: list[Path]) -> dict[str, tuple[str, str]]:
    """nnU-Net's ``verify_dataset_integrity`` on each folder → {folder: (status, what it printed)}.

    Runs in a child process: nnU-Net reads its path variables from the environment, and its
    worker pool must not hang the test run if a worker dies. Its workers print their findings
    themselves, so output is unbuffered and split at the markers the script prints.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / key).mkdir(exist_ok=True)
        env[key] = str(tmp_path / key)
    script = tmp_path / "verify.py"
    script.write_text(textwrap.dedent(_VERIFY_SCRIPT))
    run = subprocess.run(
        [sys.executable, str(script), *map(str, folders)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = {}
    folder, printed = "", ""
    for part in run.stdout.split("@@@ ")[1:]:
        if part.startswith("result "):
            status = json.loads(part[len("result ") :].strip().splitlines()[0])
            results[folder] = (status, printed)
        else:
            folder, _, printed = part.partition("\n")
    return results


def require_nnunet() -> None:
    """Skip without nnunetv2, except under `make test` (GUIDEGEN_REQUIRE_NNUNET=1), where it must be there."""
    if importlib.util.find_spec("nnunetv2") is None:
        if os.environ.get("GUIDEGEN_REQUIRE_NNUNET") == "1":
            pytest.fail("nnunetv2 is not installed but GUIDEGEN_REQUIRE_NNUNET=1 (see requirements/nnunet-check-*.txt)")
        pytest.skip("nnunetv2 is not installed: nnU-Net's own integrity check not run")


def test_nnunet_own_integrity_check_accepts_ours_and_refuses_broken_datasets(tmp_path):
    require_nnunet()
    raw = tmp_path / "nnUNet_raw"
    cases = [small_case("a", [ID["liver"], ID["spleen"]]), small_case("b", [ID["tumour"]], seed=1)]
    good = write_nnunet_dataset(cases, raw, 42, "Good")

    # A gap in the label ids (nnU-Net wants 0..N).
    gap = shutil.copytree(good, raw / "Dataset043_Gap")
    meta = json.loads((gap / "dataset.json").read_text())
    meta["labels"]["tumour"] = 4
    (gap / "dataset.json").write_text(json.dumps(meta))
    # A CT on another grid (other voxel size) than its labels.
    grid = shutil.copytree(good, raw / "Dataset044_Grid")
    image = grid / "imagesTr" / "b_0000.nii.gz"
    write_nifti(
        Volume(load(image).astype(np.float32), GRID @ np.diag([2.0, 2.0, 1.0, 1.0]), "ct"), image, overwrite=True
    )

    results = run_nnunet_check(tmp_path, [good, gap, grid])
    status, printed = results[str(good)]
    assert status == "ok", printed
    assert "verify_dataset_integrity Done" in printed and "Error" not in printed and "Warning" not in printed
    assert results[str(gap)][0].startswith("AssertionError: Labels must be in consecutive order")
    status, printed = results[str(grid)]
    assert status.startswith("RuntimeError: Some images have errors")
    assert "Spacing mismatch" in printed


# --- DICOM CT series and SEG --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_case() -> tuple[Volume, Volume]:
    """12 slices of example-a: CT (float32 HU, with values outside the 12-bit range) and labels."""
    ct = read_nifti(EXAMPLE_A / "ct.nii.gz")
    source = read_nifti(EXAMPLE_A / "labels.nii.gz", kind="labels")
    array, _ = remap_labels(source.array, "totalsegmentator", affine=source.affine)
    affine = ct.affine.copy()
    affine[:3, 3] = ct.world_coordinates(np.array([0, 0, FIRST_SLICE]))
    crop = slice(FIRST_SLICE, FIRST_SLICE + N_SLICES)
    return (
        ct.with_array(np.ascontiguousarray(ct.array[:, :, crop]), affine=affine),
        source.with_array(np.ascontiguousarray(array[:, :, crop]), affine=affine),
    )


@pytest.fixture(scope="module")
def exported(real_case, tmp_path_factory) -> tuple[Path, Path]:
    ct, labels = real_case
    out = tmp_path_factory.mktemp("dicom")
    folder = write_dicom_ct_series(ct, out / "ct")
    return folder, write_dicom_seg(labels, folder, out / "seg.dcm")


def test_dicom_ct_series_round_trip(real_case, exported):
    ct, _ = real_case
    back = read_dicom_series(exported[0])
    assert back.shape == ct.shape == (122, 101, N_SLICES)
    assert np.abs(back.affine - ct.affine).max() < 1e-3
    assert ct.array.min() < HU_MIN  # so the clipping below is exercised
    np.testing.assert_array_equal(back.array, np.clip(np.rint(ct.array), HU_MIN, HU_MAX))


def test_dicom_ct_headers_with_plain_pydicom(real_case, exported):
    ct, _ = real_case
    files = sorted(exported[0].iterdir())
    assert [f.name for f in files[:2]] == ["IM0001.dcm", "IM0002.dcm"] and len(files) == N_SLICES
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert first.preamble is not None and first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage == first.file_meta.MediaStorageSOPClassUID
    assert first.Modality == "CT" and str(first.PatientName) == "GuideGen^Synthetic"
    assert "synthetic" in first.SeriesDescription.lower() and "SYNTHETIC" in first.ImageComments
    assert (first.RescaleSlope, first.RescaleIntercept, first.BitsStored, first.PixelRepresentation) == (1, 0, 16, 1)
    assert len({d.SOPInstanceUID for d in datasets}) == N_SLICES
    assert len({(d.SeriesInstanceUID, d.StudyInstanceUID, d.FrameOfReferenceUID) for d in datasets}) == 1
    # Radiological layout: rows towards the patient's left, columns towards posterior.
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == [3.0, 3.0]
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == 3.0
    # Pixel (0, 0) of the lowest slice is RAS voxel (X-1, Y-1, 0); its position is that voxel in LPS.
    x, y = ct.shape[0] - 1, ct.shape[1] - 1
    ras = ct.world_coordinates(np.array([x, y, 0]))
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], ras * [-1, -1, 1], atol=1e-4)
    assert first.pixel_array.dtype == np.int16 and first.pixel_array.shape == (ct.shape[1], ct.shape[0])
    assert first.pixel_array[0, 0] == np.clip(np.rint(ct.array[x, y, 0]), HU_MIN, HU_MAX)
    top = datasets[-1]
    assert float(top.ImagePositionPatient[2]) == pytest.approx(ras[2] + 3.0 * (N_SLICES - 1), abs=1e-4)


def test_dicom_seg_round_trip(real_case, exported):
    _, labels = real_case
    ct_back = read_dicom_series(exported[0])
    seg_labels, segments = read_dicom_seg(exported[1], reference=ct_back)
    present = sorted(int(i) for i in np.unique(labels.array) if i != 0)
    assert len(present) == 15  # the real TotalSegmentator map: 14 classes + lung bases (vocabulary 2)
    by_display = {c.display: c.id for c in CLASSES}
    assert sorted(by_display[name] for name in segments.values()) == present
    to_guidegen = np.zeros(256, np.uint8)
    for number, name in segments.items():
        to_guidegen[number] = by_display[name]
    assert seg_labels.same_grid(ct_back, atol=1e-9)
    np.testing.assert_array_equal(to_guidegen[seg_labels.array], labels.array)

    seg = hd.seg.segread(exported[1])
    assert seg.SeriesDescription.lower().endswith("synthetic segmentation")
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(next(exported[0].iterdir()), stop_before_pixels=True).SeriesInstanceUID
    )
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmName == "GuideGen"
        assert item.SegmentLabel == CLASSES[ID[item.TrackingID]].display
    kidney = next(item for item in seg.SegmentSequence if item.TrackingID == "kidney_left")
    kidney_type = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.CodeMeaning == "Kidney"
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert pydicom.dcmread(exported[1]).Modality == "SEG"


def test_dicom_outputs_are_not_overwritten(real_case, exported):
    ct, labels = real_case
    folder, seg = exported
    with pytest.raises(OutputExistsError):
        write_dicom_ct_series(ct, folder)
    with pytest.raises(OutputExistsError):
        write_dicom_seg(labels, folder, seg)
    assert len(list(folder.iterdir())) == N_SLICES


def test_dicom_overwrite_and_any_input_orientation(tmp_path):
    case = small_case("a", [ID["liver"], ID["kidney_right"]])
    # Stored as L, P, S (x and y flipped): the export must come back as the same canonical volume.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]
    ct = Volume(case.ct.array[::-1, ::-1].copy(), GRID @ flip, "ct")
    labels = Volume(case.labels.array[::-1, ::-1].copy(), GRID @ flip, "labels")
    assert ct.orientation == "LPS"
    info = DicomStudyInfo(patient_id="P1", study_description="test study")
    folder = write_dicom_ct_series(ct, tmp_path / "ct", info=info, series_description="my series")
    old_uid = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
    folder = write_dicom_ct_series(ct, tmp_path / "ct", info=info, series_description="my series", overwrite=True)
    first = pydicom.dcmread(next(folder.iterdir()))
    assert first.SeriesInstanceUID != old_uid and first.SeriesDescription == "my series [synthetic]"
    assert first.PatientID == "P1"
    back = read_dicom_series(folder)
    assert back.same_grid(case.ct, atol=1e-4)
    np.testing.assert_array_equal(back.array, np.clip(np.rint(case.ct.array), HU_MIN, HU_MAX))

    seg = write_dicom_seg(labels, folder, tmp_path / "seg.dcm")
    seg_labels, segments = read_dicom_seg(seg, reference=back)
    assert segments == {1: "right kidney", 2: "liver"}
    np.testing.assert_array_equal(
        seg_labels.array,
        np.select([case.labels.array == ID["kidney_right"], case.labels.array == ID["liver"]], [1, 2], 0),
    )
    assert seg_labels.same_grid(canonical(labels), atol=1e-4)


def test_dicom_seg_refuses_labels_off_the_ct_grid(tmp_path):
    case = small_case("a", [ID["liver"]])
    folder = write_dicom_ct_series(case.ct, tmp_path / "ct")
    shifted = GRID.copy()
    shifted[:3, 3] += [0.75, 0, 0]  # half a voxel
    for labels, problem in [
        (Volume(case.labels.array, shifted, "labels"), "off the label voxel centres"),
        (Volume(case.labels.array[:, :, :4], GRID, "labels"), "outside the label map"),
        (Volume(np.pad(case.labels.array, ((0, 0), (0, 0), (0, 2))), GRID, "labels"), "not on the same grid"),
        (Volume(np.zeros(SHAPE, np.uint8), GRID, "labels"), "no labelled voxel"),
    ]:
        with pytest.raises(InputError, match=problem):
            write_dicom_seg(labels, folder, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
