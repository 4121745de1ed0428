"""Growing a trained network to the vocabulary's newer classes (``init_from``): the grown network
starts out computing what the old one computed on the folded map, and training starts from it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from guidegen.checkpoint import save_checkpoint
from guidegen.errors import InputError
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.model import assemble_inputs, grown_weights, mask_channels
from guidegen.labels.vocabulary import ID, UNKNOWN, fold_for_model
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.model import MaskDenoiser
from guidegen.masks.model import grown_weights as grown_mask_weights
from guidegen.training import warm_start
from tests.images.conftest import tiny_config


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _labels(n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([0, ID["body"], ID["liver"], ID["lung"], ID["heart"], ID["muscle"], ID["other_vein"], UNKNOWN])
    return ids[torch.randint(len(ids), (n, 3, size, size), generator=g)]


def test_grown_image_generator_starts_where_the_old_one_was(tmp_path):
    old = _perturbed(ConditionalImageGenerator(tiny_config(num_classes=18, phase_prior=True)))
    save_checkpoint(tmp_path / "old", old.config, old.state_dict())
    new_config = dataclasses.replace(old.config, num_classes=23)
    new = ConditionalImageGenerator(new_config)
    assert warm_start(new, new_config, tmp_path / "old", grown_weights)["init_classes"] == 18
    new.eval()
    ctx = _labels()
    n = ctx.shape[0]
    noisy, prev = torch.randn(n, 1, 32, 32), torch.randn(n, 1, 32, 32)
    t, phase = torch.full((n,), 0.6), torch.tensor([1, 3])
    flag, z = torch.ones(n), torch.zeros(n)
    annotated_new = torch.ones(n, 23)
    annotated_old = torch.ones(n, 18)
    with torch.no_grad():
        out_old = old.net(
            assemble_inputs(noisy, mask_channels(torch.from_numpy(fold_for_model(ctx.numpy(), 18)), 18), prev, flag, z),
            t,
            phase,
            annotated_old,
        )
        out_new = new.net(assemble_inputs(noisy, mask_channels(ctx, 23), prev, flag, z), t, phase, annotated_new)
    torch.testing.assert_close(out_new, out_old, rtol=1e-4, atol=1e-4)
    # A fresh network of the same shape does not (the test can tell the difference).
    fresh = _perturbed(ConditionalImageGenerator(new_config), seed=5)
    with torch.no_grad():
        out_fresh = fresh.net(assemble_inputs(noisy, mask_channels(ctx, 23), prev, flag, z), t, phase, annotated_new)
    assert not torch.allclose(out_fresh, out_old, atol=1e-2)


def test_grown_mask_sampler_shares_the_old_class_probability(tmp_path):
    small = dict(shape=(16, 16, 16), channels=(8, 8), attention_levels=(False, True), num_head_channels=8)
    old = _perturbed(MaskDenoiser(MaskSamplerConfig(num_classes=18, **small)))
    save_checkpoint(tmp_path / "old", old.config, old.state_dict())
    new_config = dataclasses.replace(old.config, num_classes=23)
    new = MaskDenoiser(new_config)
    warm_start(new, new_config, tmp_path / "old", grown_mask_weights)
    new.eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.tensor([0, ID["body"], ID["liver"], ID["lung"], ID["muscle"]])[
        torch.randint(5, (1, 16, 16, 16), generator=g)
    ]
    x_new = torch.nn.functional.one_hot(ids, 23).permute(0, 4, 1, 2, 3).float()
    x_old = torch.nn.functional.one_hot(torch.from_numpy(fold_for_model(ids.numpy(), 18)), 18).permute(0, 4, 1, 2, 3)
    t = torch.tensor([300])
    with torch.no_grad():
        attributes = torch.zeros(1, old.attribute_mlp[0].in_features)
        p_old = old(x_old.float(), t, old.context(None, attributes)).softmax(1)
        p_new = new(x_new, t, new.context(None, attributes)).softmax(1)
    body_group = [ID["body"], *range(18, 23)]
    torch.testing.assert_close(p_new[:, body_group].sum(1), p_old[:, ID["body"]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p_new[:, ID["liver"]], p_old[:, ID["liver"]], rtol=1e-4, atol=1e-5)


def test_warm_start_refuses_another_network(tmp_path):
    old = ConditionalImageGenerator(tiny_config(num_classes=18, channels=(8, 8)))
    save_checkpoint(tmp_path / "old", old.config, old.state_dict())
    new_config = tiny_config()
    with pytest.raises(InputError, match="not the recipe's network"):
        warm_start(ConditionalImageGenerator(new_config), new_config, tmp_path / "old", grown_weights)
    bigger = ConditionalImageGenerator(tiny_config())
    save_checkpoint(tmp_path / "bigger", bigger.config, bigger.state_dict())
    older_config = tiny_config(num_classes=18)
    with pytest.raises(InputError, match="more than the recipe's"):
        warm_start(ConditionalImageGenerator(older_config), older_config, tmp_path / "bigger", grown_weights)


def test_mask_sampler_grown_to_attributes_in_the_time_embedding_starts_where_it_was(tmp_path):
    # 16 channels in 8 groups: MONAI adds the embedding before a group norm, which would cancel a
    # per-channel shift in groups of one channel.
    small = dict(shape=(16, 16, 16), channels=(16, 16), attention_levels=(False, True), num_head_channels=8)
    old = _perturbed(MaskDenoiser(MaskSamplerConfig(num_classes=18, **small)))
    save_checkpoint(tmp_path / "old", old.config, old.state_dict())
    new_config = dataclasses.replace(old.config, attributes_in_time_embedding=True)
    new = MaskDenoiser(new_config)
    warm_start(new, new_config, tmp_path / "old", grown_mask_weights)
    new.eval()
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.one_hot(torch.randint(18, (2, 16, 16, 16), generator=g), 18).permute(0, 4, 1, 2, 3).float()
    t = torch.tensor([300, 900])
    attributes = torch.rand(2, old.attribute_mlp[0].in_features, generator=g)
    with torch.no_grad():
        p_old = old(x, t, old.context(None, attributes))
        p_new = new(x, t, new.context(None, attributes))
    torch.testing.assert_close(p_new, p_old, rtol=0, atol=1e-6)
    # The path exists and is trainable: nudged away from zero, the attributes reach every block.
    with torch.no_grad():
        new.unet.class_embedding.weight.normal_(generator=g)
        assert not torch.allclose(new(x, t, new.context(None, attributes)), p_old, atol=1e-3)
    # The other way round (dropping a trained path) is another network.
    save_checkpoint(tmp_path / "grown", new_config, new.state_dict())
    with pytest.raises(InputError, match="not the recipe's network"):
        warm_start(MaskDenoiser(old.config), old.config, tmp_path / "grown", grown_mask_weights)
