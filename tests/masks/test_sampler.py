from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from guidegen.errors import InputError
from guidegen.labels.vocabulary import ID, NUM_CLASSES, UNKNOWN
from guidegen.masks.conditioning import attribute_dim, attribute_vector
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.examples import MaskExamples
from guidegen.masks.sampler import VolumetricMaskSampler, keep_main_components
from guidegen.masks.train import load_base_cases, train_mask_sampler
from guidegen.settings import GenerationSettings
from guidegen.text.parse import parse_prompt
from guidegen.training import checkpoint_dirs
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return MaskSamplerConfig(
        shape=(32, 32, 24),
        spacing=(12.0, 12.0, 14.0),
        channels=(8, 16),
        attention_levels=(False, True),
        num_head_channels=8,
        norm_num_groups=8,
        max_text_tokens=16,
        steps=6,
        checkpoint_every=3,
        warmup=2,
        sample_steps=4,
        prepared_cache=str(cache),
        precision="bf16",
        data_sources=("data/real/totalseg-example-a", "data/real/masks-only"),
        min_extent_mm=100.0,
    )


def test_attribute_vector_separates_unknown_from_absent():
    unknown = attribute_vector(parse_prompt("abdominal CT"))
    none = attribute_vector(parse_prompt("no tumour"))
    colon = attribute_vector(parse_prompt("4 cm sigmoid colon cancer, mild splenomegaly"))
    assert unknown.shape == (attribute_dim(),)
    assert not np.array_equal(unknown, none) and not np.array_equal(none, colon)
    assert np.array_equal(attribute_vector(None), unknown)


def test_base_cases_are_aligned_and_partial(tiny):
    cases = load_base_cases(tiny, REPO)
    ids = {c["case_id"] for c in cases}
    assert ids == {"totalseg-example-a", "amos-0013-labels"}  # the lone colon-tumour mask has no organ
    for c in cases:
        assert c["labels"].shape == tiny.shape
        top = np.nonzero((c["labels"] == ID["liver"]).any(axis=(0, 1)))[0].max()
        assert top == tiny.shape[2] - 5
    amos = next(c for c in cases if c["case_id"] == "amos-0013-labels")
    assert "colon" not in amos["annotated"] and "tumour" in amos["annotated"]


def test_examples_are_reproducible_and_agree_with_their_text(tiny):
    examples = MaskExamples(load_base_cases(tiny, REPO), tiny)
    a, b = examples[5], examples[5]
    assert np.array_equal(a["labels"], b["labels"]) and a["text"] == b["text"]
    assert a["ignore_classes"].shape == (NUM_CLASSES,)
    for i in range(8):
        ex = examples[i]
        stated = ex["attributes"]
        if stated.tumours:  # the text says what the map holds
            hosts = {t.organ for t in stated.tumours}
            assert np.any(ex["labels"] == ID["tumour"]), ex["text"]
            assert hosts & {"liver", "kidney_right", "kidney_left", "pancreas", "colon", "spleen", "stomach", None}


def test_training_resume_is_exact_and_sampling_is_deterministic(tiny, tmp_path):
    full = train_mask_sampler(tiny, tmp_path / "full", progress=False, root=REPO, workers=0)
    part = tmp_path / "part"
    train_mask_sampler(tiny, part, progress=False, root=REPO, max_steps=3, workers=1)
    assert [p.name for p in checkpoint_dirs(part)] == ["step_00000003"]
    train_mask_sampler(tiny, part, progress=False, root=REPO, workers=0)
    w_full = load_file(str(full / "model" / "model.safetensors"))
    w_part = load_file(str(part / "model" / "model.safetensors"))
    assert w_full.keys() == w_part.keys()
    for k in w_full:
        torch.testing.assert_close(w_full[k], w_part[k], rtol=0, atol=0)

    sampler = VolumetricMaskSampler.from_pretrained(full / "model")
    one = sampler.sample_masks("4 cm liver tumour", n=2, seed=3)
    two = sampler.sample_masks("4 cm liver tumour", n=2, seed=3)
    other = sampler.sample_masks("4 cm liver tumour", n=2, seed=4)
    assert len(one) == 2 and one[0].shape == tiny.shape and one[0].array.dtype == np.uint8
    assert np.array_equal(one[0].array, two[0].array) and np.array_equal(one[1].array, two[1].array)
    assert not np.array_equal(one[0].array, other[0].array)
    # One seed rule: map i uses seed + i, whatever else is in the batch (here: map 1 of seed 3 is map 0 of seed 4),
    # up to floating-point rounding: the network runs on batches of another size, whose kernels may round
    # differently, and a voxel whose two classes are that close can flip (1–3 of 24 576 voxels were seen).
    assert np.mean(one[1].array != other[0].array) < 1e-3 and [v.meta["seed"] for v in one] == [3, 4]
    # Settings as one value or as keywords mean the same.
    by_value = sampler.sample_masks(
        "4 cm liver tumour", seed=3, settings=GenerationSettings(steps=2, tumour_placement="network")
    )
    by_name = sampler.sample_masks("4 cm liver tumour", seed=3, steps=2, tumour_placement="network")
    assert np.array_equal(by_value[0].array, by_name[0].array) and "tumour_placement" not in by_name[0].meta
    with pytest.raises(InputError, match="--steps"):
        sampler.sample_masks("4 cm liver tumour", steps=tiny.num_timesteps + 1)
    assert one[0].spacing == pytest.approx(tiny.spacing)
    # A changed config cannot silently resume an old run.
    with pytest.raises(InputError, match="another configuration"):
        train_mask_sampler(replace(tiny, lr=1.0), full, progress=False, root=REPO, workers=0)


def test_keep_main_components_removes_islands():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:5, 1:5] = ID["liver"]
    labels[8, 8, 8] = ID["liver"]
    labels[7:10, 7:10, 7:10][labels[7:10, 7:10, 7:10] == 0] = ID["body"]
    labels[8, 8, 8] = ID["liver"]
    out = keep_main_components(labels)
    assert out[8, 8, 8] == ID["body"] and (out == ID["liver"]).sum() == 64


def test_the_mask_diffusion_treats_unknown_voxels_as_unknown(tiny):
    """The diffusion knows no vocabulary: the mask sampler (and its training) name UNKNOWN for it."""
    from guidegen.masks.sampler import diffusion_from_config

    diffusion = diffusion_from_config(tiny)
    assert diffusion.config.ignore_index == UNKNOWN
    probs = diffusion.q_probs(torch.tensor([[ID["liver"], UNKNOWN]]), 0)
    assert probs[0, ID["liver"], 0] == 1.0
    torch.testing.assert_close(probs[0, :, 1], torch.full((tiny.num_classes,), 1.0 / tiny.num_classes))


def test_tumour_voxels_weigh_more_in_the_loss():
    from guidegen.masks.train import loss_voxel_weights

    x0 = torch.tensor([[ID["liver"], ID["tumour"], 255, 0]])
    assert loss_voxel_weights(x0, 255, 1.0).tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert loss_voxel_weights(x0, 255, 25.0).tolist() == [[1.0, 25.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="tumour_weight"):
        MaskSamplerConfig(tumour_weight=0.0)


def test_attributes_reach_every_block_through_the_time_embedding():
    from guidegen.masks.model import MaskDenoiser

    base = dict(
        shape=(16, 16, 16),
        channels=(8, 16),
        attention_levels=(False, True),
        num_head_channels=8,
        norm_num_groups=8,
        max_text_tokens=4,
    )
    torch.manual_seed(0)
    x = (
        torch.nn.functional.one_hot(torch.randint(0, NUM_CLASSES, (1, 16, 16, 16)), NUM_CLASSES)
        .permute(0, 4, 1, 2, 3)
        .float()
    )
    t = torch.tensor([500])
    text = torch.zeros(1, 4, 384)
    tumour = torch.from_numpy(attribute_vector(parse_prompt("5 cm liver tumour")))[None]
    old = MaskDenoiser(MaskSamplerConfig(**base))
    assert not any(k.startswith("unet.class_embedding") for k in old.state_dict())  # old checkpoints still load
    model = MaskDenoiser(MaskSamplerConfig(**base, attributes_in_time_embedding=True)).eval()
    with torch.no_grad():  # MONAI zero-initialises output and residual convolutions: randomise all
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    seen = []
    model.unet.class_embedding.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    ctx = model.context(text, tumour)
    with torch.no_grad():
        a = model(x, t, ctx)
        # The time-embedding path is live: changing only its map changes the output.
        model.unet.class_embedding.weight.add_(0.5)
        b = model(x, t, ctx)
    torch.testing.assert_close(seen[0], ctx[:, -1])  # it is fed the attribute token
    assert float((a - b).abs().max()) > 1e-4
