"""The mask sampler's count term in training (``MaskSamplerConfig.count_weight`` / ``count_classes``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from guidegen.masks.train import train_mask_sampler
from tests.conftest import REPO
from tests.pipeline.conftest import tiny_mask_config


def test_count_fields_are_checked_and_off_by_default():
    assert tiny_mask_config().count_weight == 0.0 and tiny_mask_config().count_classes == ()
    with pytest.raises(ValueError, match="count_classes.*liverr"):
        tiny_mask_config(count_classes=("liverr",))
    with pytest.raises(ValueError, match="background"):
        tiny_mask_config(count_classes=("liver", "background"))
    with pytest.raises(ValueError, match="count_weight"):
        tiny_mask_config(count_weight=-0.1)


def test_the_count_term_is_trained_and_logged(tmp_path):
    config = tiny_mask_config(
        shape=(24, 24, 16),
        spacing=(16.0, 16.0, 20.0),  # `guidegen prepare` takes voxels up to 20 mm
        steps=2,
        warmup=1,
        checkpoint_every=2,
        precision="fp32",
        prepared_cache=str(tmp_path / "cache"),
        data_sources=("data/real/totalseg-example-a",),
        min_extent_mm=100.0,
    )
    counted = replace(config, count_weight=1.0, count_classes=("tumour", "liver"))
    plain_run = train_mask_sampler(config, tmp_path / "plain", progress=False, root=REPO, workers=0)
    counted_run = train_mask_sampler(counted, tmp_path / "counted", progress=False, root=REPO, workers=0)
    lines = [json.loads(s) for s in (counted_run / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["count"] > 0 for line in lines)
    assert "count" not in json.loads((plain_run / "log.jsonl").read_text().splitlines()[0])
    # Same seed, same examples and noise: only the count term differs, and it moves the weights.
    plain = load_file(str(plain_run / "model" / "model.safetensors"))
    with_count = load_file(str(counted_run / "model" / "model.safetensors"))
    assert any(not torch.equal(plain[k], with_count[k]) for k in plain)
