"""The shipped default model: present, intact, within the size budget, and loadable."""

from __future__ import annotations

import hashlib
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
    for part in ("mask_sampler", "image_generator", "tumour_stage"):
        verify_checkpoint(DEFAULT_MODEL / part)


def test_default_model_loads():
    gg = GuideGen.from_pretrained()
    assert gg.info["model_id"] == "guidegen-demo"
    assert gg.mask_sampler.config.shape == (48, 48, 40) and gg.image_generator.config.image_size == 128
    # The optional learned tumour stage sits beside the sampler, on its grid.
    assert gg.mask_sampler.tumour_stage().config.shape == gg.mask_sampler.config.shape


def test_the_mask_sampler_never_trained_on_the_realism_maps():
    # The realism reference (benchmarks/mask_realism.py: s0006, s0012, s0328) must stay out of the
    # shipped sampler's recipe, and model.json must name the recipe file the weights came from.
    info = json.loads((DEFAULT_MODEL / "model.json").read_text())
    entry = info["recipes"]["mask_sampler"]
    recipe = DEFAULT_MODEL.parents[1] / "recipes" / entry["file"]
    assert hashlib.sha256(recipe.read_bytes()).hexdigest()[:16] == entry["sha256_16"]
    held_out = info["training_data"]["held_out_from_mask_sampler"]
    sources = json.loads(recipe.read_text())["data_sources"]
    shipped = json.loads((DEFAULT_MODEL / "mask_sampler" / "config.json").read_text())["data_sources"]
    assert sources == shipped
    assert "data/real/totalseg-dataset" not in sources  # the whole folder would take the held-out maps in
    for subject in ("s0006", "s0012", "s0328"):
        assert any(h.endswith(subject) for h in held_out)
        assert not any(subject in s for s in sources)


def test_the_tumour_stage_never_trained_on_the_realism_maps():
    info = json.loads((DEFAULT_MODEL / "model.json").read_text())
    entry = info["recipes"]["tumour_stage"]
    recipe = DEFAULT_MODEL.parents[1] / "recipes" / entry["file"]
    assert hashlib.sha256(recipe.read_bytes()).hexdigest()[:16] == entry["sha256_16"]
    sources = json.loads(recipe.read_text())["data_sources"]
    shipped = json.loads((DEFAULT_MODEL / "tumour_stage" / "config.json").read_text())["data_sources"]
    assert sources == shipped
    for subject in ("s0006", "s0012", "s0328"):
        assert not any(subject in s for s in sources)
