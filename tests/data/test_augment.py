"""The augmentation recipe (`guidegen.data.augment`): chained operators, records and replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guidegen.data.augment import AugmentConfig, augment_case, augment_pair, params_from_json, params_to_json, replay
from guidegen.data.ops import ElasticDeformation, ElasticParams, TumourInsertion
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from tests.data.conftest import toy_site_of


def test_augment_case_record_replays(labels, ct, bank):
    config = AugmentConfig(
        p_elastic=1.0,
        p_jitter=1.0,
        p_scaling=1.0,
        max_scalings=1,
        p_tumour=1.0,
        tumour=TumourInsertion(bank, site_of=toy_site_of),
    )
    out, out_ct, record = augment_pair(labels, ct, 21, config)
    text = json.dumps(record)  # JSON-serialisable as is
    loaded = json.loads(text)
    names = [s["transform"] for s in loaded["steps"]]
    assert names == ["ElasticDeformation", "RigidJitter", "OrganScaling", "TumourInsertion"]
    for step in loaded["steps"]:
        assert params_to_json(params_from_json(step["transform"], step["params"])) == step["params"]
    again, again_ct = replay(labels, loaded, ct, config)
    np.testing.assert_array_equal(again.array, out.array)
    np.testing.assert_array_equal(again_ct.array, out_ct.array)
    assert loaded["volumes_ml"]["tumour"] > 0
    with pytest.raises(ValueError, match="input"):
        replay(out, loaded, config=config)


def test_augment_case_seeded_and_default_config(cases):
    lits = read_nifti(cases["lits-117-crop"]["labels_path"], kind="labels")
    a, rec_a = augment_case(lits, np.random.default_rng(3))
    b, rec_b = augment_case(lits, np.random.default_rng(3))
    np.testing.assert_array_equal(a.array, b.array)
    assert rec_a == rec_b
    json.dumps(rec_a)


def test_bad_arguments(labels):
    with pytest.raises(ValueError, match="amplitude_mm"):
        ElasticDeformation(amplitude_mm=(5.0, 1.0))
    with pytest.raises(ValueError, match="p_tumour"):
        AugmentConfig(p_tumour=2.0)
    with pytest.raises(ValueError, match="ct"):
        ElasticDeformation().apply(labels, ElasticParams(0, 5.0, 40.0), Volume(np.zeros((2, 2, 2)), np.eye(4)))
    with pytest.raises(ValueError, match="shapes"):
        TumourInsertion(shapes=[], hosts=("liver",))
    with pytest.raises(ValueError, match="hosts"):
        TumourInsertion(hosts=("lung",))
    with pytest.raises(ValueError, match="kind"):
        params_from_json("Nope", {})
