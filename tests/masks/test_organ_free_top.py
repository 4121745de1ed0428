"""The mask sampler's organ-free top slices (``MaskSamplerConfig.organ_free_top``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from guidegen.labels.vocabulary import ID, ORGANS
from guidegen.masks.sampler import VolumetricMaskSampler, organ_free_top_mask
from tests.pipeline.conftest import tiny_mask_config

ORGAN_IDS = [ID[name] for name in (*ORGANS, "tumour")]


def _maps(sampler: VolumetricMaskSampler, top: int) -> np.ndarray:
    sampler.config = replace(sampler.config, organ_free_top=top)
    maps = sampler.sample_masks(
        "normal abdomen",
        n=3,
        seed=5,
        precision="fp32",
        backend="torch",
        clean=False,
        tumour_placement="network",
        organ_sizes="network",
        aorta_placement="network",
    )
    return np.stack([m.array for m in maps])


def test_sampling_draws_no_organ_in_the_organ_free_top_slices():
    torch.manual_seed(0)
    sampler = VolumetricMaskSampler(tiny_mask_config(sample_steps=4))
    free = _maps(sampler, 0)
    capped = _maps(sampler, 2)
    # The untrained network draws organs everywhere, the top slices included ...
    assert np.isin(free[..., -2:], ORGAN_IDS).any()
    # ... and with the two top slices organ-free it draws none there, but still draws the other
    # classes there and organs below them.
    assert not np.isin(capped[..., -2:], ORGAN_IDS).any()
    assert np.isin(capped[..., -2:], [ID["background"], ID["body"], ID["bone"], ID["aorta"]]).any()
    assert np.isin(capped[..., :-2], ORGAN_IDS).any()


def test_organ_free_mask_leaves_classes_of_a_newer_vocabulary_allowed():
    config = tiny_mask_config(num_classes=23, organ_free_top=3)
    mask = organ_free_top_mask(config)
    assert mask.shape == (1, 23, 1, 1, config.shape[2])
    assert mask[0, ID["liver"], 0, 0, -3:].all() and not mask[0, ID["liver"], 0, 0, :-3].any()
    assert mask[0, ID["tumour"], 0, 0, -1]
    for allowed in ("background", "body", "bone", "aorta", "inferior_vena_cava", "lung", "heart", "muscle"):
        assert not mask[0, ID[allowed]].any(), allowed
    assert organ_free_top_mask(tiny_mask_config()) is None


def test_organ_free_top_is_validated():
    with pytest.raises(ValueError, match="organ_free_top"):
        tiny_mask_config(organ_free_top=8)  # the whole 8-slice grid
    with pytest.raises(ValueError, match="organ_free_top"):
        tiny_mask_config(organ_free_top=-1)
