"""Starting the mask sampler from a deformed real map (SDEdit; `guidegen.masks.start_maps`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guidegen.diffusion.categorical import CategoricalDiffusion, CategoricalDiffusionConfig
from guidegen.diffusion.categorical_sampling import ancestral_sample
from guidegen.errors import InputError
from guidegen.labels.vocabulary import ID, UNKNOWN
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.sampler import VolumetricMaskSampler, sampler_grid
from guidegen.masks.start_maps import (
    START_MAPS,
    build_start_maps,
    known_everywhere,
    load_start_maps,
    normal_sizes,
    save_start_maps,
    start_map,
)
from guidegen.settings import GenerationSettings
from tests.conftest import REPO


def _diffusion(k: int = 6) -> CategoricalDiffusion:
    return CategoricalDiffusion(CategoricalDiffusionConfig(num_classes=k, num_timesteps=100, ignore_index=255))


def test_a_sampler_from_an_intermediate_time_visits_only_the_times_below_it():
    d = _diffusion()
    assert d.timestep_sequence(4) == [100, 75, 50, 25, 0]
    assert d.timestep_sequence(4, start=40) == [40, 30, 20, 10, 0]
    assert d.timestep_sequence(None, start=3) == [3, 2, 1, 0]
    for steps, start in ((5, 4), (1, 0), (1, 101)):
        with pytest.raises(ValueError):
            d.timestep_sequence(steps, start=start)


def test_the_reverse_process_starts_from_the_given_map_carried_forward():
    d = _diffusion()
    k, shape = d.num_classes, (2, 12, 12, 6)
    start = torch.randint(0, k, shape, generator=torch.Generator().manual_seed(0))
    start[0, :2] = 255  # unknown voxels start from noise

    def uninformative(x_t, t):  # a denoiser that only trusts what it sees: knows no anatomy of its own
        return 10.0 * x_t

    def agreement(t):
        x = ancestral_sample(
            d,
            uninformative,
            shape,
            generator=torch.Generator().manual_seed(1),
            steps=min(5, t),
            start=start,
            start_t=t,
            final="sample",
        )
        known = start != 255
        return float((x[known] == start[known]).float().mean())

    early, late = agreement(5), agreement(100)
    assert early > 0.85, early  # little noise added: the map is mostly kept
    assert abs(late - 1 / k) < 0.05, late  # carried all the way: as from noise
    noise = ancestral_sample(d, uninformative, shape, generator=torch.Generator().manual_seed(1), steps=5)
    assert float((noise == start).float().mean()) < 0.3
    with pytest.raises(ValueError, match="together"):
        ancestral_sample(d, uninformative, shape, start=start)
    with pytest.raises(ValueError, match="labels of shape"):
        ancestral_sample(d, uninformative, shape, start=start[:1], start_t=5)


def _box_map(shape, spleen_ml: float, spacing) -> np.ndarray:
    """Body filling a grid of at least 32×32×20 with a liver block and a spleen cube of about ``spleen_ml``."""
    m = np.full(shape, ID["body"], dtype=np.uint8)
    m[2:22, 2:10, 1:19] = ID["liver"]  # ~1.5 L at 8 mm: normal
    side = max(1, round((spleen_ml * 1000 / float(np.prod(spacing))) ** (1 / 3)))
    m[-2 - side : -2, -2 - side : -2, 1 : 1 + side] = ID["spleen"]
    return m


def test_a_start_map_is_a_healthy_template():
    spacing = (8.0, 8.0, 8.0)
    big = _box_map((32, 32, 20), 900.0, spacing)
    assert (big == ID["spleen"]).sum() * 0.512 > 700
    fixed = normal_sizes(big, spacing)
    spleen_ml = (fixed == ID["spleen"]).sum() * 0.512
    assert 70 <= spleen_ml <= 350, spleen_ml  # text.measure's normal range
    assert np.array_equal(fixed == ID["liver"], big == ID["liver"])  # the rest is left alone
    normal = _box_map((32, 32, 20), 200.0, spacing)
    assert np.array_equal(normal_sizes(normal, spacing), normal)


def test_beyond_the_field_of_view_a_start_map_extends_no_organ():
    m = np.full((6, 6, 6), UNKNOWN, dtype=np.uint8)
    m[:, :, :3] = ID["body"]
    m[0, :, :3] = ID["background"]
    m[2:4, 2:4, :3] = ID["liver"]
    out = known_everywhere(m)
    assert not (out == UNKNOWN).any()
    assert np.array_equal(out[:, :, :3], m[:, :, :3])  # known voxels untouched
    assert not (out[:, :, 3:] == ID["liver"]).any()  # the liver is not continued past the scan ...
    assert (out[2:4, 2:4, 3:] == ID["body"]).all()  # ... its column is body for the network to fill
    assert (out[0, :, 3:] == ID["background"]).all()  # and outside the patient stays outside


@pytest.fixture(scope="module")
def sampler_with_bank(tmp_path_factory):
    from tests.pipeline.conftest import tiny_mask_config

    torch.manual_seed(0)
    config = tiny_mask_config(sample_steps=4)
    folder = tmp_path_factory.mktemp("sampler") / "mask_sampler"
    VolumetricMaskSampler(config).save_pretrained(folder)
    bank = np.stack([_box_map((32, 32, 20), s, (8.0, 8.0, 8.0))[8:24, 8:24, 6:14] for s in (150.0, 250.0)])
    bank[1, :, :, 0] = UNKNOWN
    save_start_maps(folder, bank, ["a", "b"], note="test bank")
    return folder, bank


def test_real_start_draws_a_deformed_bank_map_per_seed(sampler_with_bank):
    folder, bank = sampler_with_bank
    sampler = VolumetricMaskSampler.from_pretrained(folder)
    affine = sampler_grid(sampler.config)
    first, index = start_map(bank, affine, seed=7)
    again, index_again = start_map(bank, affine, seed=7)
    assert np.array_equal(first, again) and index == index_again  # a seed's own stream
    assert not np.array_equal(first, bank[index])  # deformed, not the bank map itself
    assert 0.5 < (first == bank[index]).mean() < 1.0
    settings = GenerationSettings(real_start=0.5, precision="fp32", backend="torch")
    maps = sampler.sample_masks("normal abdomen", n=3, seed=7, settings=settings)
    starts = [m.meta["start"] for m in maps]
    assert starts[0] == {"real_map": index, "strength": 0.5, "steps": 2}
    # The seed rule holds for the start too: map i of a batch is the map of seed + i alone.
    alone = sampler.sample_masks("normal abdomen", n=1, seed=9, settings=settings)[0]
    assert np.array_equal(alone.array, maps[2].array) and alone.meta["start"] == starts[2]
    # (What survives of the start map depends on a trained network; the sampler's own test above
    # shows the start carried forward with a denoiser that trusts what it sees.)
    noise = sampler.sample_masks("normal abdomen", seed=7, settings=settings.replace(real_start=None))[0]
    assert noise.meta["start"] == "noise"


def test_real_start_refuses_a_sampler_without_a_bank_or_a_damaged_one(sampler_with_bank, tmp_path):
    folder, bank = sampler_with_bank
    bare = tmp_path / "bare"
    sampler = VolumetricMaskSampler.from_pretrained(folder)
    sampler.save_pretrained(bare)
    with pytest.raises(InputError, match="start_maps.npz"):
        VolumetricMaskSampler.from_pretrained(bare).sample_masks("x", settings=GenerationSettings(real_start=0.5))
    save_start_maps(bare, bank, ["a", "b"])
    (bare / START_MAPS).write_bytes((bare / START_MAPS).read_bytes()[:-10])
    with pytest.raises(InputError, match="sha256"):
        load_start_maps(bare, sampler.config)
    save_start_maps(bare, bank[:, :8], ["a", "b"])
    with pytest.raises(InputError, match="shape"):
        load_start_maps(bare, sampler.config)


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.5, math.nan, True, "0.5"])
def test_real_start_strength_is_checked_once(bad):
    with pytest.raises(InputError, match="--real-start"):
        GenerationSettings(real_start=bad)


def test_the_shipped_bank_holds_full_maps_and_never_a_realism_reference():
    folder = REPO / "models" / "default" / "mask_sampler"
    sampler = VolumetricMaskSampler.from_pretrained(folder)
    bank = load_start_maps(folder, sampler.config)
    info = __import__("json").loads((folder / "start_maps.json").read_text())
    assert len(bank) == len(info["case_ids"]) >= 3
    assert not {"s0006", "s0012", "s0328"} & set(info["case_ids"])  # benchmarks/mask_realism.py's references
    for m in bank:
        present = set(np.unique(m).tolist())
        assert {ID[o] for o in ("liver", "spleen", "kidney_left", "kidney_right", "colon", "body")} <= present
        assert not (m == UNKNOWN).any()  # beyond the field of view filled (known_everywhere)


def test_build_keeps_only_maps_that_annotate_everything(tmp_path):
    config = MaskSamplerConfig(shape=(32, 32, 24), spacing=(12.0, 12.0, 14.0), min_extent_mm=100.0)
    maps, ids = build_start_maps(
        config, [REPO / "data/real/totalseg-example-a", REPO / "data/real/masks-only"], tmp_path / "cache"
    )
    # masks-only holds an AMOS map (no colon) and a lone tumour mask: neither is a full template.
    assert ids == ["totalseg-example-a"] and maps.shape == (1, 32, 32, 24)
    with pytest.raises(InputError, match="no source map"):
        build_start_maps(config, [REPO / "data/real/masks-only"], tmp_path / "cache2")


def test_case_json_and_prompt_json_say_where_the_sampler_started(tmp_path):
    import json

    from guidegen.cli import main
    from tests.pipeline.conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    cfg = VolumetricMaskSampler.from_pretrained(model / "mask_sampler").config
    bank = np.stack([_box_map((32, 32, 20), 200.0, (8.0, 8.0, 8.0))[8:24, 8:24, 6:14]])
    assert bank.shape[1:] == tuple(cfg.shape)
    save_start_maps(model / "mask_sampler", bank, ["box"])
    args = ["--prompt", "enlarged spleen", "--model", str(model), "--real-start", "0.7", "--precision", "fp32"]
    main(["generate", *args, "--out", str(tmp_path / "gen"), "-q"])
    case = json.loads((tmp_path / "gen" / "case_000000" / "case.json").read_text())
    steps = round(cfg.sample_steps * 0.7)
    assert case["mask_start"] == {"real_map": 0, "strength": 0.7, "steps": steps}
    assert case["sampling"]["mask_steps"] == steps and case["settings"]["real_start"] == 0.7
    main(["sample-masks", *args, "--out", str(tmp_path / "masks")])
    record = json.loads((tmp_path / "masks" / "prompt.json").read_text())
    assert record["start"] == [{"real_map": 0, "strength": 0.7, "steps": steps}] and record["steps"] == steps
