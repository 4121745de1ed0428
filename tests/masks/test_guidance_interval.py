"""The mask sampler's guidance interval: guidance (two network calls a step) only at high noise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from guidegen.masks.sampler import VolumetricMaskSampler
from guidegen.settings import GenerationSettings
from tests.pipeline.conftest import tiny_mask_config


class _Spy:
    """The compiled network, recording each call's batch size and time."""

    def __init__(self, network):
        self.network, self.calls = network, []
        self.backend, self.precision = network.backend, network.precision

    def __call__(self, x, t, context):
        self.calls.append((int(x.shape[0]), int(t.max())))
        return self.network(x, t, context)


def _sample(sampler, min_t):
    sampler.config = replace(sampler.config, guidance_min_t=min_t)
    spy = _Spy(sampler.network("torch", "fp32"))
    sampler.network = lambda backend="auto", precision="auto": spy
    settings = GenerationSettings(precision="fp32", backend="torch", guidance=2.0)
    maps = sampler.sample_masks(["normal abdomen", "enlarged spleen"], seed=3, settings=settings, clean=False)
    del sampler.network
    return spy.calls, np.stack([m.array for m in maps])


def test_guidance_runs_only_at_and_above_its_interval():
    torch.manual_seed(0)
    sampler = VolumetricMaskSampler(tiny_mask_config(sample_steps=8))
    calls_all, maps_all = _sample(sampler, 0.0)
    assert [b for b, _ in calls_all] == [4] * 8  # every step: conditional and unconditional, batch 2 each
    calls, maps = _sample(sampler, 0.5)
    T = sampler.config.num_timesteps
    assert [b for b, _ in calls] == [4 if t >= 0.5 * T else 2 for _, t in calls]
    assert 0 < sum(b == 2 for b, _ in calls) < len(calls)
    # The guided high-noise steps are the same calls; only the late steps differ.
    assert [t for _, t in calls] == [t for _, t in calls_all]
    assert maps.shape == maps_all.shape


def test_guidance_interval_is_validated():
    with pytest.raises(ValueError, match="guidance_min_t"):
        tiny_mask_config(guidance_min_t=1.5)
