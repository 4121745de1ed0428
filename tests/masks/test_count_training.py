"""The mask sampler's count and host terms in training (``MaskSamplerConfig.count_weight`` /
``count_classes``, ``outside_host_weight``)."""

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
    assert tiny_mask_config().outside_host_weight == 0.0
    with pytest.raises(ValueError, match="outside_host_weight"):
        tiny_mask_config(outside_host_weight=float("nan"))


def test_the_count_and_host_terms_are_trained_and_logged(tmp_path):
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
        p_tumour=1.0,  # every example has a tumour, so the host term (items with one) has items
    )
    counted = replace(config, count_weight=1.0, count_classes=("tumour", "liver"))
    plain_run = train_mask_sampler(config, tmp_path / "plain", progress=False, root=REPO, workers=0)
    counted_run = train_mask_sampler(counted, tmp_path / "counted", progress=False, root=REPO, workers=0)
    placed_run = train_mask_sampler(
        replace(config, outside_host_weight=1.0), tmp_path / "placed", progress=False, root=REPO, workers=0
    )
    lines = [json.loads(s) for s in (counted_run / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["count"] > 0 and "outside_host" not in line for line in lines)
    # An untrained network spreads tumour probability everywhere, so the host term is positive.
    lines = [json.loads(s) for s in (placed_run / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["outside_host"] > 0 and "count" not in line for line in lines)
    assert not {"count", "outside_host"} & set(json.loads((plain_run / "log.jsonl").read_text().splitlines()[0]))
    # Same seed, same examples and noise: only the count term differs, and it moves the weights.
    plain = load_file(str(plain_run / "model" / "model.safetensors"))
    with_count = load_file(str(counted_run / "model" / "model.safetensors"))
    assert any(not torch.equal(plain[k], with_count[k]) for k in plain)
    with_host = load_file(str(placed_run / "model" / "model.safetensors"))
    assert any(not torch.equal(plain[k], with_host[k]) for k in plain)
