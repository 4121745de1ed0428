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
    base = dict(
        image_size=32,
        spacing=TINY_SPACING,
        channels=(8, 16),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        context_dim=16,
        flow_steps=2,
        precision="fp32",
        batch_size=4,
        steps=6,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=2,
        ema_decay=0.9,
        flow=FlowConfig(),
    )
    base.update(changes)
    return ImageGeneratorConfig(**base)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, real):
    """totalseg-example-a (CT + 16 classes) and msd-spleen-8 (spleen only: partial labels), at 12 mm."""
    out = tmp_path_factory.mktemp("tiny_prepared")
    result = prepare(
        [real / "totalseg-example-a", real / "msd-spleen-8"],
        out,
        PrepareConfig(spacing=TINY_SPACING, size_xy=(32, 32)),
        progress=False,
    )
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


#: HU the `ClassOracle` draws per class (every other class: 40 HU); unknown voxels: air.
ORACLE_HU = {"background": -1024.0, "body": -100.0, "liver": 60.0, "bone": 700.0, "lung": -850.0, "aorta": 170.0}


class ClassOracle(ConditionalImageGenerator):
    """A generator that draws every pixel at a fixed HU for the class of its label (`ORACLE_HU`).

    Its velocity ``(x_t − x0) / t`` makes the Euler solution exactly ``x0``, so the CT shows, voxel
    for voxel, which label the network was shown where: geometry can be tested without training.
    ``seen_annotated`` collects the annotated-class flags it was given.
    """

    def __init__(self, config: ImageGeneratorConfig | None = None):
        super().__init__(config or tiny_config())
        from guidegen.images.hu import hu_to_unit
        from guidegen.labels.vocabulary import NAMES

        levels = torch.tensor([ORACLE_HU.get(name, 40.0) for name in NAMES[: self.config.num_classes]])
        self.register_buffer("levels", hu_to_unit(levels).float(), persistent=False)
        self.unknown_level = float(hu_to_unit(torch.tensor(-1024.0)))
        self.seen_annotated: list[torch.Tensor] = []

    def forward(self, inputs, t, phase, annotated, text=None, uncond=None, levels=None):
        c = self.config
        start = 1 + c.context_radius * (c.num_classes + 1)  # the centre slice's one-hot channels
        onehot = inputs[:, start : start + c.num_classes]
        unknown = inputs[:, start + c.num_classes : start + c.num_classes + 1]
        x0 = torch.einsum("nkhw,k->nhw", onehot, self.levels).unsqueeze(1) + unknown * self.unknown_level
        self.seen_annotated.append(annotated.detach().clone())
        return (inputs[:, :1] - x0) / t.reshape(-1, 1, 1, 1)


@pytest.fixture()
def oracle_model() -> ClassOracle:
    return ClassOracle().eval()
