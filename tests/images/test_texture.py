from __future__ import annotations

import math

import numpy as np
import pytest

from guidegen.images.grain import measure_texture
from guidegen.images.texture import CHUNK, TextureModel, add_texture, load_texture_model, texture_applies, texture_field
from guidegen.images.texture_fit import _predicted
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID

MODEL_SPACING = (3.0, 3.0, 3.0)


def _flat_case(shape=(200, 200, 8), spacing=(0.7, 0.7, 5.0), hu=55.0):
    labels = np.zeros(shape, np.uint8)
    labels[20:-20, 20:-20, :] = ID["liver"]
    ct = np.where(labels > 0, hu, -1024.0).astype(np.float32)
    return ct, labels, np.diag([*spacing, 1.0])


def test_shipped_model_loads_with_its_provenance():
    model = load_texture_model()
    assert 2.0 < model.noise_hu < 30.0 and 0.05 < model.inplane_sigma_mm < 2.0
    assert set(model.provenance["fitted_on"]) == {"amos-0013-slices", "totalseg-example-b"}
    assert "amos-0001-slices" in model.provenance["measured_not_fitted"]  # the held-out map is not fitted
    assert "AMOS" in model.provenance["attribution"] and "TotalSegmentator" in model.provenance["attribution"]


def test_texture_gives_the_predicted_grain_on_a_fine_grid():
    ct, labels, affine = _flat_case()
    model = load_texture_model()
    out, record = add_texture(ct, labels, affine, MODEL_SPACING, seed=3, phase="non_contrast")
    assert record["applied"]
    before = measure_texture(Volume(ct, affine), Volume(labels, affine, "labels"))["liver"]
    after = measure_texture(Volume(out, affine), Volume(labels, affine, "labels"))["liver"]
    assert before.grain < 1e-3
    # What the fitted model predicts a real scan of this geometry shows (the high-pass takes a little).
    predicted = model.noise_at(5.0) * _predicted((0.7, 0.7), model.inplane_sigma_mm)[0]
    assert after.grain == pytest.approx(predicted, rel=0.15)
    assert after.mean == pytest.approx(55.0, abs=0.5)  # noise, not a level change
    rho = math.exp(-5.0 / model.slice_correlation_mm)
    assert after.slice_correlation == pytest.approx(rho, abs=0.05)
    # Air outside the body stays air; labels are never touched.
    assert np.all(out[labels == 0] == -1024.0)


def test_texture_is_deterministic_and_chunk_independent():
    model = load_texture_model()
    shape, spacing = (48, 40, CHUNK + 5), (0.8, 0.8, 2.0)
    whole = texture_field(shape, spacing, model, 3.0, seed=7)
    assert np.array_equal(whole, texture_field(shape, spacing, model, 3.0, seed=7))
    head = texture_field(shape[:2] + (CHUNK,), spacing, model, 3.0, seed=7)
    tail = texture_field(shape[:2] + (5,), spacing, model, 3.0, seed=7, first=CHUNK, previous=head[..., -1])
    assert np.allclose(np.concatenate([head, tail], axis=2), whole, atol=1e-6)
    assert not np.allclose(whole, texture_field(shape, spacing, model, 3.0, seed=8))


def test_no_texture_on_a_grid_as_coarse_as_the_model():
    ct, labels, _ = _flat_case(shape=(40, 40, 6))
    coarse = np.diag([3.0, 3.0, 3.0, 1.0])
    out, record = add_texture(ct, labels, coarse, MODEL_SPACING, seed=0)
    assert not record["applied"] and np.array_equal(out, ct)
    assert not texture_applies(coarse, MODEL_SPACING) and texture_applies(np.diag([0.7, 0.7, 5.0, 1.0]), MODEL_SPACING)


def test_texture_follows_the_slice_axis_of_any_array_order():
    ct, labels, affine = _flat_case(shape=(120, 120, 6))
    out, _ = add_texture(ct, labels, affine, MODEL_SPACING, seed=1)
    # The same grid with the slice axis first (world z along array axis 0).
    perm = np.array([[0, 0.7, 0, 0], [0, 0, 0.7, 0], [5.0, 0, 0, 0], [0, 0, 0, 1.0]])
    out_t, _ = add_texture(np.moveaxis(ct, 2, 0), np.moveaxis(labels, 2, 0), perm, MODEL_SPACING, seed=1)
    assert np.allclose(np.moveaxis(out_t, 0, 2), out, atol=1e-4)


def test_contrast_extras_raise_only_their_tissues():
    model = TextureModel(
        noise_hu=8.0, inplane_sigma_mm=0.5, slice_correlation_mm=3.0, contrast_extra_hu={"kidney_left": 15.0}
    )
    table = model.amplitudes(5.0, "portal_venous")
    assert table[ID["kidney_left"]] == pytest.approx(17.0) and table[ID["liver"]] == pytest.approx(8.0)
    assert model.amplitudes(5.0, "non_contrast")[ID["kidney_left"]] == pytest.approx(8.0)
    assert model.noise_at(1.25) == pytest.approx(16.0)  # σ ∝ 1/√(slice thickness)
    with pytest.raises(ValueError, match="noise_hu"):
        TextureModel(noise_hu=-1.0, inplane_sigma_mm=0.5, slice_correlation_mm=3.0)
    with pytest.raises(ValueError, match="unknown class"):
        TextureModel(noise_hu=1.0, inplane_sigma_mm=0.5, slice_correlation_mm=3.0, contrast_extra_hu={"lungs": 1.0})


def test_shipped_parameters_are_what_the_fit_gives(real):
    """The numbers in texture_model.json come from benchmarks/fit_texture.py on the bundled scans."""
    from guidegen.data.prepare import load_case
    from guidegen.images.texture_fit import FitScan, fit_texture_model
    from guidegen.io.layouts import discover_cases

    scans = []
    for folder in ("amos-0013-slices", "totalseg-example-b"):
        case = load_case(discover_cases(real / folder)[0])
        scans.append(FitScan(folder, case.ct, case.labels, contrast=True, fit=True))
    fitted, _ = fit_texture_model(scans)
    shipped = load_texture_model()
    assert fitted.noise_hu == pytest.approx(shipped.noise_hu, abs=0.01)
    assert fitted.inplane_sigma_mm == pytest.approx(shipped.inplane_sigma_mm, abs=1e-3)
    assert fitted.slice_correlation_mm == pytest.approx(shipped.slice_correlation_mm, abs=1e-3)
    assert dict(fitted.contrast_extra_hu) == pytest.approx(dict(shipped.contrast_extra_hu), abs=0.01)
