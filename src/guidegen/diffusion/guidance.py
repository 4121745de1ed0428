"""Classifier-free guidance for categorical predictions.

Classifier-free guidance (J. Ho, T. Salimans, "Classifier-Free Diffusion Guidance", 2022, eq. 6)
extrapolates from the unconditional towards the conditional prediction. For a network that
predicts a categorical distribution over ``x_0`` the natural place to do this is log-probability
space, where it is a geometric combination of the two distributions::

    log p_w(x_0 | x_t, c) = log p(x_0 | x_t) + w [log p(x_0 | x_t, c) − log p(x_0 | x_t)] + const

i.e. ``p_w ∝ p_u^{1−w} p_c^{w}``; ``w = 1`` is the conditional model, ``w = 0`` the unconditional
one and ``w > 1`` sharpens towards the condition. (Ho & Salimans write ``1 + w`` for this ``w``.)
The sampler itself stays unaware of guidance: wrap the network in a ``model_fn`` that calls it
twice and combines the logits here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["guided_logits"]


def guided_logits(cond_logits: Tensor, uncond_logits: Tensor, scale: float) -> Tensor:
    """Combine conditional and unconditional logits in log-probability space.

    Args:
        cond_logits: (N, K, *S) logits over ``K`` classes given the condition.
        uncond_logits: (N, K, *S) logits without the condition (same shape).
        scale: guidance weight ``w`` (finite); 1 returns the conditional distribution.

    Returns:
        (N, K, *S) float32 normalised log-probabilities ``log_softmax(ℓ_u + w (ℓ_c − ℓ_u))`` with
        ``ℓ = log_softmax(logits)``; usable wherever logits are expected.
    """
    if tuple(cond_logits.shape) != tuple(uncond_logits.shape):
        raise ValueError(
            f"cond_logits and uncond_logits must have the same shape, got {tuple(cond_logits.shape)} "
            f"and {tuple(uncond_logits.shape)}"
        )
    if cond_logits.ndim < 2:
        raise ValueError(f"logits must have shape (N, K, *spatial), got {tuple(cond_logits.shape)}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    log_c = torch.log_softmax(cond_logits.float(), dim=1)
    log_u = torch.log_softmax(uncond_logits.float(), dim=1)
    return torch.log_softmax(log_u + scale * (log_c - log_u), dim=1)
