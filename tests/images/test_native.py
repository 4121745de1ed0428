"""`generate_ct` on a grid finer than the model's: native-resolution texture and the level step (issue 28)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidegen.data.prepare import load_prepared
from guidegen.grids.upsample import upsample_labels
from guidegen.images.any_grid import generate_ct
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.grain import measure_texture
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from tests.images.conftest import tiny_config


@pytest.fixture(scope="module")
def fine_labels(tiny_prepared) -> Volume:
    """Real anatomy (totalseg-example-a) on a grid 8× finer in-plane than the tiny model's 12 mm."""
    entry = {e["case_id"]: e for e in load_prepared(tiny_prepared)}["totalseg-example-a"]
    coarse = read_nifti(entry["labels_path"], kind="labels")
    part = coarse.with_array(np.ascontiguousarray(coarse.array[:, :, 10:16]))
    return upsample_labels(part, (1.5, 1.5, 12.0))


@pytest.fixture(scope="module")
def flat_model() -> ConditionalImageGenerator:
    """A tiny generator whose weights are all zero: it predicts the clean slice 0 (model units) everywhere,
    so its CT is a flat 50 HU, with no grain of its own (the random tiny model saturates at ±1)."""
    model = ConditionalImageGenerator(tiny_config(prediction="sample"))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def _grain(ct: Volume, labels: Volume) -> dict[str, float]:
    return {n: s.grain for n, s in measure_texture(ct, labels, depth_mm=8.0).items()}


def test_texture_at_native_resolution(flat_model, fine_labels):
    original = fine_labels.array.copy()
    plain = generate_ct(flat_model, fine_labels, seed=4, image_steps=1, texture=False, levels=False)
    textured = generate_ct(flat_model, fine_labels, seed=4, image_steps=1, levels=False)
    assert textured.same_grid(fine_labels) and textured.array.dtype == np.int16
    assert np.array_equal(fine_labels.array, original)  # labels untouched
    assert textured.meta["native"]["texture"]["applied"] and plain.meta["native"]["texture"] is None
    g_plain, g_tex = _grain(plain, fine_labels), _grain(textured, fine_labels)
    common = [n for n in g_plain if n in ("liver", "body", "spleen", "colon", "small_bowel")]
    assert len(common) >= 3
    for name in common:  # the model's flat image has no grain; the texture adds it
        assert g_plain[name] < 0.5 and g_tex[name] > 3.0, name
    # Deterministic for a seed, another seed another texture; the network's part is the same.
    again = generate_ct(flat_model, fine_labels, seed=4, image_steps=1, levels=False)
    assert np.array_equal(again.array, textured.array)
    other = generate_ct(flat_model, fine_labels, seed=5, image_steps=1, levels=False)
    assert not np.array_equal(other.array, textured.array)
    # Texture is zero-mean noise: region means barely move.
    body = fine_labels.array > 0
    assert abs(float(textured.array[body].mean()) - float(plain.array[body].mean())) < 1.5


def test_no_texture_on_the_model_grid(tiny_model, fine_labels):
    coarse = upsample_labels(fine_labels, (12.0, 12.0, 12.0))
    ct = generate_ct(tiny_model, coarse, seed=1, image_steps=1, levels=False)
    plain = generate_ct(tiny_model, coarse, seed=1, image_steps=1, texture=False, levels=False)
    assert not ct.meta["native"]["texture"]["applied"]
    assert np.array_equal(ct.array, plain.array)
