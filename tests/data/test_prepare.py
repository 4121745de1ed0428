from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from guidegen.data.body import body_outline
from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.errors import InputError
from guidegen.io.nifti import read_nifti
from guidegen.labels.vocabulary import UNKNOWN

ALL_CASES = {
    "amos-0001-slices",
    "amos-0013-slices",
    "amos-0013-labels",
    "dcmqi-ct-3slice",
    "lits-117-crop",
    "msd-colon-050-tumour",
    "msd-spleen-8",
    "totalseg-example-a",
    "totalseg-example-b",
    # TotalSegmentator dataset subjects (data/real/totalseg-dataset): label maps, one CT with labels,
    # four CTs without labels.
    *(f"s{n:04d}" for n in (0, 1, 4, 6, 9, 12, 15, 24, 28, 29, 327, 328)),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, real):
    out = tmp_path_factory.mktemp("prepared")
    result = prepare([real], out, progress=False)
    return out, result


def test_prepares_every_bundled_scan(prepared):
    out, result = prepared
    assert result.failed == []
    assert set(result.prepared) == ALL_CASES
    manifest = json.loads((out / "manifest.json").read_text())
    assert {c["case_id"] for c in manifest["cases"]} == ALL_CASES
    for entry in load_prepared(out):
        labels = read_nifti(entry["labels_path"], kind="labels")
        assert labels.orientation == "RAS"
        assert labels.spacing == pytest.approx((3.0, 3.0, 3.0))
        assert labels.shape[:2] == (128, 128)
        if entry["has_ct"]:
            ct_img = nib.load(entry["ct_path"])
            assert ct_img.get_data_dtype() == np.int16
            ct = read_nifti(entry["ct_path"])
            assert ct.same_grid(labels)
            assert ct.array.min() >= -1024 and ct.array.max() <= 3071
            assert "body" in entry["annotated"]


def test_prepared_anatomy_is_plausible(prepared):
    out, _ = prepared
    cases = {e["case_id"]: e for e in load_prepared(out)}
    a = cases["totalseg-example-a"]
    assert 1000 <= a["volume_ml"]["liver"] <= 2500
    assert 20 <= a["mean_hu"]["liver"] <= 80  # non-contrast liver
    assert a["mean_hu"]["bone"] > 150
    assert a["mean_hu"]["body"] < 100
    # The DICOM series (contrast-enhanced) lands on its labels: liver enhances, aorta brighter still.
    b = cases["totalseg-example-b"]
    assert 60 <= b["mean_hu"]["liver"] <= 150 and b["mean_hu"]["aorta"] > 120
    # Partial annotation recorded, not turned into background.
    assert cases["msd-spleen-8"]["annotated"] == ["spleen", "body"]
    assert "tumour" in cases["lits-117-crop"]["annotated"]
    assert cases["msd-colon-050-tumour"]["annotated"] == ["tumour"]
    assert not cases["amos-0013-labels"]["has_ct"]
    d = cases["dcmqi-ct-3slice"]
    assert "liver" in d["annotated"] and d["volume_ml"]["liver"] > 0
    # The non-contrast TotalSegmentator subject: its phase is read from its own aorta, IVC and liver.
    s9 = cases["s0009"]
    assert s9["phase"] == "non_contrast" and {"lung", "muscle", "bone", "liver"} <= set(s9["annotated"])
    assert s9["mean_hu"]["body"] < s9["mean_hu"]["muscle"] < s9["mean_hu"]["liver"] < s9["mean_hu"]["bone"]
    # CTs without labels: only the derived body outline is annotated; their phase stays unknown.
    for case_id in ("s0015", "s0024", "s0028", "s0029"):
        assert cases[case_id]["annotated"] == ["body"] and cases[case_id]["phase"] is None
    # Label maps without CT keep the vocabulary-2 classes (TotalSegmentator lungs, heart, muscles).
    assert {"lung", "heart", "muscle", "other_artery", "other_vein"} <= set(cases["s0004"]["annotated"])
    assert cases["s0004"]["volume_ml"]["spleen"] > 900  # the splenomegaly subject


def test_rerun_skips_finished_cases(prepared, real, tmp_path):
    out, _ = prepared
    again = prepare([real], out, progress=False)
    assert again.prepared == [] and set(again.skipped) == ALL_CASES


def test_interrupted_case_leaves_nothing(tmp_path, real, monkeypatch):
    import guidegen.data.prepare as mod

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "write_nifti", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare([real / "totalseg-example-a"], tmp_path / "out", progress=False)
    leftovers = list((tmp_path / "out" / "cases").iterdir())
    assert leftovers == []


def test_vocabulary_is_required_for_plain_pairs(tmp_path, real):
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(real / "amos-0013-slices" / "ct.nii.gz", case / "ct.nii.gz")
    shutil.copy(real / "amos-0013-slices" / "labels.nii.gz", case / "labels.nii.gz")
    result = prepare([case], tmp_path / "out", progress=False)
    assert len(result.failed) == 1 and "vocabulary" in result.failed[0][1]
    result = prepare([case], tmp_path / "out", PrepareConfig(vocabulary="amos"), progress=False)
    assert result.prepared == ["case"]


def test_a_label_set_sidecar_and_unknown_ids(tmp_path, real):
    # Issue 28: a sidecar may hold the user's own id → class table, and id 255 ("not annotated",
    # as prepared maps write it) is read, not refused.
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(real / "amos-0013-slices" / "ct.nii.gz", case / "ct.nii.gz")
    source = nib.load(str(real / "amos-0013-slices" / "labels.nii.gz"))
    array = np.asanyarray(source.dataobj).astype(np.uint8)
    array[:8] = UNKNOWN
    nib.save(nib.Nifti1Image(array, source.affine), str(case / "labels.nii.gz"))
    table = {
        "1": "spleen",
        "2": "kidney_right",
        "3": "kidney_left",
        "4": "gallbladder",
        "5": "unknown",
        "6": "liver",
        "7": "stomach",
        "8": "aorta",
        "9": "inferior_vena_cava",
        "10": "pancreas",
        "11": "unknown",
        "12": "unknown",
        "13": "duodenum",
        "14": "urinary_bladder",
        "15": "unknown",
    }
    (case / "guidegen-source.json").write_text(json.dumps({"vocabulary": table}))
    result = prepare([case], tmp_path / "out", progress=False)
    assert result.prepared == ["case"], result.failed
    entry = load_prepared(tmp_path / "out")[0]
    assert entry["vocabulary"] == "label set (guidegen-source.json)"
    assert set(entry["annotated"]) == {*table.values(), "body"} - {"unknown"}
    assert entry["unknown_fraction"] > 0


def test_ct_and_labels_on_different_grids(tmp_path, real):
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(real / "amos-0013-slices" / "ct.nii.gz", case / "ct.nii.gz")
    shutil.copy(real / "amos-0001-slices" / "labels.nii.gz", case / "labels.nii.gz")
    result = prepare([case], tmp_path / "out", PrepareConfig(vocabulary="amos"), progress=False)
    assert "not on the CT's grid" in result.failed[0][1]


def test_totalsegmentator_folder_layout(tmp_path, real):
    # case/ct.nii.gz + case/segmentations/<structure>.nii.gz, as TotalSegmentator and AbdomenAtlas write.
    case = tmp_path / "s0001"
    (case / "segmentations").mkdir(parents=True)
    shutil.copy(real / "totalseg-example-a" / "ct.nii.gz", case / "ct.nii.gz")
    img = nib.load(str(real / "totalseg-example-a" / "labels.nii.gz"))
    lab = np.asanyarray(img.dataobj)
    for name, sid in {"liver": 5, "spleen": 1, "vertebrae_L1": 31, "lung_lower_lobe_left": 11}.items():
        nib.save(
            nib.Nifti1Image((lab == sid).astype(np.uint8), img.affine), str(case / "segmentations" / f"{name}.nii.gz")
        )
    out = tmp_path / "out"
    result = prepare([tmp_path], out, progress=False)
    assert result.prepared == ["s0001"], result.failed
    entry = load_prepared(out)[0]
    assert entry["layout"] == "totalsegmentator"
    assert entry["annotated"] == ["spleen", "liver", "body", "bone", "lung"]


def test_nnunet_layout(tmp_path, real):
    root = tmp_path / "Dataset001_Test"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(real / "msd-spleen-8" / "ct.nii.gz", root / "imagesTr" / "spl_008_0000.nii.gz")
    shutil.copy(real / "msd-spleen-8" / "labels.nii.gz", root / "labelsTr" / "spl_008.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "spleen": 1},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            }
        )
    )
    result = prepare([root], tmp_path / "out", progress=False)
    assert result.prepared == ["spl_008"], result.failed
    assert load_prepared(tmp_path / "out")[0]["annotated"] == ["spleen", "body"]


def test_body_outline_on_real_ct(real):
    ct = read_nifti(real / "totalseg-example-a" / "ct.nii.gz")
    body = body_outline(ct.array, ct.spacing)
    labels = read_nifti(real / "totalseg-example-a" / "labels.nii.gz", kind="labels")
    organs = labels.array > 0
    assert (body & organs).sum() / organs.sum() > 0.99  # every organ is inside the body
    assert not body[0, 0, :].any()  # corners are air
    assert 10_000 <= body.sum() * 27 / 1000 <= 40_000  # 10–40 L of body in an abdomen-pelvis scan


def test_bad_config():
    with pytest.raises(InputError, match="spacing"):
        PrepareConfig(spacing=(0.0, 1.0, 1.0))
    with pytest.raises(InputError, match="vocabulary"):
        PrepareConfig(vocabulary="nope")


def test_missing_source(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        prepare([tmp_path / "nope"], tmp_path / "out", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="supported layout"):
        prepare([empty], tmp_path / "out", progress=False)
