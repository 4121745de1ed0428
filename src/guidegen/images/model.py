"""The slice denoiser: a MONAI 2-D ``DiffusionModelUNet`` and the assembly of its conditioning inputs.

GuideGen's second stage (Dai et al. 2024) generates a CT axial slice by slice. The velocity network
for slice k sees, stacked as input channels of shape (N, C_in, H, W):

==========================  ==============================  ===========================================
channels                    content                         why
==========================  ==============================  ===========================================
1                           noisy slice ``x_t`` (model u.)  what is denoised
S × (K + 1)                 per context slice k−r … k+r:    the anatomy to draw, and its neighbours in z
                            one-hot of the K classes, then  for through-plane consistency; label 255
                            an "unknown" channel            (unknown) sets only the unknown channel;
                                                            slices outside the volume are all zero
1                           previous generated slice (u.)   autoregressive context along z
1                           has-previous flag (0 or 1)      slice 0 / dropped context: prev is zeros
1                           z position ``k / (Z − 1)``      rough cranio-caudal position in the scan
                                                            (0 with ``slice_position`` off)
==========================  ==============================  ===========================================

Global conditions:

* contrast phase → MONAI's class embedding (``num_class_embeds``), added to the time embedding;
  phase 0 ("unknown") is also the unconditional phase for classifier-free guidance; with
  ``phase_prior`` also a per-pixel channel, added inside `SliceDenoiser`: the phase's typical HU
  (`guidegen.data.phase.typical_hu`, model units) on the pixels of each enhancing structure of
  slice k, zero elsewhere and for phase 0;
* the per-case *annotated classes* K-vector, the pooled prompt embedding (D = 384) and a has-text
  flag → one MLP-projected cross-attention token (N, 1, context_dim). A learned null token
  replaces it for unconditional samples (CFG dropout and the unconditional branch of guidance).

The annotated vector is how partial labels are handled: in a training case where, say, the liver
was not annotated, liver voxels carry another label (usually "body"); the vector tells the network
that "body" may hide a liver there. At generation time every class is annotated.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from guidegen.data.phase import typical_hu
from guidegen.diffusion.flow import velocity_from_x0
from guidegen.images.config import PHASES, SAMPLE_PREDICTION_MIN_T, ImageGeneratorConfig
from guidegen.images.hu import hu_to_unit
from guidegen.labels.vocabulary import ID, UNKNOWN, class_sources

__all__ = [
    "OUTSIDE",
    "SliceDenoiser",
    "assemble_inputs",
    "context_labels",
    "mask_channels",
    "phase_id",
    "phase_prior_table",
]

#: Label value marking a context slice outside the volume (all its channels are zero).
OUTSIDE = -1


def phase_id(phase: str | int | None) -> int:
    """Id of a contrast phase in `PHASES` (``None`` → 0, unknown)."""
    if phase is None:
        return 0
    if isinstance(phase, bool):
        raise ValueError(f"phase must be a name, an id or None, got {phase!r}")
    if isinstance(phase, int):
        if not 0 <= phase < len(PHASES):
            raise ValueError(f"phase id must be in 0..{len(PHASES) - 1}, got {phase}")
        return phase
    try:
        return PHASES.index(str(phase))
    except ValueError:
        raise ValueError(f"phase must be one of {', '.join(PHASES)} or None, got {phase!r}") from None


def context_labels(labels: Tensor, k: int, radius: int) -> Tensor:
    """Label slices k−r … k+r of volumes, `OUTSIDE` where the index leaves the volume.

    Args:
        labels: (N, X, Y, Z) integer label volumes (ids < K, or 255 = unknown).
        k: slice index along z.
        radius: r.

    Returns:
        (N, 2r + 1, X, Y) int64.
    """
    if labels.ndim != 4:
        raise ValueError(f"labels must have shape (N, X, Y, Z), got {tuple(labels.shape)}")
    n, x, y, z = labels.shape
    out = torch.full((n, 2 * radius + 1, x, y), OUTSIDE, dtype=torch.int64, device=labels.device)
    for j, kk in enumerate(range(k - radius, k + radius + 1)):
        if 0 <= kk < z:
            out[:, j] = labels[..., kk].long()
    return out


def mask_channels(ctx: Tensor, num_classes: int) -> Tensor:
    """One-hot + unknown channels of context label slices.

    Args:
        ctx: (N, S, H, W) int64 ids: 0…K−1 a class, 255 unknown, `OUTSIDE` (−1) outside the volume.
        num_classes: K.

    Returns:
        (N, S·(K + 1), H, W) float32; for each context slice K one-hot channels then the unknown channel.
    """
    if ctx.ndim != 4:
        raise ValueError(f"ctx must have shape (N, S, H, W), got {tuple(ctx.shape)}")
    valid = (ctx >= 0) & (ctx < num_classes)
    onehot = F.one_hot(torch.where(valid, ctx, 0), num_classes).to(torch.float32)  # (N, S, H, W, K)
    onehot = onehot * valid.unsqueeze(-1)
    unknown = (ctx == UNKNOWN).to(torch.float32).unsqueeze(-1)
    both = torch.cat([onehot, unknown], dim=-1)  # (N, S, H, W, K + 1)
    n, s, h, w, c = both.shape
    return both.permute(0, 1, 4, 2, 3).reshape(n, s * c, h, w)


def assemble_inputs(noisy: Tensor, masks: Tensor, prev: Tensor, has_prev: Tensor, z: Tensor) -> Tensor:
    """Stack the UNet input (N, C_in, H, W) in the documented channel order.

    Args:
        noisy: (N, 1, H, W) ``x_t`` in model units.
        masks: (N, S·(K + 1), H, W) from `mask_channels`.
        prev: (N, 1, H, W) previous slice in model units (zeros when there is none).
        has_prev: (N,) 1 where ``prev`` is a real previous slice, else 0.
        z: (N,) slice position in [0, 1].
    """
    n, _, h, w = noisy.shape
    flag = has_prev.to(noisy.dtype).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    zpos = z.to(noisy.dtype).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    prev = prev * flag  # a hidden previous slice is exactly zero, whatever the caller passed
    return torch.cat([noisy, masks.to(noisy.dtype), prev.to(noisy.dtype), flag, zpos], dim=1)


def phase_prior_table(num_phases: int, num_classes: int, structures: str = "core") -> Tensor:
    """(P, K) typical value of each class in each phase, model units: `typical_hu` (``structures``,
    `ImageGeneratorConfig.enhancing_structures`) for the enhancing structures of the named phases,
    0 for every other class and for phase 0 (unknown)."""
    table = torch.zeros(num_phases, num_classes)
    typical = typical_hu(structures)
    for p, name in enumerate(PHASES[:num_phases]):
        for structure, hu in typical.get(name, {}).items():
            if ID[structure] < num_classes:
                table[p, ID[structure]] = float(hu_to_unit(np.array(hu)))
    return table


class SliceDenoiser(nn.Module):
    """Velocity network ``v_θ(x_t, t | masks, prev, phase, annotated, text)`` for one axial slice.

    Args:
        config: the generator configuration (network size, K, text width …).
    """

    def __init__(self, config: ImageGeneratorConfig):
        super().__init__()
        self.config = config
        if config.phase_prior:
            # Built from the code's table, not stored with the weights (persistent=False): a
            # checkpoint stays loadable, and the table is documented in guidegen.data.phase.
            self.register_buffer(
                "prior_table",
                phase_prior_table(config.num_phases, config.num_classes, config.enhancing_structures),
                persistent=False,
            )
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=config.in_channels + int(config.phase_prior),
            out_channels=1,
            num_res_blocks=config.num_res_blocks,
            channels=tuple(config.channels),
            attention_levels=config.attention_levels_resolved,
            norm_num_groups=config.norm_num_groups,
            num_head_channels=config.num_head_channels,
            with_conditioning=True,
            cross_attention_dim=config.context_dim,
            num_class_embeds=config.num_phases,
            use_flash_attention=config.use_flash_attention,
        )
        width = config.num_classes + config.text_dim + 1
        self.cond_proj = nn.Sequential(
            nn.Linear(width, config.context_dim), nn.SiLU(), nn.Linear(config.context_dim, config.context_dim)
        )
        # Small random init (not zeros) so that "no condition" differs from a zero condition from step 0.
        self.null_token = nn.Parameter(torch.randn(1, 1, config.context_dim) * 0.02)

    def condition_token(self, annotated: Tensor, text: Tensor | None, uncond: Tensor | None) -> Tensor:
        """The cross-attention context (N, 1, context_dim).

        Args:
            annotated: (N, K) 1 for annotated classes, 0 otherwise.
            text: (N, D) pooled prompt embeddings, or ``None`` (no prompt: zeros and has-text = 0).
            uncond: (N,) bool, True → the learned null token.
        """
        n = annotated.shape[0]
        if annotated.shape != (n, self.config.num_classes):
            raise ValueError(f"annotated must have shape (N, {self.config.num_classes}), got {tuple(annotated.shape)}")
        if text is None:
            text = annotated.new_zeros(n, self.config.text_dim)
            has_text = annotated.new_zeros(n, 1)
        else:
            if text.shape != (n, self.config.text_dim):
                raise ValueError(f"text must have shape (N, {self.config.text_dim}), got {tuple(text.shape)}")
            # A row of zeros means "no prompt" for that sample (lets batches mix both).
            has_text = (text.abs().sum(dim=1, keepdim=True) > 0).to(annotated.dtype)
        feats = torch.cat([annotated.float(), text.float(), has_text.float()], dim=1)
        token = self.cond_proj(feats).unsqueeze(1)
        if uncond is not None:
            token = torch.where(uncond.reshape(n, 1, 1), self.null_token.to(token.dtype).expand_as(token), token)
        return token

    def forward(
        self,
        inputs: Tensor,
        t: Tensor,
        phase: Tensor,
        annotated: Tensor,
        text: Tensor | None = None,
        uncond: Tensor | None = None,
        levels: Tensor | None = None,
    ) -> Tensor:
        """Predict the velocity ``ε − x_0`` of the noisy slice (directly, or from the predicted clean
        slice when ``config.prediction`` is "sample").

        Args:
            inputs: (N, C_in, H, W) from `assemble_inputs`.
            t: (N,) flow times in [0, 1] (scaled by ``config.flow.time_scale`` for the embedding).
            phase: (N,) int64 phase ids (`PHASES`).
            annotated: (N, K) annotated-class indicator.
            text: (N, D) pooled prompt embeddings or ``None``.
            uncond: (N,) bool: unconditional samples (phase → 0, null token).
            levels: (N, K) the value of each class in the phase-prior channel, model units, in place
                of the phase's typical values (training with ``prior_levels`` "measured"); ignored
                without ``phase_prior``; still zero for phase 0 (unknown or unconditional).

        Returns:
            (N, 1, H, W) velocity in model units per unit time.
        """
        if inputs.ndim != 4 or inputs.shape[1] != self.config.in_channels:
            raise ValueError(f"inputs must have shape (N, {self.config.in_channels}, H, W), got {tuple(inputs.shape)}")
        if uncond is not None:
            phase = torch.where(uncond, torch.zeros_like(phase), phase)
        context = self.condition_token(annotated, text, uncond)
        noisy = inputs[:, :1]
        if self.config.phase_prior:
            prior = self.phase_prior(inputs, phase, levels)
            inputs = torch.cat([inputs, prior], dim=1)
        out = self.unet(inputs, t * self.config.flow.time_scale, context=context, class_labels=phase.long())
        if self.config.prior_residual:
            out = out + prior.to(out.dtype)  # the UNet predicted the deviation from the typical level
        if self.config.prediction == "sample":
            out = velocity_from_x0(noisy, out, t, min_t=SAMPLE_PREDICTION_MIN_T)
        return out

    def phase_prior(self, inputs: Tensor, phase: Tensor, levels: Tensor | None = None) -> Tensor:
        """(N, 1, H, W) the phase's typical value (or ``levels``, (N, K)) of each pixel's class of
        slice k (the centre context slice's one-hot channels of ``inputs``); zero where the table
        has none and for phase 0."""
        k = self.config.num_classes
        start = 1 + self.config.context_radius * (k + 1)  # after x_t and the context slices above k
        onehot = inputs[:, start : start + k]
        if levels is None:
            weights = self.prior_table[phase.long()].to(inputs.dtype)  # (N, K); row 0 is all zero
        else:
            if levels.shape != (inputs.shape[0], k):
                raise ValueError(f"levels must have shape (N, {k}), got {tuple(levels.shape)}")
            weights = torch.where((phase.long() > 0).reshape(-1, 1), levels.to(inputs.dtype), 0.0)
        return torch.einsum("nkhw,nk->nhw", onehot, weights).unsqueeze(1)


def grown_weights(
    weights: dict[str, Tensor], old: ImageGeneratorConfig, new: ImageGeneratorConfig
) -> dict[str, Tensor]:
    """A trained generator's weights for a network with more classes (``init_from``, issue 24).

    Only two tensors depend on the class count: the first convolution's mask channels and the
    condition projection's annotated-class columns. A newer class's mask channels start as a copy of
    its `FALLBACK` class's (body), so on any map the grown network computes exactly what the old one
    computed on the folded map; its annotated flag starts with zero weight. Training then separates them.
    """
    if old.num_classes == new.num_classes:
        return dict(weights)
    sources = class_sources(old.num_classes, new.num_classes)
    k0, k = old.num_classes, new.num_classes
    out = dict(weights)
    for name, w in weights.items():
        if name.endswith("unet.conv_in.conv.weight"):
            index = [0]
            for s in range(old.context_slices):
                index += [1 + s * (k0 + 1) + src for src in sources] + [1 + s * (k0 + 1) + k0]
            index += list(range(1 + old.context_slices * (k0 + 1), w.shape[1]))  # prev, flags, prior
            out[name] = w[:, index].clone()
        elif name.endswith("cond_proj.0.weight"):
            grown = torch.zeros(w.shape[0], w.shape[1] + k - k0, dtype=w.dtype)
            grown[:, :k0] = w[:, :k0]
            grown[:, k:] = w[:, k0:]
            out[name] = grown
    return out
