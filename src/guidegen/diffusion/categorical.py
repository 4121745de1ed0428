"""Multinomial (uniform-transition categorical) diffusion over label volumes: the process.

This module holds the mathematics of the diffusion process — the noise schedule, forward noising
and the posteriors — and no network, in the style of a diffusers scheduler. The training loss is
in `guidegen.diffusion.categorical_loss` and the sampler in
`guidegen.diffusion.categorical_sampling`; both take a `CategoricalDiffusion` and a network, which
is any callable that maps a noisy one-hot volume and a timestep to logits over the clean volume.
Everything works on tensors of any device; the noise schedule is kept as float64 CPU tensors and
the few coefficients a call needs are gathered there and moved to the data's device, which keeps
the schedule exact and works on devices without float64.

References:
    [H21] E. Hoogeboom, D. Nielsen, P. Jaini, P. Forré, M. Welling. "Argmax Flows and Multinomial
        Diffusion: Learning Categorical Distributions". NeurIPS 2021.
    [A21] J. Austin, D. D. Johnson, J. Ho, D. Tarlow, R. van den Berg. "Structured Denoising
        Diffusion Models in Discrete State-Spaces" (D3PM). NeurIPS 2021.
    [ND21] A. Nichol, P. Dhariwal. "Improved Denoising Diffusion Probabilistic Models". ICML 2021.
    [S21] G. Shi, L. Xiao, Y. Chen, S. K. Zhou. "Marginal loss and exclusion loss for partially
        supervised multi-organ segmentation". Medical Image Analysis 70, 2021.
    [KS60] J. G. Kemeny, J. L. Snell. "Finite Markov Chains", §6.3 (lumpability). 1960.

Conventions:
    * Shapes: ``N`` batch, ``K`` classes, ``*S`` spatial dimensions (``D, H, W`` for volumes).
      A volume is either integer labels ``(N, *S)`` or class probabilities ``(N, K, *S)``.
    * Timesteps follow the papers: ``x_0`` is the data and ``t ∈ {1, …, T}`` indexes the noisy
      states, with ``ᾱ_0 = 1``. (Code that draws ``t`` with ``torch.randint(0, T)`` must add one;
      `CategoricalDiffusion.sample_timesteps` does it right.)
    * One forward step is ``q(x_t | x_{t-1}) = Cat(x_t; α_t x_{t-1} + (1 − α_t)/K)`` ([H21] eq. 11,
      [A21] eq. 2 with ``Q_t = α_t I + (1 − α_t) 𝟙𝟙ᵀ/K``). These matrices multiply by multiplying
      their ``α``: ``Q_{s+1} ⋯ Q_t = (ᾱ_t/ᾱ_s) I + (1 − ᾱ_t/ᾱ_s) 𝟙𝟙ᵀ/K``, which gives both the
      marginal ``q(x_t | x_0)`` (``s = 0``) and the jump used by the strided sampler.
    * Voxels labelled ``config.ignore_index`` have an unknown class (the caller names that label:
      GuideGen's mask sampler passes `guidegen.labels.vocabulary.UNKNOWN`, 255; the default, None,
      means every voxel is labelled). Where a distribution is needed for them (noising, posteriors)
      they are treated as uniform over the ``K`` classes — the prior that adds no information — and
      the loss ignores them entirely.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CategoricalDiffusion",
    "CategoricalDiffusionConfig",
    "Generators",
    "sample_categorical",
]


@dataclass(frozen=True)
class CategoricalDiffusionConfig:
    """Settings of a `CategoricalDiffusion`.

    Attributes:
        num_classes: ``K``, the number of classes (≥ 2).
        num_timesteps: ``T``, the number of diffusion steps.
        schedule: ``"cosine"`` — ``ᾱ_t = f(t)/f(0)``, ``f(t) = cos²(π/2 · (t/T + s)/(1 + s))``
            ([ND21] eq. 17, used for multinomial diffusion in [H21] §4) — or ``"linear"`` —
            ``β_t`` linear from ``linear_beta_start`` to ``linear_beta_end`` (DDPM), both scaled by
            ``1000/T`` so that the total amount of noise does not depend on ``T``.
        cosine_offset: ``s`` of the cosine schedule.
        linear_beta_start: ``β_1`` of the linear schedule for ``T = 1000``.
        linear_beta_end: ``β_T`` of the linear schedule for ``T = 1000``.
        max_beta: every ``β_t = 1 − α_t`` is clipped to at most this ([ND21] §3.2), which keeps the
            last steps of the cosine schedule from being singular.
        kl_weight: weight of the variational term of the loss (KL for ``t ≥ 2``, decoder NLL at
            ``t = 1``).
        ce_weight: weight of the auxiliary cross-entropy on ``x_0`` (the hybrid loss of [A21]
            eq. 5; [A21] used 0.001 with a summed KL, the GuideGen issue asks for equal weights).
        ignore_index: label value of voxels whose class is unknown (e.g. 255), or None when every
            voxel is labelled with a class in ``[0, K)``.
        background_class: the class that absorbs unannotated classes in partially labelled cases.
    """

    num_classes: int
    num_timesteps: int = 1000
    schedule: Literal["cosine", "linear"] = "cosine"
    cosine_offset: float = 0.008
    linear_beta_start: float = 1e-4
    linear_beta_end: float = 0.02
    max_beta: float = 0.999
    kl_weight: float = 1.0
    ce_weight: float = 1.0
    ignore_index: int | None = None
    background_class: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {self.num_timesteps!r}")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        if not self.cosine_offset >= 0:
            raise ValueError(f"cosine_offset must be >= 0, got {self.cosine_offset!r}")
        if not 0 < self.linear_beta_start <= self.linear_beta_end < 1:
            raise ValueError(
                "linear_beta_start and linear_beta_end must satisfy 0 < start <= end < 1, got "
                f"{self.linear_beta_start!r} and {self.linear_beta_end!r}"
            )
        if not 0 < self.max_beta <= 1:
            raise ValueError(f"max_beta must be in (0, 1], got {self.max_beta!r}")
        for name in ("kl_weight", "ce_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.ignore_index is not None and (
            not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool)
        ):
            raise ValueError(f"ignore_index must be an integer or None, got {self.ignore_index!r}")
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index ({self.ignore_index}) must not be a class id in [0, {self.num_classes})")
        if not 0 <= self.background_class < self.num_classes:
            raise ValueError(f"background_class must be in [0, {self.num_classes}), got {self.background_class!r}")


def sample_categorical(log_probs: Tensor, generator: Generators = None) -> Tensor:
    """Draw one class per voxel with the Gumbel-max trick.

    ``argmax_k (log p_k + g_k)`` with ``g_k = −log(−log u_k)``, ``u_k ~ U(0, 1)`` is a sample of
    ``Cat(p)``; it needs one uniform draw per class, so a seeded generator fixes the result.

    Args:
        log_probs: (N, K, *S) log-probabilities (or unnormalised logits); ``-inf`` is never drawn.
        generator: source of randomness (one, or one per batch item); may live on another device
            than ``log_probs``.

    Returns:
        (N, *S) int64 class indices on the device of ``log_probs``.
    """
    uniform = _rand(log_probs.shape, generator, log_probs.device)
    # u = 0 would give an infinite Gumbel draw; the smallest normal float is as good as 0.
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
    return torch.argmax(log_probs.float() + gumbel, dim=1)


#: One generator for the whole batch, or one per batch item (item i draws only from generator i,
#: so a volume does not depend on which other volumes share its batch).
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def _rand(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    # Draw on the generator's own device (a CPU generator cannot fill a CUDA tensor) and move.
    if generator is None:
        return torch.rand(tuple(shape), device=device)
    if isinstance(generator, torch.Generator):
        return torch.rand(tuple(shape), generator=generator, device=generator.device).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"need one generator per batch item ({shape[0]}), got {len(gens)}")
    return torch.cat([torch.rand((1, *shape[1:]), generator=g, device=g.device).to(device) for g in gens])


class CategoricalDiffusion:
    """Uniform-transition categorical diffusion: schedule, noising and posteriors.

    Stateless apart from the schedule; the same object serves training
    (`guidegen.diffusion.categorical_loss.categorical_loss`) and sampling
    (`guidegen.diffusion.categorical_sampling.ancestral_sample`) on any device. Not an
    ``nn.Module``: it has no parameters and nothing to save but its config.

    Args:
        config: the settings; see `CategoricalDiffusionConfig`.
    """

    def __init__(self, config: CategoricalDiffusionConfig):
        if not isinstance(config, CategoricalDiffusionConfig):
            raise ValueError(f"config must be a CategoricalDiffusionConfig, got {type(config).__name__}")
        self.config = config
        betas = schedule_betas(config)
        alphas = 1.0 - betas
        # Index 0 is x_0 itself: α_0 = ᾱ_0 = 1, so tables are indexed by the paper's t directly.
        one = torch.ones(1, dtype=torch.float64)
        self._alphas = torch.cat([one, alphas])
        self._alphas_cumprod = torch.cat([one, torch.cumprod(alphas, dim=0)])

    # ------------------------------------------------------------------ schedule

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    @property
    def alphas(self) -> Tensor:
        """(T + 1,) float64 ``α_t`` with ``α_0 = 1`` (a copy)."""
        return self._alphas.clone()

    @property
    def alphas_cumprod(self) -> Tensor:
        """(T + 1,) float64 ``ᾱ_t = ∏_{i ≤ t} α_i`` with ``ᾱ_0 = 1`` (a copy)."""
        return self._alphas_cumprod.clone()

    def sample_timesteps(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """(n,) int64 training timesteps drawn uniformly from ``{1, …, T}``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        gen_device = generator.device if generator is not None else device
        t = torch.randint(1, self.num_timesteps + 1, (n,), generator=generator, device=gen_device)
        return t.to(device) if device is not None else t

    def timestep_sequence(self, steps: int | None = None, start: int | None = None) -> list[int]:
        """The visited timesteps ``start = τ_0 > τ_1 > … > τ_steps = 0`` of a sampler.

        Args:
            steps: number of network evaluations; ``None`` or ``start`` visits every timestep,
                fewer spaces them evenly (rounded to integers).
            start: the first timestep, in ``[1, T]``; default ``T`` (sampling from noise). A
                sampler that starts from a noised volume (`q_sample` at ``start``) visits fewer.

        Returns:
            ``steps + 1`` strictly decreasing integers from ``start`` to ``0``.
        """
        T = self.num_timesteps
        start = T if start is None else start
        if not isinstance(start, int) or not 1 <= start <= T:
            raise ValueError(f"start must be an integer in [1, {T}], got {start!r}")
        if steps is None:
            steps = start
        if not isinstance(steps, int) or not 1 <= steps <= start:
            raise ValueError(f"steps must be an integer in [1, {start}], got {steps!r}")
        # Integer rounding of start·(steps − i)/steps; consecutive values differ by at least 1
        # because the spacing start/steps is at least 1.
        return [(2 * start * (steps - i) + steps) // (2 * steps) for i in range(steps + 1)]

    # ------------------------------------------------------------------ distributions

    def as_probs(self, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Class probabilities of a volume given as labels or as probabilities.

        Args:
            x: (N, *S) integer labels — `ignore_index` marks unknown voxels, which become the
                uniform distribution — or (N, K, *S) floating-point probabilities (returned as is,
                cast to ``dtype``).
            dtype: floating-point type of the result.

        Returns:
            (N, K, *S) probabilities.
        """
        if x.is_floating_point():
            if x.ndim < 2 or x.shape[1] != self.num_classes:
                raise ValueError(
                    f"a probability volume must have shape (N, {self.num_classes}, *spatial), got {tuple(x.shape)}"
                )
            return x.to(dtype)
        labels, unknown = self.split_unknown(x, "x")
        onehot = F.one_hot(labels, self.num_classes).movedim(-1, 1).to(dtype)
        if bool(unknown.any()):
            onehot = torch.where(unknown.unsqueeze(1), torch.full_like(onehot, 1.0 / self.num_classes), onehot)
        return onehot

    def q_probs(self, x0: Tensor, t: int | Tensor) -> Tensor:
        """Marginal of the forward process ``q(x_t | x_0) = Cat(x_t; ᾱ_t x_0 + (1 − ᾱ_t)/K)``.

        [H21] eq. 12; [A21] eq. 3 with ``Q̄_t = ᾱ_t I + (1 − ᾱ_t) 𝟙𝟙ᵀ/K``.

        Args:
            x0: (N, *S) labels or (N, K, *S) probabilities.
            t: timestep(s) in ``[0, T]``: an int or an (N,) / scalar integer tensor.

        Returns:
            (N, K, *S) float32 probabilities of ``x_t``.
        """
        p0 = self.as_probs(x0)
        t = self.check_timesteps(t, p0.shape[0], low=0)
        abar = per_item(self._alphas_cumprod[t], p0)
        flip = per_item((1.0 - self._alphas_cumprod[t]) / self.num_classes, p0)
        return abar * p0 + flip

    def q_sample(self, x0: Tensor, t: int | Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0)``.

        Args:
            x0: (N, *S) labels (unknown voxels are noised from the uniform distribution, i.e.
                ``x_t`` is uniform there) or (N, K, *S) probabilities.
            t: timestep(s) in ``[0, T]``.
            generator: seeded generator for reproducible draws.

        Returns:
            (N, *S) int64 labels of ``x_t``.
        """
        return sample_categorical(torch.log(self.q_probs(x0, t)), generator)

    def q_posterior(self, x_t: Tensor, x0: Tensor, t: int | Tensor, s: int | Tensor | None = None) -> Tensor:
        """True posterior ``q(x_s | x_t, x_0)`` for ``0 ≤ s < t`` (``s = t − 1`` by default).

        By Bayes' rule and the Markov property, with ``a = ᾱ_t/ᾱ_s`` the keep coefficient of the
        ``s → t`` transition::

            q(x_s | x_t, x_0) ∝ q(x_t | x_s) q(x_s | x_0)
                             = [a x_t + (1 − a)/K] ⊙ [ᾱ_s x_0 + (1 − ᾱ_s)/K]

        ([H21] eq. 13 for ``s = t − 1``, where ``a = α_t``; [A21] eq. 3.) The first factor is read
        as a function of ``x_s``: the uniform transition matrix is symmetric. At ``s = 0`` the
        second factor is ``x_0`` itself, so a one-hot ``x_0`` is returned unchanged.

        Args:
            x_t: (N, *S) labels or (N, K, *S) probabilities (one-hot for an observed state).
            x0: (N, *S) labels or (N, K, *S) probabilities of ``x_0``.
            t: timestep(s) in ``[1, T]``.
            s: earlier timestep(s) in ``[0, t)``; ``None`` means ``t − 1``.

        Returns:
            (N, K, *S) float32 probabilities of ``x_s``; they sum to one over ``K``.
        """
        xt = self.as_probs(x_t)
        p0 = self.as_probs(x0)
        t_, s_ = self._pair(t, s, xt.shape[0])
        return torch.exp(self.log_posterior(xt, safe_log(p0), t_, s_))

    def p_posterior(
        self, x_t: Tensor, model_x0_probs: Tensor, t: int | Tensor, s: int | Tensor | None = None
    ) -> Tensor:
        """Reverse model ``p_θ(x_s | x_t) = q(x_s | x_t, x̂_0)`` with the network's ``x̂_0``.

        [H21] eq. 14 / [A21] eq. 4 (the "x_0-parameterisation"): the same formula as
        `q_posterior` with the predicted distribution ``x̂_0 = p̂(x_0 | x_t)`` in place of ``x_0``.
        For the uniform transition this equals the D3PM marginal
        ``Σ_{x_0} q(x_s, x_t | x_0) p̂(x_0 | x_t)`` normalised. At ``s = 0`` the model is, as in
        both papers, the prediction itself, ``p_θ(x_0 | x_t) = p̂(x_0 | x_t)``, so that the decoder
        term of the loss is a plain cross-entropy.

        Args:
            x_t: (N, *S) labels or (N, K, *S) probabilities.
            model_x0_probs: (N, K, *S) predicted probabilities of ``x_0`` (softmax of the logits).
            t: timestep(s) in ``[1, T]``.
            s: earlier timestep(s) in ``[0, t)``; ``None`` means ``t − 1``.

        Returns:
            (N, K, *S) float32 probabilities of ``x_s``.
        """
        if not model_x0_probs.is_floating_point():
            raise ValueError("model_x0_probs must be floating-point probabilities of shape (N, K, *spatial)")
        xt = self.as_probs(x_t)
        p0 = self.as_probs(model_x0_probs)
        t_, s_ = self._pair(t, s, xt.shape[0])
        post = torch.exp(self.log_posterior(xt, safe_log(p0), t_, s_))
        at_zero = per_item(s_ == 0, post).bool()
        return torch.where(at_zero, p0, post)

    # ------------------------------------------------------------------ shared by loss and sampler

    def log_posterior(self, xt: Tensor, log_x0: Tensor, t: Tensor, s: Tensor, sizes: Tensor | None = None) -> Tensor:
        """``log q(x_s | x_t, x_0)`` from probabilities ``xt`` and log-probabilities ``log_x0``.

        Computes ``log([a x_t + (1 − a) ⟨x_t, m⟩/K] ⊙ [ᾱ_s x_0 + (1 − ᾱ_s) m/K])`` normalised
        over ``K``, where ``a = ᾱ_t/ᾱ_s`` and ``m`` are the block sizes (all one for the ordinary
        chain; see `guidegen.diffusion.categorical_loss.categorical_loss` for the lumped one; a
        class of size 0 has been lumped away and gets ``-inf``). The second factor is formed in log
        space, since ``x̂_0`` from a softmax may underflow; ``1 − a`` and ``1 − ᾱ_s`` are formed in
        float64 so that small ``β`` survive.

        Args:
            xt: (N, K, *S) probabilities of ``x_t``.
            log_x0: (N, K, *S) log-probabilities of ``x_0`` (``-inf`` allowed).
            t, s: (N,) int64 CPU timesteps with ``0 ≤ s < t ≤ T``.
            sizes: optional (N, K) block sizes ``m``.

        Returns:
            (N, K, *S) normalised log-probabilities of ``x_s``.
        """
        K = self.num_classes
        abar = self._alphas_cumprod
        keep = abar[t] / abar[s]
        f1_keep = per_item(keep, xt)
        f1_flip = per_item((1.0 - keep) / K, xt)
        abar_s = abar[s]
        log_keep0 = per_item(torch.log(abar_s), xt)
        flip0 = ((1.0 - abar_s) / K).view(-1, 1)  # (N, 1), float64
        if sizes is None:
            m = torch.ones(xt.shape[0], K, dtype=torch.float64)
            mass = torch.ones_like(xt[:, :1])
        else:
            m = sizes.to(torch.float64).cpu()
            mass = (xt * per_class(sizes.to(xt), xt)).sum(dim=1, keepdim=True)
        # log((1 − ᾱ_s) m/K): -inf where s = 0 or the class was lumped away (m = 0).
        log_flip0 = per_class(torch.log(flip0 * m).to(torch.float32), xt)
        lhs = log_x0 + log_keep0
        # logaddexp(-inf, -inf) has a NaN gradient: feed finite stand-ins there, restore -inf after.
        dead = torch.isneginf(lhs) & torch.isneginf(log_flip0)
        zero = torch.zeros((), dtype=lhs.dtype, device=lhs.device)
        log_f2 = torch.logaddexp(torch.where(dead, zero, lhs), torch.where(dead, zero, log_flip0))
        log_f2 = torch.where(dead, torch.full_like(log_f2, -math.inf), log_f2)
        log_f1 = torch.log(f1_keep * xt + f1_flip * mass)
        log_un = log_f1 + log_f2
        return log_un - torch.logsumexp(log_un, dim=1, keepdim=True)

    def split_unknown(self, x: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """Integer labels → (labels with unknown voxels set to background, unknown mask).

        Raises:
            ValueError: ``x`` (called ``name`` in the message) is not integer, or holds a label
                outside ``[0, K)`` that is not ``ignore_index``.
        """
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{name} must hold integer labels, got {x.dtype}")
        x = x.long()
        ignore_index = self.config.ignore_index
        unknown = x == ignore_index if ignore_index is not None else torch.zeros_like(x, dtype=torch.bool)
        bad = ~unknown & ((x < 0) | (x >= self.num_classes))
        if bool(bad.any()):
            value = int(x[bad][0])
            unknown_label = "no unknown label is set" if ignore_index is None else f"the unknown label {ignore_index}"
            raise ValueError(f"{name} contains label {value}, outside [0, {self.num_classes}) and not {unknown_label}")
        return torch.where(unknown, torch.full_like(x, self.config.background_class), x), unknown

    def check_timesteps(self, t: int | Tensor, n: int, low: int) -> Tensor:
        """Validate timesteps in ``[low, T]`` and return them as an (n,) int64 CPU tensor."""
        T = self.num_timesteps
        if isinstance(t, Tensor):
            if t.is_floating_point() or t.is_complex():
                raise ValueError(f"t must hold integers, got {t.dtype}")
            t = t.detach().to("cpu", torch.long).reshape(-1)
            if t.numel() == 1:
                t = t.expand(n)
            elif t.numel() != n:
                raise ValueError(f"t must be a scalar or have {n} entries (one per item), got {t.numel()}")
        elif isinstance(t, numbers.Integral) and not isinstance(t, bool):
            t = torch.full((n,), int(t), dtype=torch.long)
        else:
            raise ValueError(f"t must be an int or an integer tensor, got {type(t).__name__}")
        if bool(((t < low) | (t > T)).any()):
            raise ValueError(f"t must lie in [{low}, {T}], got values {t.unique().tolist()[:8]}")
        return t.contiguous()

    def _pair(self, t: int | Tensor, s: int | Tensor | None, n: int) -> tuple[Tensor, Tensor]:
        t_ = self.check_timesteps(t, n, low=1)
        s_ = t_ - 1 if s is None else self.check_timesteps(s, n, low=0)
        if bool((s_ >= t_).any()):
            raise ValueError("s must be smaller than t for every item")
        return t_, s_


def per_item(values: Tensor, like: Tensor) -> Tensor:
    """(N,) per-item values → (N, 1, …, 1) in the dtype and on the device of ``like``."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return values.to(dtype).view(-1, *([1] * (like.ndim - 1))).to(like.device)


def per_class(values: Tensor, like: Tensor) -> Tensor:
    """(N, K) per-item, per-class values → (N, K, 1, …, 1) broadcastable against ``like``."""
    return values.view(*values.shape, *([1] * (like.ndim - 2))).to(like.device)


def safe_log(p: Tensor) -> Tensor:
    """``log p`` with ``log 0 = -inf`` and no warning; probabilities are never negative here."""
    return torch.log(p.clamp_min(0))


def schedule_betas(config: CategoricalDiffusionConfig) -> Tensor:
    """(T,) float64 ``β_1 … β_T`` of the configured schedule, clipped to ``max_beta``."""
    T = config.num_timesteps
    if config.schedule == "cosine":
        # [ND21] eq. 17: ᾱ_t = f(t)/f(0); β_t = 1 − ᾱ_t/ᾱ_{t−1}, clipped (§3.2).
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + config.cosine_offset) / (1 + config.cosine_offset) * math.pi / 2) ** 2
        betas = 1.0 - f[1:] / f[:-1]
    else:
        scale = 1000.0 / T
        betas = torch.linspace(config.linear_beta_start * scale, config.linear_beta_end * scale, T, dtype=torch.float64)
    return betas.clamp(min=0.0, max=config.max_beta)
