"""`ElasticDeformation` (`guidegen.data.ops.elastic`)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.data.ops import ElasticDeformation, ElasticParams
from guidegen.io.nifti import read_nifti
from guidegen.labels.vocabulary import ID, ORGANS, UNKNOWN
from tests.data.conftest import counts


def test_elastic_keeps_classes_and_volumes(labels, ct):
    params = ElasticParams(seed=3, amplitude_mm=9.0, smoothness_mm=40.0)
    out, out_ct = ElasticDeformation().apply(labels, params, ct)
    assert out.same_grid(labels) and out.array.dtype == np.uint8
    before, after = counts(labels), counts(out)
    assert set(np.nonzero(before)[0]) == set(np.nonzero(after)[0])
    changed = float((out.array != labels.array).mean())
    assert changed > 0.01  # it really deformed
    for name in ORGANS:
        if before[ID[name]]:
            assert 0.85 <= after[ID[name]] / before[ID[name]] <= 1.15, name
    assert 0.95 <= after[UNKNOWN] / before[UNKNOWN] <= 1.05
    # CT follows the labels: the liver's HU stay liver HU.
    assert out_ct is not None and out_ct.same_grid(ct)
    liver_before = ct.array[labels.array == ID["liver"]].mean()
    liver_after = out_ct.array[out.array == ID["liver"]].mean()
    assert abs(liver_after - liver_before) < 10
    assert out.meta["augmentations"][-1]["transform"] == "ElasticDeformation"
    assert "augmentations" not in labels.meta  # the input's meta is not touched


def test_elastic_deterministic_per_seed(labels):
    transform = ElasticDeformation(amplitude_mm=(8.0, 10.0))
    p1 = transform.make_params(np.random.default_rng(7))
    assert p1 == transform.make_params(np.random.default_rng(7))
    p2 = transform.make_params(np.random.default_rng(8))
    assert p1 != p2
    np.testing.assert_array_equal(transform.displacement(labels, p1), transform.displacement(labels, p1))
    field = transform.displacement(labels, p1)
    assert np.abs(field).max() == pytest.approx(p1.amplitude_mm, rel=1e-4)
    assert not np.allclose(field, transform.displacement(labels, p2))


def test_elastic_same_params_same_output_and_seeds_differ(cases):
    lits = read_nifti(cases["lits-117-crop"]["labels_path"], kind="labels")  # small, few classes: fast
    transform = ElasticDeformation()
    a, _ = transform.apply(lits, ElasticParams(1, 10.0, 35.0))
    b, _ = transform.apply(lits, ElasticParams(1, 10.0, 35.0))
    c, _ = transform.apply(lits, ElasticParams(2, 10.0, 35.0))
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.array_equal(a.array, c.array)


def test_unknown_region_stays_unknown(cases):
    # The LiTS crop's prepared map is mostly unknown (outside the 128-voxel crop): a real unknown region.
    lits = read_nifti(cases["lits-117-crop"]["labels_path"], kind="labels")
    unknown = lits.array == UNKNOWN
    assert unknown.sum() > 1000
    for seed in (0, 1):
        out, _ = ElasticDeformation().apply(lits, ElasticParams(seed, 12.0, 35.0))
        assert (out.array[unknown] == UNKNOWN).mean() >= 0.9
        # and unknown does not spread into known tissue either
        assert (out.array[~unknown] == UNKNOWN).mean() <= 0.1


def test_synthetic_unknown_block_survives_deformation(labels):
    array = labels.array.copy()
    array[20:32, 20:32, 25:35] = UNKNOWN  # inside the body: "not known here"
    block = np.zeros_like(array, dtype=bool)
    block[20:32, 20:32, 25:35] = True
    out, _ = ElasticDeformation().apply(labels.with_array(array), ElasticParams(5, 10.0, 35.0))
    assert (out.array[block] == UNKNOWN).mean() >= 0.9
