"""The shipped default model: present, intact, within the size budget, and loadable."""

from __future__ import annotations

import json

from guidegen.checkpoint import verify_checkpoint
from guidegen.paths import default_model_dir
from guidegen.pipeline import GuideGen

DEFAULT_MODEL = default_model_dir()


def test_default_model_is_complete_and_small():
    assert (DEFAULT_MODEL / "MODEL_CARD.md").is_file()
    info = json.loads((DEFAULT_MODEL / "model.json").read_text())
    assert (
        info["model_id"] == "guidegen-demo"
        and "amos-0001-slices" in info["training_data"]["held_out_from_image_generator"]
    )
    # What ships: the local ONNX exports of guidegen.runtime (.runtime-cache/, git-ignored) do not.
    total = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*") if p.is_file() and ".runtime-cache" not in p.parts)
    assert total <= 60 * 1024**2, f"{total / 1024**2:.1f} MB"
    for part in ("mask_sampler", "image_generator"):
        verify_checkpoint(DEFAULT_MODEL / part)


def test_default_model_loads():
    gg = GuideGen.from_pretrained()
    assert gg.info["model_id"] == "guidegen-demo"
    assert gg.mask_sampler.config.shape == (48, 48, 40) and gg.image_generator.config.image_size == 128
