"""Tiny random-weight models for the pipeline's plumbing (quality is measured elsewhere)."""

from __future__ import annotations

import pytest
import torch

from guidegen.images.generator import ConditionalImageGenerator
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.sampler import VolumetricMaskSampler
from tests.images.conftest import tiny_config


def tiny_mask_config(**changes) -> MaskSamplerConfig:
    """An untrained-size 16×16×8 mask sampler config (24/40 mm), 18 classes."""
    options = dict(
        shape=(16, 16, 8),
        spacing=(24.0, 24.0, 40.0),
        channels=(8, 16),
        attention_levels=(False, True),
        num_head_channels=8,
        norm_num_groups=8,
        max_text_tokens=16,
        sample_steps=3,
        # The first vocabulary's 18 classes: a sampler of an older vocabulary beside a current image
        # generator, as the shipped model is; untrained at 23 classes, its maps come out empty.
        num_classes=18,
    )
    return MaskSamplerConfig(**{**options, **changes})


def make_tiny_model(root):
    """Write a model folder: an untrained 16×16×8 mask sampler (24/40 mm) and a 32² image generator."""
    torch.manual_seed(0)
    VolumetricMaskSampler(tiny_mask_config()).save_pretrained(root / "mask_sampler")
    image = ConditionalImageGenerator(tiny_config())
    with torch.no_grad():  # MONAI zero-initialises the output conv: perturb everything
        for p in image.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    image.save_pretrained(root / "image_generator")
    (root / "model.json").write_text('{"model_id": "tiny-test", "version": "0"}', encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random-weight model folder (`make_tiny_model`)."""
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")
