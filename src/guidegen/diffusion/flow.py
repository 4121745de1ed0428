"""Rectified flow: the maths of a straight-path continuous-time generative model, and nothing else.

References:
    [L23] X. Liu, C. Gong, Q. Liu. "Flow Straight and Fast: Learning to Generate and Transfer Data
        with Rectified Flow". ICLR 2023.
    [E24] P. Esser et al. "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"
        (Stable Diffusion 3). ICML 2024 — logit-normal time sampling (§3.1) and the resolution-
        dependent timestep shift (§5.3.2).
    [HS22] J. Ho, T. Salimans. "Classifier-Free Diffusion Guidance". 2022.

Conventions (the direction used by [E24] and MONAI's ``RFlowScheduler``):

* ``t ∈ [0, 1]``; ``t = 0`` is the data ``x_0``, ``t = 1`` is pure Gaussian noise ``ε``.
* Forward path (straight line, [L23] eq. 1)::

      x_t = (1 − t) · x_0 + t · ε

* The network predicts the velocity ``v(x_t, t) ≈ dx_t/dt = ε − x_0`` and is trained with
  ``E ‖v_θ(x_t, t) − (ε − x_0)‖²``.
* Sampling integrates the ODE from ``t = 1`` down to ``t = 0`` with explicit Euler steps on a
  decreasing schedule ``1 = t_0 > t_1 > … > t_n = 0``::

      x_{t_{i+1}} = x_{t_i} + (t_{i+1} − t_i) · v(x_{t_i}, t_i)

  Because the path is a straight line, a perfect velocity field makes Euler exact in any number
  of steps (the tests check this).
* Timestep shift ([E24] eq. 23) with factor ``s ≥ 1`` spends more steps at high noise, which
  images with more pixels (more redundancy) need::

      t' = s·t / (1 + (s − 1)·t)

Nothing here is an ``nn.Module`` and nothing holds state: the schedule is rebuilt from a frozen
`FlowConfig` (MONAI's ``RFlowScheduler`` cannot be ``.to()``-ed or saved with a checkpoint).
All randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "FlowConfig",
    "add_noise",
    "euler_sample",
    "euler_step",
    "guided_velocity",
    "predict_x0",
    "sample_noise",
    "sample_training_times",
    "shift_times",
    "sampling_schedule",
    "velocity_from_x0",
    "velocity_target",
]

TimeSampling = Literal["uniform", "logit_normal"]


@dataclass(frozen=True)
class FlowConfig:
    """Settings of the rectified flow.

    Attributes:
        time_sampling: distribution of ``t`` during training: ``"uniform"`` on (0, 1), or
            ``"logit_normal"`` (``t = sigmoid(m + s·n)``, n ~ N(0, 1); [E24] §3.1), which puts more
            training weight on intermediate times where the velocity is hardest to predict.
        logit_mean, logit_std: ``m`` and ``s`` of the logit-normal distribution.
        shift: timestep shift factor ``s ≥ 1`` applied both to training times and to the sampling
            schedule (1 = no shift).
        time_scale: the network receives ``t · time_scale`` (MONAI's sinusoidal timestep embedding
            was designed for integer steps 0…1000; feeding raw ``t ∈ [0, 1]`` would use only its
            lowest frequencies).
    """

    time_sampling: TimeSampling = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {self.time_sampling!r}")
        if not math.isfinite(self.logit_mean):
            raise ValueError(f"logit_mean must be finite, got {self.logit_mean!r}")
        if not (math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ValueError(f"logit_std must be a positive number, got {self.logit_std!r}")
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be a positive number, got {self.shift!r}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, got {self.time_scale!r}")


def _broadcast_time(t: Tensor | float, like: Tensor) -> Tensor:
    """``t`` as a tensor broadcastable against ``like`` (N, ...): a scalar or one value per sample."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or have shape (N,) = ({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """The point ``x_t = (1 − t)·x_0 + t·ε`` on the straight path ([L23] eq. 1).

    Args:
        x0: (N, ...) clean data.
        noise: (N, ...) standard Gaussian noise ``ε``, same shape as ``x0``.
        t: scalar or (N,) times in [0, 1]; ``t = 0`` returns ``x0`` unchanged.

    Returns:
        (N, ...) noisy data.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    tt = _broadcast_time(t, x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The regression target ``v = ε − x_0`` (the constant velocity of the straight path)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    return noise - x0


def predict_x0(x_t: Tensor, velocity: Tensor, t: Tensor | float) -> Tensor:
    """Clean-data estimate ``x̂_0 = x_t − t·v`` (follows from ``x_t = x_0 + t·(ε − x_0)``)."""
    return x_t - _broadcast_time(t, x_t) * velocity


def velocity_from_x0(x_t: Tensor, x0: Tensor, t: Tensor | float, min_t: float = 0.0) -> Tensor:
    """Inverse of `predict_x0`: the velocity ``v = (x_t − x̂_0) / t`` of a clean-data estimate.

    ``t`` is floored at ``min_t`` in the division (at ``t → 0`` it would magnify any error of
    ``x̂_0`` without bound). Computed in float32 whatever the inputs' dtype, so that the division
    adds no low-precision rounding of its own.
    """
    x_t, x0 = x_t.float(), x0.float()
    return (x_t - x0) / _broadcast_time(t, x_t).clamp_min(min_t)


def shift_times(t: Tensor, shift: float) -> Tensor:
    """Timestep shift ``t' = s·t / (1 + (s − 1)·t)`` ([E24] eq. 23); monotone, keeps 0 and 1 fixed."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def sample_training_times(
    n: int, config: FlowConfig, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Draw ``n`` training times in (0, 1) (float32, shape (n,)) from ``config.time_sampling``, then shift."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if config.time_sampling == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    else:
        z = torch.randn(n, generator=generator, device=device)
        t = torch.sigmoid(config.logit_mean + config.logit_std * z)
    return shift_times(t, config.shift)


def sample_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard Gaussian ``ε`` of the given shape drawn from ``generator``."""
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def sampling_schedule(steps: int, shift: float = 1.0) -> Tensor:
    """Decreasing float64 times ``t_0 = 1 > … > t_steps = 0`` (shape (steps + 1,)), uniform then shifted."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive number, got {shift!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift_times(t, shift)


def euler_step(x_t: Tensor, velocity: Tensor, t: float, t_next: float) -> Tensor:
    """One explicit Euler step ``x_{t_next} = x_t + (t_next − t)·v`` (``t_next < t`` when sampling)."""
    return x_t + (t_next - t) * velocity


VelocityFn = Callable[[Tensor, float], Tensor]


def euler_sample(
    velocity_fn: VelocityFn,
    noise: Tensor,
    schedule: Tensor,
    callback: Callable[[int, float, Tensor], None] | None = None,
) -> Tensor:
    """Integrate ``dx/dt = v(x, t)`` from ``x_1 = ε`` down the schedule to ``x_0`` (explicit Euler).

    Args:
        velocity_fn: ``v(x_t, t) → (N, ...)``; ``t`` is a Python float in [0, 1] (the caller scales
            it for its network). Guidance, conditioning and precision live inside this function.
        noise: (N, ...) start point ``x_1 = ε``.
        schedule: (n + 1,) decreasing times from 1 to 0, e.g. `sampling_schedule`.
        callback: called as ``callback(i, t_{i+1}, x_{t_{i+1}})`` after every step.

    Returns:
        (N, ...) the sample ``x_0`` (same dtype as ``noise``).
    """
    if schedule.ndim != 1 or schedule.numel() < 2:
        raise ValueError(f"schedule must be a 1-D tensor of at least 2 times, got shape {tuple(schedule.shape)}")
    times = [float(v) for v in schedule]
    if any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError("schedule must be strictly decreasing")
    x = noise
    for i, (t, t_next) in enumerate(zip(times, times[1:])):
        v = velocity_fn(x, t)
        x = euler_step(x, v.to(x.dtype), t, t_next)
        if callback is not None:
            callback(i, t_next, x)
    return x


def guided_velocity(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance ``v = v_u + s·(v_c − v_u)`` ([HS22] eq. 6 written with ``s = 1 + w``).

    ``s = 1`` returns ``v_cond`` exactly, ``s = 0`` the unconditional velocity, ``s > 1`` extrapolates
    towards the condition.
    """
    if v_cond.shape != v_uncond.shape:
        raise ValueError(
            f"v_cond and v_uncond must have the same shape, got {tuple(v_cond.shape)} and {tuple(v_uncond.shape)}"
        )
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if scale == 1.0:
        return v_cond
    return v_uncond + scale * (v_cond - v_uncond)
