"""Contract tests of the rectified-flow maths (guidegen.diffusion.flow)."""

from __future__ import annotations

import pytest
import torch

from guidegen.config import config_from_dict, config_to_dict
from guidegen.diffusion.flow import (
    FlowConfig,
    add_noise,
    euler_sample,
    guided_velocity,
    predict_x0,
    sample_training_times,
    sampling_schedule,
    shift_times,
    velocity_from_x0,
    velocity_target,
)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(
        3, 1, 8, 8, generator=g, dtype=torch.float64
    )


def test_zero_noise_level_changes_nothing():
    x0, eps = _data()
    assert torch.equal(add_noise(x0, eps, 0.0), x0)
    assert torch.equal(add_noise(x0, eps, torch.zeros(3, dtype=torch.float64)), x0)
    assert torch.equal(add_noise(x0, eps, 1.0), eps)


def test_path_and_target_are_consistent():
    x0, eps = _data(1)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_t = add_noise(x0, eps, t)
    v = velocity_target(x0, eps)
    assert torch.allclose(predict_x0(x_t, v, t), x0, atol=1e-12)
    # The velocity is the time derivative of the path.
    h = 1e-6
    assert torch.allclose((add_noise(x0, eps, t + h) - x_t) / h, v, atol=1e-6)


def test_velocity_from_x0_inverts_predict_x0():
    x0, eps = _data(1)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_t = add_noise(x0, eps, t)
    torch.testing.assert_close(velocity_from_x0(x_t, x0, t), velocity_target(x0, eps).float())
    # Below min_t the division uses min_t.
    torch.testing.assert_close(velocity_from_x0(x_t, x0, t, min_t=0.5)[0], ((x_t - x0)[0] / 0.5).float())


@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_with_oracle_velocity_recovers_x0_exactly(steps, shift):
    x0, eps = _data(2)

    def oracle(x_t: torch.Tensor, t: float) -> torch.Tensor:
        return (x_t - x0) / t  # the true velocity ε − x0, computed from the current point

    seen = []
    out = euler_sample(oracle, eps, sampling_schedule(steps, shift), callback=lambda i, t, x: seen.append(t))
    assert torch.allclose(out, x0, atol=1e-10)
    assert len(seen) == steps and seen[-1] == 0.0


def test_schedule_and_shift():
    s = sampling_schedule(4)
    assert s.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = sampling_schedule(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert torch.all(shifted[1:-1] > s[1:-1])  # a shift > 1 spends more steps at high noise
    assert torch.all(shifted[1:] < shifted[:-1])
    t = torch.linspace(0, 1, 11)
    assert torch.equal(shift_times(t, 1.0), t)
    with pytest.raises(ValueError, match="steps"):
        sampling_schedule(0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        euler_sample(lambda x, t: x, torch.zeros(1), torch.tensor([1.0, 1.0, 0.0]))


def test_training_times_are_deterministic_per_seed():
    for mode in ("uniform", "logit_normal"):
        cfg = FlowConfig(time_sampling=mode)
        a = sample_training_times(64, cfg, torch.Generator().manual_seed(5))
        b = sample_training_times(64, cfg, torch.Generator().manual_seed(5))
        c = sample_training_times(64, cfg, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert torch.all((a > 0) & (a < 1))


def test_guidance():
    vc, vu = _data(3)
    assert torch.equal(guided_velocity(vc, vu, 1.0), vc)
    assert torch.equal(guided_velocity(vc, vu, 0.0), vu)
    assert torch.allclose(guided_velocity(vc, vu, 2.0), 2 * vc - vu)
    with pytest.raises(ValueError, match="scale"):
        guided_velocity(vc, vu, float("nan"))


def test_config_validation_and_json_round_trip():
    cfg = FlowConfig(time_sampling="uniform", shift=2.0)
    assert config_from_dict(FlowConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="time_sampling"):
        FlowConfig(time_sampling="beta")
    with pytest.raises(ValueError, match="shift"):
        FlowConfig(shift=0.0)
