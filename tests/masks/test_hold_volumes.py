"""The mask sampler's held class volumes (``MaskSamplerConfig.hold_volumes``)."""

from __future__ import annotations

import json

import pytest
import torch

import guidegen.masks.sampler as sampler_module
from guidegen.config import load_config, save_config
from guidegen.labels.vocabulary import ID
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.sampler import VolumetricMaskSampler
from tests.pipeline.conftest import tiny_mask_config


def test_hold_volumes_names_classes_of_the_sampler():
    with pytest.raises(ValueError, match="hold_volumes.*spleen_x"):
        tiny_mask_config(hold_volumes=("spleen_x",))
    with pytest.raises(ValueError, match="hold_volumes.*lung"):
        tiny_mask_config(hold_volumes=("lung",))  # a class of the newer vocabulary: id 18 of 18


def test_hold_volumes_round_trips_through_the_saved_config(tmp_path):
    config = tiny_mask_config(hold_volumes=("colon", "small_bowel"))
    save_config(config, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["hold_volumes"] == ["colon", "small_bowel"]
    assert load_config(MaskSamplerConfig, tmp_path / "config.json") == config
    assert tiny_mask_config().hold_volumes == ()  # older configs: nothing held


def test_sampling_holds_the_configured_classes(monkeypatch):
    seen = []
    real = sampler_module.ancestral_sample

    def spy(*args, **kwargs):
        seen.append(list(kwargs["hold_classes"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler_module, "ancestral_sample", spy)
    torch.manual_seed(0)
    for hold in ((), ("colon", "small_bowel")):
        sampler = VolumetricMaskSampler(tiny_mask_config(hold_volumes=hold))
        maps = sampler.sample_masks("normal abdomen", seed=1, precision="fp32", backend="torch")
        assert maps[0].array.shape == (16, 16, 8)
    assert seen == [[], [ID["colon"], ID["small_bowel"]]]
