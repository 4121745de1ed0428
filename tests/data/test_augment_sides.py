"""The mask sampler's training augmentation never mirrors left and right (issue 24): after the
recipe's elastic deformation, rigid jitter and organ scaling, every organ stays on its side."""

from __future__ import annotations

from dataclasses import replace

import pytest

from guidegen.data.augment import augment_case
from guidegen.evaluation.mask_anatomy import SIDES, side_check
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.examples import MaskExamples
from guidegen.text.sides import kidneys_swapped
from tests.sides_maps import abdomen, stored_lps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("store", [lambda v: v, stored_lps], ids=["RAS", "LPS"])
def test_training_augmentation_keeps_sides(seed, store):
    labels = store(abdomen())
    case = {"case_id": "synthetic", "labels": labels.array, "annotated": set(), "affine": labels.affine}
    recipe = MaskExamples([case], MaskSamplerConfig()).augmenters[0]  # the training recipe's chain
    every_step = replace(recipe, p_elastic=1.0, p_jitter=1.0, p_scaling=1.0, p_tumour=0.0)
    out, record = augment_case(labels, seed, every_step)
    assert [s["transform"] for s in record["steps"]][:2] == ["ElasticDeformation", "RigidJitter"]
    assert side_check(out) == dict.fromkeys(SIDES, True)
    assert not kidneys_swapped(out)
