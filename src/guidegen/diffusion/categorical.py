"""Multinomial (uniform-transition categorical) diffusion over label volumes.

This module holds only the mathematics of the diffusion process — forward noising, posteriors,
the training loss and the samplers — and no network, in the style of a diffusers scheduler: the
network is any callable that maps a noisy one-hot volume and a timestep to logits over the clean
volume. Everything works on tensors of any device; the noise schedule is kept as float64 CPU
tensors and the few coefficients a call needs are gathered there and moved to the data's device,
which keeps the schedule exact and works on devices without float64.

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
    * Voxels labelled `guidegen.labels.vocabulary.UNKNOWN` (255) have an unknown class. Where a
      distribution is needed for them (noising, posteriors) they are treated as uniform over the
      ``K`` classes — the prior that adds no information — and the loss ignores them entirely.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from guidegen.labels.vocabulary import UNKNOWN

__all__ = [
    "CategoricalDiffusion",
    "CategoricalDiffusionConfig",
    "CategoricalLoss",
    "count_matched_argmax",
    "sample_categorical",
]

#: ``model_fn(x_t_onehot (N, K, *S) float, t (N,) long[, cond]) -> logits (N, K, *S)`` over x_0.
ModelFn = Callable[..., Tensor]
#: ``callback(step, t_next, x_next_labels (N, *S), x0_probs (N, K, *S))`` after each sampler step.
Callback = Callable[[int, int, Tensor, Tensor], None]


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
        ignore_index: label value of voxels whose class is unknown.
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
    ignore_index: int = UNKNOWN
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
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index ({self.ignore_index}) must not be a class id in [0, {self.num_classes})"
            )
        if not 0 <= self.background_class < self.num_classes:
            raise ValueError(
                f"background_class must be in [0, {self.num_classes}), got {self.background_class!r}"
            )


@dataclass(frozen=True)
class CategoricalLoss:
    """Terms of `CategoricalDiffusion.loss`, each a scalar mean over the known voxels.

    Attributes:
        total: ``kl_weight · kl + ce_weight · ce``; call ``.backward()`` on this.
        kl: the variational term ``L_{t-1}`` ([H21] eq. 14, [A21] eq. 1): KL between the true and
            the predicted posterior for ``t ≥ 2``, and the decoder term ``−log p(x_0 | x_1)`` at
            ``t = 1``.
        ce: auxiliary cross-entropy ``−log p̂(x_0 | x_t)`` ([A21] eq. 5).
        num_voxels: how many voxels of the batch entered the means (unknown ones do not).
    """

    total: Tensor
    kl: Tensor
    ce: Tensor
    num_voxels: int


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


def count_matched_argmax(log_probs: Tensor, classes: Sequence[int] | None = None, iterations: int = 60) -> Tensor:
    """Per-voxel argmax after per-class log offsets that match each class's expected count.

    The plain argmax of a factorised prediction under-draws a class whose location is uncertain:
    a pancreas predicted with p ≈ 0.3 over a fuzzy region has ~60 voxels of expected volume but
    wins almost no voxel against the surrounding fat (0.4–0.5), so it vanishes. Offsetting each
    class's log-probability by ``b_c`` until the argmax gives it ``Σ p_c`` voxels (a fixed-point
    iteration on ``b_c += η_i (log(E_c + 1) − log(n_c + 1))`` with shrinking ``η_i``; the best
    labelling met is returned) keeps the decision voxel-wise most
    probable up to one scalar per class and the class volumes the model predicts. Classes outside
    ``classes`` keep exactly the voxels the plain argmax gives them (e.g. a rare class whose
    expected mass is spread thin everywhere, which matching would scatter as specks).

    Args:
        log_probs: (N, K, *S) log-probabilities.
        classes: class indices to match; ``None`` = all.
        iterations: fixed-point iterations (counts settle within a few voxels in ~30).

    Returns:
        (N, *S) int64 labels.
    """
    n, k = log_probs.shape[:2]
    flat = log_probs.float().reshape(n, k, -1)
    expected = flat.exp().sum(-1)  # (N, K)
    active = torch.zeros(k, dtype=torch.bool, device=flat.device)
    active[list(range(k)) if classes is None else [int(c) for c in classes]] = True
    plain = flat.argmax(dim=1)
    # Classes left out keep exactly their plain voxels: no offset may hand them, or take, a voxel.
    fixed = ~active[plain]  # (N, V)
    flat = torch.where(active[None, :, None], flat, torch.full_like(flat, -math.inf))
    # Classes last and contiguous: the argmax of every iteration then reads each voxel's K values
    # in one run (4x faster than reducing over the strided class axis; the same first-max ties).
    by_voxel = flat.transpose(1, 2).contiguous()  # (N, V, K)
    bias = torch.zeros(n, k, device=flat.device)
    best = plain
    best_error = torch.full((n,), math.inf, device=flat.device)
    for it in range(iterations + 1):
        labels = torch.where(fixed, plain, (by_voxel + bias[:, None, :]).argmax(dim=-1))
        counts = torch.stack([torch.bincount(row, minlength=k) for row in labels]).float()  # (N, K)
        # Keep each item's best labelling: ties (equal probabilities) can make the counts jump.
        error = ((counts - expected).abs() * active).sum(1)
        better = error < best_error
        best = torch.where(better[:, None], labels, best)
        best_error = torch.where(better, error, best_error)
        # Shrinking steps: near-ties make a fixed step overshoot back and forth.
        step = 0.5 / (1.0 + it / 5.0) * (torch.log(expected + 1.0) - torch.log(counts + 1.0))
        bias = bias + torch.where(active, step, torch.zeros_like(step))
    return best.reshape(n, *log_probs.shape[2:])


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
    """Uniform-transition categorical diffusion: noising, posteriors, loss and samplers.

    Stateless apart from the schedule; the same object serves training and sampling on any
    device. Not an ``nn.Module``: it has no parameters and nothing to save but its config.

    Args:
        config: the settings; see `CategoricalDiffusionConfig`.
    """

    def __init__(self, config: CategoricalDiffusionConfig):
        if not isinstance(config, CategoricalDiffusionConfig):
            raise ValueError(f"config must be a CategoricalDiffusionConfig, got {type(config).__name__}")
        self.config = config
        betas = _betas(config)
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

    def timestep_sequence(self, steps: int | None = None) -> list[int]:
        """The visited timesteps ``T = τ_0 > τ_1 > … > τ_steps = 0`` of a sampler.

        Args:
            steps: number of network evaluations; ``None`` or ``T`` visits every timestep, fewer
                spaces them evenly (rounded to integers).

        Returns:
            ``steps + 1`` strictly decreasing integers from ``T`` to ``0``.
        """
        T = self.num_timesteps
        if steps is None:
            steps = T
        if not isinstance(steps, int) or not 1 <= steps <= T:
            raise ValueError(f"steps must be an integer in [1, {T}], got {steps!r}")
        # Integer rounding of T·(steps − i)/steps; consecutive values differ by at least 1 because
        # the spacing T/steps is at least 1.
        return [(2 * T * (steps - i) + steps) // (2 * steps) for i in range(steps + 1)]

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
        labels, unknown = self._split_labels(x, "x")
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
        t = self._timesteps(t, p0.shape[0], low=0)
        abar = self._coef(self._alphas_cumprod[t], p0)
        flip = self._coef((1.0 - self._alphas_cumprod[t]) / self.num_classes, p0)
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
        return torch.exp(self._log_posterior(xt, _safe_log(p0), t_, s_))

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
        post = torch.exp(self._log_posterior(xt, _safe_log(p0), t_, s_))
        at_zero = self._coef(s_ == 0, post).bool()
        return torch.where(at_zero, p0, post)

    # ------------------------------------------------------------------ training loss

    def loss(
        self,
        model_logits: Tensor,
        x0_labels: Tensor,
        x_t: Tensor,
        t: int | Tensor,
        ignore_mask: Tensor | None = None,
        ignore_classes: Tensor | None = None,
        voxel_weight: Tensor | None = None,
    ) -> CategoricalLoss:
        """Training loss ``kl_weight · L_vb + ce_weight · L_ce`` for one timestep per item.

        ``L_vb`` is ``KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t))`` for ``t ≥ 2`` and
        ``−log p_θ(x_0 | x_1)`` for ``t = 1`` ([H21] eq. 14, [A21] eq. 1), estimated at the drawn
        ``t`` (not multiplied by ``T``). ``L_ce = −log p̂(x_0 | x_t)`` is the auxiliary term of the
        hybrid loss ([A21] eq. 5). Both are averaged over the known voxels of the batch.

        Partial labels:

        * Unknown voxels (label `ignore_index`, or ``ignore_mask`` true) are left out of every
          term: their loss and their gradient are exactly zero.
        * A class ``c`` that was not annotated in case ``n`` (``ignore_classes[n, c]``) may hide
          under that case's background, so there "background" only means "background or an
          unannotated class". For such a case the loss is computed on the *lumped* chain whose
          states are the blocks ``B = {background} ∪ {unannotated classes}`` and the singletons
          of the annotated classes: target, prediction and ``x_t`` are all reduced to blocks by
          summing probability mass. The uniform-transition chain is lumpable for every partition
          ([KS60] Thm 6.3.2: ``Σ_{j∈C} Q[i, j] = α[i ∈ C] + (1 − α)|C|/K`` is the same for all
          ``i`` of a block), so the lumped process is again a Markov chain, with block posterior::

              q(C_s | C_t, C_0) ∝ [a [C_s = C_t] + (1 − a)|C_t|/K] · [ᾱ_s [C_s = C_0] + (1 − ᾱ_s)|C_s|/K]

          and its variational bound is that of the observed (coarse) labels. The cross-entropy
          on blocks, ``−log Σ_{k∈B} p̂_k``, is the marginal loss of [S21]. Why this rather than
          masking the background or merging after a fine posterior: masking throws away most of
          a case's voxels, and a fine posterior computed from the label "background" would still
          favour the background class over ``c`` through ``x_t`` (which was noised from
          "background"). On the lumped chain the loss is exactly invariant to how the network
          splits mass between background and the unannotated classes, and to which of them
          ``x_t`` shows, so nothing pushes an unannotated organ to zero; the split is learnt from
          the cases in which those classes are annotated. Voxels labelled with an annotated
          class keep their full one-hot target. With no unannotated classes the lumped chain is
          the ordinary one.

        Args:
            model_logits: (N, K, *S) network logits for ``x_0`` (any float type; computed in
                float32).
            x0_labels: (N, *S) integer labels; `ignore_index` marks unknown voxels.
            x_t: (N, *S) labels or (N, K, *S) one-hot of the noisy input the network saw.
            t: timestep(s) in ``[1, T]``: an int or an (N,) integer tensor.
            ignore_mask: optional (N, *S) bool, true where the class is unknown.
            ignore_classes: optional (N, K) bool, true for classes not annotated in that item;
                the background column must be false.
            voxel_weight: optional (N, *S) non-negative float weights; both terms become weighted
                means ``Σ w·ℓ / Σ w`` over the known voxels. Used to give rare small classes
                (tumours: well under 0.1 % of a map's voxels) a say in the loss.

        Returns:
            A `CategoricalLoss`; its ``total`` is zero (and still differentiable) when no voxel
            is known.
        """
        cfg = self.config
        K = self.num_classes
        logits = model_logits.float()
        if logits.ndim < 3 or logits.shape[1] != K:
            raise ValueError(f"model_logits must have shape (N, {K}, *spatial), got {tuple(model_logits.shape)}")
        N, spatial = logits.shape[0], tuple(logits.shape[2:])
        if x0_labels.is_floating_point() or tuple(x0_labels.shape) != (N, *spatial):
            raise ValueError(
                f"x0_labels must be integer labels of shape {(N, *spatial)}, got "
                f"{x0_labels.dtype} {tuple(x0_labels.shape)}"
            )
        labels, unknown = self._split_labels(x0_labels.to(logits.device), "x0_labels")
        if ignore_mask is not None:
            if ignore_mask.dtype != torch.bool or tuple(ignore_mask.shape) != (N, *spatial):
                raise ValueError(
                    f"ignore_mask must be a bool tensor of shape {(N, *spatial)}, got "
                    f"{ignore_mask.dtype} {tuple(ignore_mask.shape)}"
                )
            unknown = unknown | ignore_mask.to(logits.device)
        xt = self.as_probs(x_t.to(logits.device))
        if tuple(xt.shape) != tuple(logits.shape):
            raise ValueError(f"x_t must match model_logits in batch and spatial shape, got {tuple(x_t.shape)}")
        t_ = self._timesteps(t, N, low=1)
        log_p0 = torch.log_softmax(logits, dim=1)

        sizes = None  # block sizes |C| per item and class; None = every block is one class
        if ignore_classes is not None:
            lumped = self._lump(ignore_classes, log_p0, xt, labels)
            if lumped is not None:
                log_p0, xt, labels, sizes = lumped
        log_x0 = _safe_log(F.one_hot(labels, K).movedim(-1, 1).float())

        # Decoder (t = 1) and auxiliary terms: −log p̂(x_0).
        ce_vox = -log_p0.gather(1, labels.unsqueeze(1)).squeeze(1)

        # KL for t ≥ 2. Items with t = 1 are evaluated at t = 2 and then replaced by the decoder
        # term: the s = 0 branch of the posterior has log(0) constants whose gradients are NaN.
        if self.num_timesteps >= 2:
            t_kl = t_.clamp_min(2)
            log_q = self._log_posterior(xt, log_x0, t_kl, t_kl - 1, sizes)
            log_p = self._log_posterior(xt, log_p0, t_kl, t_kl - 1, sizes)
            present = torch.isfinite(log_q)  # false only for lumped-away classes (q = 0 exactly)
            log_q0 = torch.where(present, log_q, torch.zeros_like(log_q))
            log_pp = torch.where(present, log_p, torch.zeros_like(log_p))
            kl_vox = (torch.exp(log_q0) * (log_q0 - log_pp) * present).sum(dim=1)
            is_decoder = self._coef(t_ == 1, ce_vox).bool()
            vb_vox = torch.where(is_decoder, ce_vox, kl_vox)
        else:
            vb_vox = ce_vox

        known = ~unknown
        count = int(known.sum())
        if voxel_weight is None:
            w = known.float()
        else:
            if tuple(voxel_weight.shape) != (N, *spatial) or not voxel_weight.is_floating_point():
                raise ValueError(f"voxel_weight must be a float tensor of shape {(N, *spatial)}, got "
                                 f"{voxel_weight.dtype} {tuple(voxel_weight.shape)}")
            if bool((voxel_weight < 0).any()):
                raise ValueError("voxel_weight must be non-negative")
            w = torch.where(known, voxel_weight.to(logits.device).float(), torch.zeros_like(vb_vox))
        total_w = w.sum()
        denom = total_w if bool(total_w > 0) else torch.ones_like(total_w)
        kl = torch.where(known, vb_vox * w, torch.zeros_like(vb_vox)).sum() / denom
        ce = torch.where(known, ce_vox * w, torch.zeros_like(ce_vox)).sum() / denom
        total = cfg.kl_weight * kl + cfg.ce_weight * ce
        return CategoricalLoss(total=total, kl=kl, ce=ce, num_voxels=count)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        cond: object | None = None,
        generator: Generators = None,
        steps: int | None = None,
        callback: Callback | None = None,
        device: torch.device | str | None = None,
        final: Literal["sample", "argmax", "matched"] = "sample",
        matched_classes: Sequence[int] | None = None,
    ) -> Tensor:
        """Ancestral sampling from ``x_T ~ Cat(1/K)`` down to ``x_0``.

        With ``steps = None`` (or ``T``) every step ``t → t − 1`` draws from
        ``p_θ(x_{t-1} | x_t)`` ([H21] §4, [A21] §3). With fewer steps the sampler visits
        ``τ_0 = T > … > τ_steps = 0`` (`timestep_sequence`) and jumps ``τ_i → τ_{i+1}`` with
        ``p_θ(x_s | x_t) = q(x_s | x_t, x̂_0)``, whose transition has keep coefficient
        ``ᾱ_t/ᾱ_s`` (see `q_posterior`); the last jump to ``s = 0`` draws from ``p̂(x_0 | x_t)``.
        Runs under ``torch.no_grad``.

        Args:
            model_fn: called as ``model_fn(x_t, t)`` — or ``model_fn(x_t, t, cond)`` when ``cond``
                is not None — with ``x_t`` (N, K, *S) float32 one-hot and ``t`` (N,) int64, both on
                ``device``; returns (N, K, *S) logits over ``x_0``. Classifier-free guidance
                belongs in here (see `guidegen.diffusion.guidance.guided_logits`).
            shape: (N, *S) shape of the label volume to draw.
            cond: conditioning passed through to ``model_fn`` untouched.
            generator: seeded generator; the same seed gives the same volume.
            steps: number of network evaluations, in ``[1, T]``; ``None`` means ``T``.
            callback: called after every step as ``callback(i, s, x_s, x0_probs)``.
            device: device of the volume; default the generator's device, else CPU.
            final: ``"sample"`` draws ``x_0`` from ``p̂(x_0 | x_1)`` (ancestral); ``"argmax"``
                takes its most probable class; ``"matched"`` the most probable class after a
                per-class offset that gives each of ``matched_classes`` as many voxels as its
                expected count (`count_matched_argmax`).
            matched_classes: classes whose counts ``"matched"`` matches (default: all).

        Returns:
            (N, *S) int64 labels on ``device``.
        """
        K = self.num_classes
        shape = tuple(int(v) for v in shape)
        if len(shape) < 2 or any(v < 1 for v in shape):
            raise ValueError(f"shape must be (N, *spatial) with positive sizes, got {shape}")
        if final not in ("sample", "argmax", "matched"):
            raise ValueError(f"final must be 'sample', 'argmax' or 'matched', got {final!r}")
        if device is None:
            first = generator if generator is None or isinstance(generator, torch.Generator) else next(iter(generator))
            device = first.device if first is not None else torch.device("cpu")
        device = torch.device(device)
        sequence = self.timestep_sequence(steps)
        N = shape[0]

        uniform = torch.full((N, K, *shape[1:]), -math.log(K), device=device)
        x = sample_categorical(uniform, generator)
        for i, (t, s) in enumerate(zip(sequence[:-1], sequence[1:])):
            x_onehot = F.one_hot(x, K).movedim(-1, 1).float()
            t_batch = torch.full((N,), t, dtype=torch.long, device=device)
            logits = model_fn(x_onehot, t_batch) if cond is None else model_fn(x_onehot, t_batch, cond)
            if tuple(logits.shape) != (N, K, *shape[1:]):
                raise ValueError(
                    f"model_fn returned logits of shape {tuple(logits.shape)}, expected {(N, K, *shape[1:])}"
                )
            log_p0 = torch.log_softmax(logits.float(), dim=1)
            if s == 0:
                if final == "matched":
                    x = count_matched_argmax(log_p0, matched_classes)
                else:
                    x = log_p0.argmax(dim=1) if final == "argmax" else sample_categorical(log_p0, generator)
            else:
                t_cpu = torch.full((N,), t, dtype=torch.long)
                log_post = self._log_posterior(x_onehot, log_p0, t_cpu, t_cpu.new_full((N,), s))
                x = sample_categorical(log_post, generator)
            if callback is not None:
                callback(i, s, x, log_p0.exp())
        return x

    # ------------------------------------------------------------------ internals

    def _log_posterior(
        self, xt: Tensor, log_x0: Tensor, t: Tensor, s: Tensor, sizes: Tensor | None = None
    ) -> Tensor:
        """``log q(x_s | x_t, x_0)`` from probabilities ``xt`` and log-probabilities ``log_x0``.

        Computes ``log([a x_t + (1 − a) ⟨x_t, m⟩/K] ⊙ [ᾱ_s x_0 + (1 − ᾱ_s) m/K])`` normalised
        over ``K``, where ``a = ᾱ_t/ᾱ_s`` and ``m`` are the block sizes (all one for the ordinary
        chain; see `loss` for the lumped one; a class of size 0 has been lumped away and gets
        ``-inf``). The second factor is formed in log space, since ``x̂_0`` from a softmax may
        underflow; ``1 − a`` and ``1 − ᾱ_s`` are formed in float64 so that small ``β`` survive.

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
        f1_keep = self._coef(keep, xt)
        f1_flip = self._coef((1.0 - keep) / K, xt)
        abar_s = abar[s]
        log_keep0 = self._coef(torch.log(abar_s), xt)
        flip0 = ((1.0 - abar_s) / K).view(-1, 1)  # (N, 1), float64
        if sizes is None:
            m = torch.ones(xt.shape[0], K, dtype=torch.float64)
            mass = torch.ones_like(xt[:, :1])
        else:
            m = sizes.to(torch.float64).cpu()
            mass = (xt * _expand(sizes.to(xt), xt)).sum(dim=1, keepdim=True)
        # log((1 − ᾱ_s) m/K): -inf where s = 0 or the class was lumped away (m = 0).
        log_flip0 = _expand(torch.log(flip0 * m).to(torch.float32), xt)
        lhs = log_x0 + log_keep0
        # logaddexp(-inf, -inf) has a NaN gradient: feed finite stand-ins there, restore -inf after.
        dead = torch.isneginf(lhs) & torch.isneginf(log_flip0)
        zero = torch.zeros((), dtype=lhs.dtype, device=lhs.device)
        log_f2 = torch.logaddexp(torch.where(dead, zero, lhs), torch.where(dead, zero, log_flip0))
        log_f2 = torch.where(dead, torch.full_like(log_f2, -math.inf), log_f2)
        log_f1 = torch.log(f1_keep * xt + f1_flip * mass)
        log_un = log_f1 + log_f2
        return log_un - torch.logsumexp(log_un, dim=1, keepdim=True)

    def _lump(
        self, ignore_classes: Tensor, log_p0: Tensor, xt: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """Reduce prediction, ``x_t`` and labels to the blocks of each item (see `loss`).

        The block of background and the unannotated classes is stored in the background channel;
        the unannotated channels become empty (probability 0, size 0).

        Returns:
            ``(log_p0, xt, labels, sizes)`` lumped, or None when no class is unannotated.
        """
        K, bg = self.num_classes, self.config.background_class
        N = log_p0.shape[0]
        if ignore_classes.dtype != torch.bool or tuple(ignore_classes.shape) != (N, K):
            raise ValueError(
                f"ignore_classes must be a bool tensor of shape {(N, K)}, got "
                f"{ignore_classes.dtype} {tuple(ignore_classes.shape)}"
            )
        if bool(ignore_classes[:, bg].any()):
            raise ValueError(f"ignore_classes must not contain the background class ({bg})")
        unannotated = ignore_classes.to(log_p0.device)
        if not bool(unannotated.any()):
            return None
        block = unannotated.clone()
        block[:, bg] = True  # members of the background block, per item
        is_bg = torch.zeros_like(block)
        is_bg[:, bg] = True
        u = _expand(unannotated, log_p0)
        b = _expand(block, log_p0)
        g = _expand(is_bg, log_p0)

        neg_inf = torch.full_like(log_p0, -math.inf)
        merged = torch.logsumexp(torch.where(b, log_p0, neg_inf), dim=1, keepdim=True)
        log_p0 = torch.where(g, merged.expand_as(log_p0), torch.where(u, neg_inf, log_p0))
        xt_merged = (xt * b).sum(dim=1, keepdim=True)
        xt = torch.where(g, xt_merged.expand_as(xt), torch.where(u, torch.zeros_like(xt), xt))
        label_unannotated = unannotated.gather(1, labels.flatten(1)).view_as(labels)
        labels = torch.where(label_unannotated, torch.full_like(labels, bg), labels)
        sizes = (~unannotated).long()
        sizes[:, bg] = block.sum(dim=1)
        return log_p0, xt, labels, sizes

    def _split_labels(self, x: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """Integer labels → (labels with unknown voxels set to background, unknown mask)."""
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{name} must hold integer labels, got {x.dtype}")
        x = x.long()
        unknown = x == self.config.ignore_index
        bad = ~unknown & ((x < 0) | (x >= self.num_classes))
        if bool(bad.any()):
            value = int(x[bad][0])
            raise ValueError(
                f"{name} contains label {value}, outside [0, {self.num_classes}) and not the unknown "
                f"label {self.config.ignore_index}"
            )
        return torch.where(unknown, torch.full_like(x, self.config.background_class), x), unknown

    def _timesteps(self, t: int | Tensor, n: int, low: int) -> Tensor:
        """Validate timesteps and return them as an (n,) int64 CPU tensor."""
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
        t_ = self._timesteps(t, n, low=1)
        s_ = t_ - 1 if s is None else self._timesteps(s, n, low=0)
        if bool((s_ >= t_).any()):
            raise ValueError("s must be smaller than t for every item")
        return t_, s_

    @staticmethod
    def _coef(values: Tensor, like: Tensor) -> Tensor:
        """(N,) per-item values → (N, 1, …, 1) in the dtype and on the device of ``like``."""
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return values.to(dtype).view(-1, *([1] * (like.ndim - 1))).to(like.device)


def _expand(per_class: Tensor, like: Tensor) -> Tensor:
    """(N, K) per-item, per-class values → (N, K, 1, …, 1) broadcastable against ``like``."""
    return per_class.view(*per_class.shape, *([1] * (like.ndim - 2))).to(like.device)


def _safe_log(p: Tensor) -> Tensor:
    """``log p`` with ``log 0 = -inf`` and no warning; probabilities are never negative here."""
    return torch.log(p.clamp_min(0))


def _betas(config: CategoricalDiffusionConfig) -> Tensor:
    """(T,) float64 ``β_1 … β_T`` of the configured schedule, clipped to ``max_beta``."""
    T = config.num_timesteps
    if config.schedule == "cosine":
        # [ND21] eq. 17: ᾱ_t = f(t)/f(0); β_t = 1 − ᾱ_t/ᾱ_{t−1}, clipped (§3.2).
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + config.cosine_offset) / (1 + config.cosine_offset) * math.pi / 2) ** 2
        betas = 1.0 - f[1:] / f[:-1]
    else:
        scale = 1000.0 / T
        betas = torch.linspace(
            config.linear_beta_start * scale, config.linear_beta_end * scale, T, dtype=torch.float64
        )
    return betas.clamp(min=0.0, max=config.max_beta)
