"""The mask sampler's denoising network: a 3-D MONAI DiffusionModelUNet predicting p(x0 | xt).

Conditioning (GuideGen §3.2): cross-attention to the text tokens plus one extra token embedding
the parsed attribute record. For classifier-free guidance, the text is replaced by a learned null
sequence and the attributes by the all-unknown vector.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from guidegen.labels.vocabulary import class_sources
from guidegen.masks.conditioning import attribute_dim
from guidegen.masks.config import MaskSamplerConfig


class MaskDenoiser(nn.Module):
    """(x_t one-hot (N, K, X, Y, Z), t (N,), text (N, L, D), attributes (N, A)) → logits (N, K, X, Y, Z)."""

    def __init__(self, config: MaskSamplerConfig):
        super().__init__()
        self.config = config
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=config.num_classes,
            out_channels=config.num_classes,
            channels=config.channels,
            attention_levels=config.attention_levels,
            num_res_blocks=config.num_res_blocks,
            num_head_channels=config.num_head_channels,
            norm_num_groups=config.norm_num_groups,
            with_conditioning=True,
            cross_attention_dim=config.text_dim,
            use_flash_attention=True,
            num_class_embeds=1 if config.attributes_in_time_embedding else None,
        )
        if config.attributes_in_time_embedding:
            # MONAI adds ``class_embedding(class_labels)`` to the timestep embedding that every
            # ResnetBlock receives; a linear map of the attribute token replaces its lookup table.
            self.unet.class_embedding = nn.Linear(config.text_dim, config.channels[0] * 4)
        self.attribute_mlp = nn.Sequential(
            nn.Linear(attribute_dim(), config.text_dim), nn.SiLU(), nn.Linear(config.text_dim, config.text_dim)
        )
        self.null_text = nn.Parameter(torch.zeros(1, 1, config.text_dim))

    def context(self, text: Tensor | None, attributes: Tensor, drop_text: Tensor | None = None) -> Tensor:
        """(N, L + 1, D) cross-attention context; rows with ``drop_text`` get the null sequence."""
        n = attributes.shape[0]
        if text is None:
            # Same length as real text (the encoder pads to max_text_tokens): the softmax over keys
            # must see the same number of null tokens as in training, where rows are dropped.
            text = self.null_text.expand(n, self.config.max_text_tokens, -1)
        elif drop_text is not None and bool(drop_text.any()):
            null = self.null_text.expand(n, text.shape[1], -1)
            text = torch.where(drop_text[:, None, None], null, text)
        attr = self.attribute_mlp(attributes).unsqueeze(1)
        return torch.cat([text, attr], dim=1)

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        if self.config.attributes_in_time_embedding:
            # The attribute token is the last row of the context (see `context`).
            return self.unet(x_t, timesteps=t, context=context, class_labels=context[:, -1])
        return self.unet(x_t, timesteps=t, context=context)


def grown_weights(weights: dict[str, Tensor], old: MaskSamplerConfig, new: MaskSamplerConfig) -> dict[str, Tensor]:
    """A trained sampler's weights for a network with more classes (``init_from``, issue 24).

    The input convolution reads x_t's class channels and the output convolution writes one logit per
    class. A newer class starts as a copy of its `FALLBACK` class (body) on both sides, its logit
    lowered by log m (m: the classes now sharing that old class), so the old class's probability is
    shared among them and everything else is predicted as before. Training then separates them.

    A network grown to take the attribute token through the timestep embedding as well
    (``attributes_in_time_embedding``) starts that path at zero, so it too computes what the old one did.
    """
    out = dict(weights)
    if new.attributes_in_time_embedding and not old.attributes_in_time_embedding:
        out["unet.class_embedding.weight"] = torch.zeros(new.channels[0] * 4, new.text_dim)
        out["unet.class_embedding.bias"] = torch.zeros(new.channels[0] * 4)
    if old.num_classes == new.num_classes:
        return out
    sources = class_sources(old.num_classes, new.num_classes)
    share = torch.bincount(torch.tensor(sources), minlength=old.num_classes).to(torch.float32)
    for name, w in weights.items():
        if name.endswith("unet.conv_in.conv.weight"):
            out[name] = w[:, sources].clone()
        elif name.endswith("unet.out.2.conv.weight"):
            out[name] = w[sources].clone()
        elif name.endswith("unet.out.2.conv.bias"):
            out[name] = (w - share.log().to(w.dtype))[sources].clone()
    return out
