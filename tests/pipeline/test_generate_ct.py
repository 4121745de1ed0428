"""`guidegen generate-ct` with a foreign label map (issue 28): a label set, unknown voxels, the file's
own array order, the annotated classes in the outputs, refusals in one line.

The image generator is the `ClassOracle` (each class drawn at a fixed HU), put in place of the
loaded model, so the CT shows where each label went.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from guidegen.images.generator import ConditionalImageGenerator
from guidegen.labels.vocabulary import ID, UNKNOWN
from tests.images.conftest import ClassOracle
from tests.images.test_byom import drawn_as_labelled, phantom
from tests.test_cli import run

#: The foreign ids of the phantom's classes, and the label set that names them.
FOREIGN = {ID["body"]: 9, ID["liver"]: 1, ID["bone"]: 6}
LABEL_SET = {"1": "liver", "2": "spleen", "5": "tumour", "6": "bone", "8": "unknown", "9": "body"}


@pytest.fixture()
def oracle(monkeypatch, tmp_path):
    model = ClassOracle().eval()
    monkeypatch.setattr(
        ConditionalImageGenerator, "from_pretrained", classmethod(lambda cls, folder, device="cpu": model)
    )
    (tmp_path / "model" / "image_generator").mkdir(parents=True)  # what --model must point at
    return model


def foreign_map(tmp_path, orientation: str, body: bool = True, unknown_block: bool = True):
    """The phantom in foreign ids, stored in ``orientation`` (no reorientation on writing)."""
    volume = phantom(orientation, body=body)
    array = np.zeros(volume.shape, np.uint8)
    for guidegen_id, foreign_id in FOREIGN.items():
        array[volume.array == guidegen_id] = foreign_id
    if unknown_block:  # "lung bases" the annotator left out, inside the body
        block = np.zeros(volume.shape, bool)
        block[8:16, 14:22, 2:12] = True
        if orientation != "RAS":  # the same voxels of the patient in every orientation
            block = np.flip(
                block, [a for a, s in enumerate({"LPS": (-1, -1, 1), "LAI": (-1, 1, -1)}[orientation]) if s < 0]
            )
        array[block & (volume.array == ID["body"])] = 8
    folder = tmp_path / f"in-{orientation}"
    folder.mkdir(exist_ok=True)
    path = folder / "labels.nii.gz"
    nib.save(nib.Nifti1Image(array, volume.affine), str(path))
    return path, array


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LAI"])
def test_a_foreign_label_set_end_to_end_on_the_input_s_own_arrays(oracle, tmp_path, capsys, orientation):
    path, raw = foreign_map(tmp_path, orientation)
    table = tmp_path / "atlas.json"
    table.write_text(json.dumps(LABEL_SET))
    out = tmp_path / "out"
    code, stdout, err = run(
        [
            "generate-ct",
            "--labels",
            str(path),
            "--labels-json",
            str(table),
            "--out",
            str(out),
            "--model",
            str(tmp_path / "model"),
            "--no-texture",
            "--no-levels",
        ],
        capsys,
    )
    assert code == 0, err
    source = nib.load(str(path))
    ct_image, labels_image = nib.load(str(out / "ct.nii.gz")), nib.load(str(out / "labels.nii.gz"))
    for image in (ct_image, labels_image):  # the input's shape, axis order and affine
        assert image.shape == source.shape and nib.aff2axcodes(image.affine) == tuple(orientation)
        np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)
    labels = np.asanyarray(labels_image.dataobj)
    expected = np.zeros_like(raw)
    for guidegen_id, foreign_id in FOREIGN.items():
        expected[raw == foreign_id] = guidegen_id
    expected[raw == 8] = UNKNOWN  # kept as "not annotated"
    assert np.array_equal(labels, expected)  # voxel for voxel, nothing reversed
    ct = np.asanyarray(ct_image.dataobj)
    assert drawn_as_labelled(ct, labels, [ID["liver"], ID["bone"], 0]) == 1.0
    assert (
        drawn_as_labelled(ct, np.where(labels == UNKNOWN, ID["body"], labels), [ID["body"]]) == 1.0
    )  # unknown as body
    case = json.loads((out / "case.json").read_text())
    assert case["annotated"] == ["spleen", "liver", "tumour", "body", "bone"] and case["body"] == "from the map"
    assert case["unknown_voxels"] == case["unknown_voxels_in_body"] == int(np.count_nonzero(raw == 8)) > 0
    assert "unknown voxels (id 255, kept in labels.nii.gz)" in stdout
    flags = oracle.seen_annotated[-1][0]  # the annotated classes were the generator's flags
    assert {i for i in range(len(flags)) if flags[i]} == {
        0,
        ID["spleen"],
        ID["liver"],
        ID["tumour"],
        ID["body"],
        ID["bone"],
    }
    # A report of the output knows what was annotated: the stomach was never labelled, so it is
    # not called absent; the spleen was labelled and is absent.
    code, report, err = run(["report", str(out / "labels.nii.gz"), "--seed", "0"], capsys)
    assert code == 0, err
    assert "spleen" in report.lower() and "stomach" not in report.lower()


def test_the_label_set_as_the_maps_sidecar_and_a_map_without_a_body(oracle, tmp_path, capsys):
    path, _ = foreign_map(tmp_path, "LPS", body=False, unknown_block=False)
    (path.parent / "guidegen-source.json").write_text(json.dumps({"vocabulary": LABEL_SET}))
    out = tmp_path / "out"
    code, stdout, err = run(
        [
            "generate-ct",
            "-l",
            str(path),
            "-o",
            str(out),
            "--model",
            str(tmp_path / "model"),
            "--no-texture",
            "--no-levels",
        ],
        capsys,
    )
    assert code == 0, err
    assert "no body outline: derived one" in stdout
    case = json.loads((out / "case.json").read_text())
    assert case["body"] == "derived" and "body" in case["annotated"]
    labels = np.asanyarray(nib.load(str(out / "labels.nii.gz")).dataobj)
    ct = np.asanyarray(nib.load(str(out / "ct.nii.gz")).dataobj)
    assert (labels == ID["body"]).sum() > (labels == ID["liver"]).sum()  # tissue around the organs, labelled body
    assert drawn_as_labelled(ct, labels, [ID["body"]]) == 1.0


def test_id_255_in_a_guidegen_map_is_accepted(oracle, tmp_path, capsys):
    volume = phantom("RAS")
    array = volume.array.copy()
    array[:, :2] = UNKNOWN  # outside the scan, as a prepared map has it
    path = tmp_path / "prepared_labels.nii.gz"
    nib.save(nib.Nifti1Image(array, volume.affine), str(path))
    code, _, err = run(
        [
            "generate-ct",
            "-l",
            str(path),
            "--vocabulary",
            "guidegen",
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "model"),
        ],
        capsys,
    )
    assert code == 0, err
    ct = np.asanyarray(nib.load(str(tmp_path / "out" / "ct.nii.gz")).dataobj)
    assert np.all(ct[:, :1] == -1024)  # unknown outside the body: air, as in training


def test_refusals_are_one_line_and_write_nothing(oracle, tmp_path, capsys):
    path, _ = foreign_map(tmp_path, "RAS")
    bad = tmp_path / "bad_atlas.json"
    bad.write_text(json.dumps({"1": "liver", "6": "bones", "8": "lungs", "9": "body"}))
    out = tmp_path / "out"
    base = ["generate-ct", "-l", str(path), "-o", str(out), "--model", str(tmp_path / "model")]
    code, _, err = run([*base, "--labels-json", str(bad)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "bad_atlas.json" in lines[0]
    assert "6: 'bones'" in lines[0] and "8: 'lungs'" in lines[0] and not out.exists()
    code, _, err = run([*base, "--labels-json", str(bad), "--vocabulary", "amos"], capsys)
    assert code == 2 and "--vocabulary/--labels-json" in err
    # A result that is nearly all air is an error, never a success.
    table = tmp_path / "atlas.json"
    table.write_text(json.dumps(LABEL_SET))
    with torch.no_grad():
        oracle.levels.fill_(float(oracle.unknown_level))
    code, stdout, err = run([*base, "--labels-json", str(table)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "the generated CT is air" in lines[0] and "Traceback" not in err
    assert not out.exists() and "generated a" not in stdout


def test_an_older_model_draws_lungs_as_air_and_says_so(monkeypatch, tmp_path, capsys):
    """An 18-class generator (the shipped one) has no lung class: the CT shows the map's lungs as air,
    labels.nii.gz keeps them as lungs, and case.json and the printed lines say what was drawn as what."""
    from tests.images.conftest import ORACLE_HU, tiny_config

    model = ClassOracle(tiny_config(num_classes=18)).eval()
    monkeypatch.setattr(
        ConditionalImageGenerator, "from_pretrained", classmethod(lambda cls, folder, device="cpu": model)
    )
    (tmp_path / "model" / "image_generator").mkdir(parents=True)
    path, raw = foreign_map(tmp_path, "RAS")
    raw[raw == 8] = 7  # the block is labelled lung this time
    nib.save(nib.Nifti1Image(raw, nib.load(str(path)).affine), str(path))
    table = tmp_path / "atlas.json"
    table.write_text(json.dumps({**LABEL_SET, "7": "lung"}))
    out = tmp_path / "out"
    args = ["generate-ct", "-l", str(path), "--labels-json", str(table), "-o", str(out)]
    code, stdout, err = run([*args, "--model", str(tmp_path / "model"), "--no-texture", "--no-levels"], capsys)
    assert code == 0, err
    assert "no class of its own for: lungs (drawn as air)" in stdout
    assert json.loads((out / "case.json").read_text())["drawn_as"] == {"lung": "background"}
    labels = np.asanyarray(nib.load(str(out / "labels.nii.gz")).dataobj)
    assert np.array_equal(labels == ID["lung"], raw == 7)
    ct = np.asanyarray(nib.load(str(out / "ct.nii.gz")).dataobj)
    assert drawn_as_labelled(ct, np.where(labels == ID["lung"], 0, labels), [0]) == 1.0
    assert abs(float(np.median(ct[labels == ID["lung"]])) - ORACLE_HU["background"]) <= 3
