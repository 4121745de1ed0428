"""Holding classes' expected counts through categorical sampling (``hold_classes``, issue 24)."""

from __future__ import annotations

import pytest
import torch

from guidegen.diffusion.categorical import CategoricalDiffusion, CategoricalDiffusionConfig
from guidegen.diffusion.categorical_sampling import ancestral_sample, hold_expected_counts


def test_hold_expected_counts_reaches_the_target_and_keeps_the_rest_in_proportion():
    logits = torch.randn(2, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    log_p = torch.log_softmax(logits, dim=1)
    classes = torch.tensor([1, 3])
    target = torch.tensor([[10.0, 4.0], [3.0, 20.0]])
    held = hold_expected_counts(log_p, classes, target, iterations=100, tolerance=0.01)
    p = held.exp()
    assert torch.allclose(p.sum(1), torch.ones(2, 6, 7), atol=1e-5)  # still a distribution per voxel
    assert torch.allclose(p[:, classes].sum((2, 3)), target, atol=0.011)
    # The default stops within half a voxel.
    assert torch.allclose(hold_expected_counts(log_p, classes, target).exp()[:, classes].sum((2, 3)), target, atol=0.5)
    # The classes not held keep their ratios to one another in every voxel.
    before, after = log_p[:, [0, 2, 4]], held[:, [0, 2, 4]]
    assert torch.allclose(after - after[:, :1], before - before[:, :1], atol=1e-5)


def test_each_map_of_a_batch_is_fitted_as_if_alone():
    # One map already at its target, one far from it: the first must not take the second's iterations
    # (the sampler promises that a map does not depend on the rest of its batch).
    log_p = torch.log_softmax(torch.randn(2, 4, 500, generator=torch.Generator().manual_seed(3)), dim=1)
    classes = torch.tensor([0, 2])
    first = log_p[:1, classes].exp().sum(-1) + 0.3
    second = log_p[1:, classes].exp().sum(-1) * torch.tensor([1.8, 0.4])
    batch = hold_expected_counts(log_p, classes, torch.cat([first, second]))
    assert torch.equal(batch[:1], hold_expected_counts(log_p[:1], classes, first))
    assert torch.equal(batch[1:], hold_expected_counts(log_p[1:], classes, second))


class _Drifting:
    """p(x0 | xt): class 0 everywhere at t = T, then class 1 or 2 with p(1) growing as sampling goes on.

    From noise it expects half the voxels in each of 1 and 2; every later call tips the balance
    towards 1, as a network does whose one class takes over its neighbour's place step after step.
    """

    def __init__(self, size: int):
        self.calls = 0
        # Voxels differ (as a network's do), so that a matched argmax has something to rank.
        self.spread = torch.randn(size, generator=torch.Generator().manual_seed(1))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tilt = 0.0 if self.calls == 0 else 2.2  # log-odds of 1 against 2: p(1) about 0.5, then about 0.87
        self.calls += 1
        logits = torch.stack([torch.full_like(self.spread, -20.0), tilt + self.spread, torch.zeros_like(self.spread)])
        return logits.unsqueeze(0).expand(x.shape[0], -1, -1).contiguous()


@pytest.mark.parametrize("final", ["sample", "matched"])
def test_held_classes_keep_the_first_predictions_share(final):
    diffusion = CategoricalDiffusion(CategoricalDiffusionConfig(num_classes=3, num_timesteps=50))
    size = 4000

    def run(hold):
        return ancestral_sample(
            diffusion,
            _Drifting(size),
            (1, size),
            generator=torch.Generator().manual_seed(0),
            steps=10,
            final=final,
            hold_classes=hold,
        )

    drifted = (run(()) == 1).float().mean()
    held = (run([1, 2]) == 1).float().mean()
    assert drifted > 0.8
    assert abs(held - 0.5) < 0.04


def test_hold_classes_must_be_class_indices():
    diffusion = CategoricalDiffusion(CategoricalDiffusionConfig(num_classes=3, num_timesteps=10))
    with pytest.raises(ValueError, match="hold_classes"):
        ancestral_sample(diffusion, _Drifting(8), (1, 8), steps=2, hold_classes=[3])
