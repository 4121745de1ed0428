from __future__ import annotations

import pytest
import torch

from guidegen.data.prepare import PrepareConfig, prepare
from guidegen.diffusion.flow import FlowConfig
from guidegen.images.config import ImageGeneratorConfig
from guidegen.images.generator import ConditionalImageGenerator

#: Real data at toy resolution: 32 × 32 voxels of 12 mm in-plane (384 mm, as the 128² model sees).
TINY_SPACING = (12.0, 12.0, 12.0)


def tiny_config(**changes) -> ImageGeneratorConfig:
    base = dict(image_size=32, spacing=TINY_SPACING, channels=(8, 16), num_res_blocks=1, norm_num_groups=8,
                num_head_channels=8, context_dim=16, flow_steps=2, precision="fp32", batch_size=4, steps=6,
                warmup_steps=2, checkpoint_every=3, log_every=2, ema_decay=0.9, flow=FlowConfig())
    base.update(changes)
    return ImageGeneratorConfig(**base)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, real):
    """totalseg-example-a (CT + 16 classes) and msd-spleen-8 (spleen only: partial labels), at 12 mm."""
    out = tmp_path_factory.mktemp("tiny_prepared")
    result = prepare([real / "totalseg-example-a", real / "msd-spleen-8"], out,
                     PrepareConfig(spacing=TINY_SPACING, size_xy=(32, 32)), progress=False)
    assert not result.failed
    return out


@pytest.fixture()
def tiny_model() -> ConditionalImageGenerator:
    """A tiny generator with random weights (MONAI zero-initialises the output conv: perturb it all)."""
    model = ConditionalImageGenerator(tiny_config())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()
