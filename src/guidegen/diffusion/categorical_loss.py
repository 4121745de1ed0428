"""Training loss of the categorical diffusion: the hybrid variational bound, with partial labels.

`categorical_loss` is ``kl_weight · L_vb + ce_weight · L_ce`` ([H21] eq. 14, [A21] eqs. 1 and 5)
for one timestep per item, on the process of a `guidegen.diffusion.categorical.CategoricalDiffusion`
(its schedule and posteriors). References as in `guidegen.diffusion.categorical`; the lumped chain
for unannotated classes follows [KS60] §6.3 and its cross-entropy is the marginal loss of [S21].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from guidegen.diffusion.categorical import (
    CategoricalDiffusion,
    CategoricalDiffusionConfig,
    per_class,
    per_item,
    safe_log,
)

__all__ = ["CategoricalLoss", "categorical_loss", "expected_count_loss", "outside_host_loss"]


@dataclass(frozen=True)
class CategoricalLoss:
    """Terms of `categorical_loss`, each a scalar mean over the known voxels.

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


def categorical_loss(
    diffusion: CategoricalDiffusion,
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

    * Unknown voxels (label ``config.ignore_index``, or ``ignore_mask`` true) are left out of every
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
        diffusion: the process (its config gives the weights, ``ignore_index`` and background).
        model_logits: (N, K, *S) network logits for ``x_0`` (any float type; computed in
            float32).
        x0_labels: (N, *S) integer labels; ``config.ignore_index`` marks unknown voxels.
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
    cfg = diffusion.config
    K = diffusion.num_classes
    logits = model_logits.float()
    if logits.ndim < 3 or logits.shape[1] != K:
        raise ValueError(f"model_logits must have shape (N, {K}, *spatial), got {tuple(model_logits.shape)}")
    N, spatial = logits.shape[0], tuple(logits.shape[2:])
    if x0_labels.is_floating_point() or tuple(x0_labels.shape) != (N, *spatial):
        raise ValueError(
            f"x0_labels must be integer labels of shape {(N, *spatial)}, got {x0_labels.dtype} {tuple(x0_labels.shape)}"
        )
    labels, unknown = diffusion.split_unknown(x0_labels.to(logits.device), "x0_labels")
    if ignore_mask is not None:
        if ignore_mask.dtype != torch.bool or tuple(ignore_mask.shape) != (N, *spatial):
            raise ValueError(
                f"ignore_mask must be a bool tensor of shape {(N, *spatial)}, got "
                f"{ignore_mask.dtype} {tuple(ignore_mask.shape)}"
            )
        unknown = unknown | ignore_mask.to(logits.device)
    xt = diffusion.as_probs(x_t.to(logits.device))
    if tuple(xt.shape) != tuple(logits.shape):
        raise ValueError(f"x_t must match model_logits in batch and spatial shape, got {tuple(x_t.shape)}")
    t_ = diffusion.check_timesteps(t, N, low=1)
    log_p0 = torch.log_softmax(logits, dim=1)

    sizes = None  # block sizes |C| per item and class; None = every block is one class
    if ignore_classes is not None:
        lumped = _lump(diffusion.config, ignore_classes, log_p0, xt, labels)
        if lumped is not None:
            log_p0, xt, labels, sizes = lumped
    log_x0 = safe_log(F.one_hot(labels, K).movedim(-1, 1).float())

    # Decoder (t = 1) and auxiliary terms: −log p̂(x_0).
    ce_vox = -log_p0.gather(1, labels.unsqueeze(1)).squeeze(1)

    # KL for t ≥ 2. Items with t = 1 are evaluated at t = 2 and then replaced by the decoder
    # term: the s = 0 branch of the posterior has log(0) constants whose gradients are NaN.
    if diffusion.num_timesteps >= 2:
        t_kl = t_.clamp_min(2)
        log_q = diffusion.log_posterior(xt, log_x0, t_kl, t_kl - 1, sizes)
        log_p = diffusion.log_posterior(xt, log_p0, t_kl, t_kl - 1, sizes)
        present = torch.isfinite(log_q)  # false only for lumped-away classes (q = 0 exactly)
        log_q0 = torch.where(present, log_q, torch.zeros_like(log_q))
        log_pp = torch.where(present, log_p, torch.zeros_like(log_p))
        kl_vox = (torch.exp(log_q0) * (log_q0 - log_pp) * present).sum(dim=1)
        is_decoder = per_item(t_ == 1, ce_vox).bool()
        vb_vox = torch.where(is_decoder, ce_vox, kl_vox)
    else:
        vb_vox = ce_vox

    known = ~unknown
    count = int(known.sum())
    if voxel_weight is None:
        w = known.float()
    else:
        if tuple(voxel_weight.shape) != (N, *spatial) or not voxel_weight.is_floating_point():
            raise ValueError(
                f"voxel_weight must be a float tensor of shape {(N, *spatial)}, got "
                f"{voxel_weight.dtype} {tuple(voxel_weight.shape)}"
            )
        if bool((voxel_weight < 0).any()):
            raise ValueError("voxel_weight must be non-negative")
        w = torch.where(known, voxel_weight.to(logits.device).float(), torch.zeros_like(vb_vox))
    total_w = w.sum()
    denom = total_w if bool(total_w > 0) else torch.ones_like(total_w)
    kl = torch.where(known, vb_vox * w, torch.zeros_like(vb_vox)).sum() / denom
    ce = torch.where(known, ce_vox * w, torch.zeros_like(ce_vox)).sum() / denom
    total = cfg.kl_weight * kl + cfg.ce_weight * ce
    return CategoricalLoss(total=total, kl=kl, ce=ce, num_voxels=count)


def _lump(
    config: CategoricalDiffusionConfig, ignore_classes: Tensor, log_p0: Tensor, xt: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Reduce prediction, ``x_t`` and labels to the blocks of each item (see `categorical_loss`).

    The block of background and the unannotated classes is stored in the background channel;
    the unannotated channels become empty (probability 0, size 0).

    Returns:
        ``(log_p0, xt, labels, sizes)`` lumped, or None when no class is unannotated.
    """
    K, bg = config.num_classes, config.background_class
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
    u = per_class(unannotated, log_p0)
    b = per_class(block, log_p0)
    g = per_class(is_bg, log_p0)

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


def expected_count_loss(
    model_logits: Tensor,
    x0_labels: Tensor,
    classes: Tensor,
    ignore_index: int | None = None,
    ignore_classes: Tensor | None = None,
) -> Tensor:
    """Squared log error between each class's expected and true voxel count, averaged.

    ``Σ_v p̂(x0_v = c | x_t)`` over the known voxels is the count of class ``c`` that the
    prediction expects; the per-voxel losses of `categorical_loss` fix it only through tens of
    thousands of independent voxel terms, in which a 30-voxel tumour or whether the text asked for
    one is lost. This term puts the count itself in the loss: ``(log(1 + Σ_v p̂_c) − log(1 + N_c))²``
    for each item and listed class, ``N_c`` the class's voxels in ``x0``. The true posterior gives
    ``E[N_c | x_t, condition]``; where the condition decides ``N_c`` (a stated tumour, a stated
    enlargement), both terms agree, and where it does not, the log scale pulls the expected count
    towards the geometric rather than the arithmetic mean of ``1 + N_c`` (smaller; not unbiased).

    Args:
        model_logits: (N, K, *S) logits for ``x_0``.
        x0_labels: (N, *S) integer labels; ``ignore_index`` marks unknown voxels, which enter
            neither count.
        classes: (C,) class ids whose counts are compared.
        ignore_classes: optional (N, K) bool, true for classes not annotated in that item: their
            count is unknown (hidden under background) and they are left out for that item.

    Returns:
        The mean over the (item, class) pairs that are known; zero (still differentiable) if none.
    """
    logits = model_logits.float()
    N, K = logits.shape[:2]
    if x0_labels.shape != (N, *logits.shape[2:]):
        raise ValueError(f"x0_labels must have shape {(N, *logits.shape[2:])}, got {tuple(x0_labels.shape)}")
    classes = classes.to(device=logits.device, dtype=torch.long).reshape(-1)
    if bool(((classes < 0) | (classes >= K)).any()):
        raise ValueError(f"classes must be ids in [0, {K}), got {classes.tolist()}")
    labels = x0_labels.to(logits.device).long()
    known = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    probs = torch.softmax(logits, dim=1).index_select(1, classes)  # (N, C, *S)
    expected = (probs * known.unsqueeze(1)).flatten(2).sum(2)
    true = torch.stack([((labels == c) & known).flatten(1).sum(1) for c in classes.tolist()], dim=1).float()
    error = (torch.log1p(expected) - torch.log1p(true)) ** 2
    counted = torch.ones_like(error, dtype=torch.bool)
    if ignore_classes is not None:
        counted = ~ignore_classes.to(logits.device).index_select(1, classes)
    n = counted.sum()
    return torch.where(counted, error, torch.zeros_like(error)).sum() / n.clamp_min(1)


def _dilate(mask: Tensor, margin: int) -> Tensor:
    """(N, *S) bool mask grown by ``margin`` voxels in every direction (a cube, as ``margin`` 26-neighbour steps)."""
    grown = F.max_pool3d(mask.float().unsqueeze(1), kernel_size=2 * margin + 1, stride=1, padding=margin)
    return grown.squeeze(1) > 0


def outside_host_loss(
    model_logits: Tensor,
    x0_labels: Tensor,
    lesion_class: int,
    host_classes: Tensor,
    ignore_index: int | None = None,
    ignore_classes: Tensor | None = None,
    margin: int = 1,
) -> Tensor:
    """Share of the lesion probability mass that the prediction puts outside the lesion's host.

    `expected_count_loss` fixes how many voxels of a lesion class the prediction expects, not
    where: a network trained with it drew "3 cm tumour in the liver" spread over the liver,
    pancreas and spleen. Here each item's host is read from ``x0``: the ``host_classes`` that touch
    the lesion, with the lesion itself, grown by ``margin`` voxels. The term is
    ``O / (1 + M)``, ``M = Σ_v p̂(x0_v = lesion | x_t)`` over the known voxels and ``O`` the part of
    it outside that region: nearly a share, meant to move lesion mass into the host and leave how
    much there is to the count term. Items without a lesion have no host and are left out. In the
    data a lesion is never outside its host, so the term is zero at the true posterior wherever
    ``x_t`` shows the host. Beware: through the ``1 +`` a share ``f`` of ``M`` costs ``f M / (1 + M)``,
    which shrinks with ``M``; trained with it (and with an absolute penalty on ``O`` before), the
    mask sampler learnt to draw almost no tumour rather than to draw it in its host
    (docs/results/mask_sampler_count_film.txt, section 4).

    Args:
        model_logits: (N, K, 3-D) logits for ``x_0``.
        x0_labels: (N, 3-D) integer labels; ``ignore_index`` marks unknown voxels.
        lesion_class: class id of the lesion (the tumour).
        host_classes: (H,) class ids a lesion can sit in (organs, not background or body).
        ignore_classes: optional (N, K) bool, true for classes not annotated in that item; items
            whose lesion class is unannotated are left out (a lesion may hide under background).
        margin: voxels the host region is grown by, for partial-volume rims and host boundaries.

    Returns:
        The mean over the items with a lesion; zero (still differentiable) if none.
    """
    logits = model_logits.float()
    N, K = logits.shape[:2]
    if logits.dim() != 5:
        raise ValueError(f"model_logits must be (N, K, D, H, W), got shape {tuple(logits.shape)}")
    if x0_labels.shape != (N, *logits.shape[2:]):
        raise ValueError(f"x0_labels must have shape {(N, *logits.shape[2:])}, got {tuple(x0_labels.shape)}")
    hosts = host_classes.to(device=logits.device, dtype=torch.long).reshape(-1)
    ids = torch.cat([hosts, torch.tensor([lesion_class], device=logits.device)])
    if bool(((ids < 0) | (ids >= K)).any()):
        raise ValueError(f"lesion_class and host_classes must be ids in [0, {K}), got {ids.tolist()}")
    if lesion_class in hosts.tolist():
        raise ValueError(f"the lesion class {lesion_class} cannot be its own host")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    labels = x0_labels.to(logits.device).long()
    known = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    lesion = labels == lesion_class
    rim = _dilate(lesion, 1) & ~lesion
    host = lesion.clone()
    for c in hosts.tolist():
        is_c = labels == c
        touches = (rim & is_c).flatten(1).any(1)  # (N,): c is a host of that item's lesion
        host |= is_c & touches.view(-1, *([1] * (labels.dim() - 1)))
    region = _dilate(host, margin)
    p_lesion = torch.softmax(logits, dim=1)[:, lesion_class] * known
    outside = (p_lesion * ~region).flatten(1).sum(1)
    share = outside / (1.0 + p_lesion.flatten(1).sum(1))
    counted = lesion.flatten(1).any(1)
    if ignore_classes is not None:
        counted &= ~ignore_classes.to(logits.device)[:, lesion_class]
    n = counted.sum()
    return torch.where(counted, share, torch.zeros_like(share)).sum() / n.clamp_min(1)
