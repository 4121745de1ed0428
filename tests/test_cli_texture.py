"""`guidegen generate-ct --texture/--no-texture --levels/--no-levels` (issue 28), with a tiny random-weight model."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tests.pipeline.conftest import make_tiny_model
from tests.test_cli import run


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models"))


def test_texture_and_levels_can_be_turned_off(tiny_models, tmp_path, real, capsys):
    labels = real / "msd-spleen-8" / "labels.nii.gz"  # 0.79 mm pixels: finer than any model grid
    common = [
        "generate-ct",
        "--labels",
        str(labels),
        "--model",
        str(tiny_models),
        "--steps",
        "1",
        "--phase",
        "portal_venous",
    ]
    arrays, records = {}, {}
    for name, flags in (("on", []), ("off", ["--no-texture", "--no-levels"])):
        code, _, err = run(common + ["--out", str(tmp_path / name), *flags], capsys)
        assert code == 0, err
        arrays[name] = np.asanyarray(nib.load(str(tmp_path / name / "ct.nii.gz")).dataobj)
        records[name] = json.loads((tmp_path / name / "case.json").read_text())["native"]
    assert records["on"]["texture"]["applied"] and records["on"]["levels"]["phase"] == "portal_venous"
    assert isinstance(records["on"]["slice_levels"], dict)  # --levels also evens the levels along z
    assert records["on"]["borders"]["applied"]  # --texture also keeps borders sharp
    assert records["off"] == {"borders": None, "slice_levels": None, "levels": None, "texture": None}
    assert arrays["on"].shape == arrays["off"].shape and not np.array_equal(arrays["on"], arrays["off"])
