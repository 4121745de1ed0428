"""CLI plumbing of the model commands with tiny random-weight models (quality is tested elsewhere)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from guidegen.data.ops import SOFT_CLASSES
from guidegen.labels.vocabulary import ID
from tests.pipeline.conftest import make_tiny_model
from tests.test_cli import run


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models"))


def test_sample_masks_writes_samples_and_is_deterministic(tiny_models, tmp_path, capsys):
    args = ["sample-masks", "--prompt", "4 cm liver tumour", "-n", "2", "--seed", "5", "--model", str(tiny_models)]
    code, out, err = run(args + ["--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, _, err = run(args + ["--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    for i in range(2):
        a = nib.load(str(tmp_path / "a" / f"sample_{i:03d}" / "labels.nii.gz"))
        b = nib.load(str(tmp_path / "b" / f"sample_{i:03d}" / "labels.nii.gz"))
        assert a.get_data_dtype() == np.uint8 and a.shape == (16, 16, 8)
        assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        assert (tmp_path / "a" / f"sample_{i:03d}" / "report.txt").read_text().strip()
        assert (tmp_path / "a" / f"sample_{i:03d}" / "preview.png").stat().st_size > 0
    code, _, err = run(args + ["--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "already exists" in err


def test_sample_masks_check(tiny_models, tmp_path, capsys):
    code, out, err = run(
        [
            "sample-masks",
            "--prompt",
            "no tumour",
            "-n",
            "2",
            "--model",
            str(tiny_models),
            "--out",
            str(tmp_path / "c"),
            "--check",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "c" / "checks.json").exists()


def test_sample_masks_records_tumour_placement(tiny_models, tmp_path, capsys):
    import json

    for mode in ("insert", "network"):
        code, _, err = run(
            [
                "sample-masks",
                "--prompt",
                "4 cm liver tumour",
                "--model",
                str(tiny_models),
                "--tumour-placement",
                mode,
                "--out",
                str(tmp_path / mode),
            ],
            capsys,
        )
        assert code == 0, err
        meta = json.loads((tmp_path / mode / "prompt.json").read_text())
        assert meta["tumour_placement"] == mode
        placed = meta["placed"][0]
        assert (placed is None) if mode == "network" else (placed["mode"] == "insert" and "agreement" in placed)


def test_sample_masks_records_organ_sizes(tiny_models, tmp_path, capsys):
    import json

    for mode in ("scale", "network"):
        code, _, err = run(
            [
                "sample-masks",
                "--prompt",
                "status post splenectomy",
                "--model",
                str(tiny_models),
                "--organ-sizes",
                mode,
                "--out",
                str(tmp_path / mode),
            ],
            capsys,
        )
        assert code == 0, err
        meta = json.loads((tmp_path / mode / "prompt.json").read_text())
        assert meta["organ_sizes"] == mode
        sized = meta["sized"][0]
        if mode == "network":
            assert sized is None
        else:  # the spleen is gone whatever the tiny network drew
            assert sized["spleen"]["holds"] is True and sized["spleen"]["after_ml"] == 0
            labels = nib.load(str(tmp_path / mode / "sample_000" / "labels.nii.gz"))
            assert not np.any(np.asanyarray(labels.dataobj) == ID["spleen"])


def test_sample_masks_aorta_placement(tiny_models, tmp_path, capsys):
    import json

    arrays = {}
    for mode in ("tube", "network"):
        code, _, err = run(
            [
                "sample-masks",
                "--prompt",
                "normal abdomen",
                "--model",
                str(tiny_models),
                "--seed",
                "3",
                "--aorta-placement",
                mode,
                "--out",
                str(tmp_path / mode),
            ],
            capsys,
        )
        assert code == 0, err
        meta = json.loads((tmp_path / mode / "prompt.json").read_text())
        assert meta["aorta_placement"] == mode and (meta["aorta"][0] is None) == (mode == "network")
        arrays[mode] = np.asanyarray(nib.load(str(tmp_path / mode / "sample_000" / "labels.nii.gz")).dataobj)
    # Only the aorta and the soft tissue it grew into or gave its strays to differ.
    changed = arrays["tube"] != arrays["network"]
    allowed = {ID["aorta"]} | {ID[c] for c in SOFT_CLASSES}
    assert set(np.unique(arrays["tube"][changed])) | set(np.unique(arrays["network"][changed])) <= allowed
    code, _, err = run(
        [
            "sample-masks",
            "--prompt",
            "normal abdomen",
            "--model",
            str(tiny_models),
            "--aorta-placement",
            "wide",
            "--out",
            str(tmp_path / "bad"),
        ],
        capsys,
    )
    assert code == 2 and "--aorta-placement" in err and not (tmp_path / "bad").exists()


def test_generate_ct_keeps_the_label_grid(tiny_models, tmp_path, real, capsys):
    labels = real / "msd-spleen-8" / "labels.nii.gz"
    code, out, err = run(
        [
            "generate-ct",
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "ct"),
            "--model",
            str(tiny_models),
            "--steps",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    ct = nib.load(str(tmp_path / "ct" / "ct.nii.gz"))
    lab = nib.load(str(tmp_path / "ct" / "labels.nii.gz"))
    assert ct.get_data_dtype() == np.int16 and ct.shape == lab.shape
    assert np.allclose(ct.affine, lab.affine)
    data = np.asanyarray(ct.dataobj)
    assert data.min() >= -1024 and data.max() <= 3071


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sample-masks", "--prompt", "   ", "--out", "x"], "--prompt"),
        (["generate-ct", "--labels", "missing.nii.gz", "--out", "x"], "missing.nii.gz"),
        (["sample-masks", "--prompt", "liver tumour", "--out", "x", "--device", "tpu"], "--device"),
        (
            ["sample-masks", "--prompt", "liver tumour", "--out", "x", "--tumour-placement", "paint"],
            "--tumour-placement",
        ),
        (["sample-masks", "--prompt", "enlarged spleen", "--out", "x", "--organ-sizes", "big"], "--organ-sizes"),
    ],
)
def test_model_commands_bad_input(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
