"""A learned tumour stage: a second, conditioned network that draws the stated tumours into a map.

Why a second network (issue 24, "the network, not the rules, should carry the text adherence"):
the mask sampler's network, asked to draw organs and a 30-voxel tumour in one map, learnt neither
where nor how large the tumour should be. Taught its size through a count term, its tumour drifted
out of the stated organ step after step; taught its host through a host term, it learnt to draw
none (docs/results/mask_sampler_count_film.txt). The tumour is a small object whose place depends
on the organs around it, so it is drawn here by a network that *sees* the organs: given the
anatomy (the first stage's map without tumours), the stated host as a region of that map (the
organ, or its stated colon segment / liver lobe), and the stated diameter and count, two small 3-D
UNets draw the tumours: the *site* network gives a distribution over the voxels where a tumour's
centre may sit, from which each tumour's centre is drawn; the *shape* network, given that centre,
draws the tumour's voxels at the stated diameter. Where the tumour goes, its extent and its shape
against the organs around it are the networks'; nothing is placed, fitted or redrawn by rules. What
the prompt leaves unstated is drawn from the training ranges: a diameter uniformly in the host's
range of `guidegen.data.ops.DIAMETER_RANGES_MM`, and the further tumours of a group up to the stated
(largest) diameter.

Why not one diffusion model, as the first stage: tried first, a two-class multinomial diffusion of
the tumour mask with the same inputs learnt, in 1250 steps, to copy x_t and to draw the stated volume,
but not to use the host channel (its tumour probability ignored it: the same with the channels
zeroed), so its tumours fell anywhere in the window. The two supervised networks learn the site
from one cross-entropy over the window's voxels and the shape from a per-voxel one, with a dense
signal from the first step (docs/results/tumour_stage.txt).

Trained (`guidegen.masks.tumour_stage_train`) on the first stage's real training maps, augmented
the same way, with real tumour shapes inserted at random hosts, diameters and counts
(`guidegen.data.ops.TumourInsertion`): the same tumours the first stage was shown.

Inputs per voxel: host region, soft tissue a tumour may grow into
(`guidegen.data.ops.base.soft_ids`), everything else labelled (organs, vessels, bone), and the
outside of the labelled anatomy (background and unknown voxels); the shape network also gets the
drawn centre (a Gaussian of one voxel's width). The stated tumour enters every residual block
through MONAI's timestep-embedding path (a linear map of `tumour_vector`; the timestep is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from scipy import ndimage
from torch import Tensor, nn

from guidegen.checkpoint import load_checkpoint, load_weights, save_checkpoint
from guidegen.data.ops import DIAMETER_RANGES_MM
from guidegen.data.ops.base import soft_ids
from guidegen.errors import InputError
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, TUMOUR_HOSTS, UNKNOWN
from guidegen.text.attributes import KIDNEY_UNSPECIFIED, Tumour
from guidegen.text.measure import colon_segment_of, liver_lobe_of

#: Input channels: host region, soft tissue, other labelled structures, outside.
CONDITION_CHANNELS = 4
#: Width (voxels) of the Gaussian that marks a tumour's centre for the shape network.
CENTRE_SIGMA_VOXELS = 1.0
#: Typical tumour diameter the log-size feature is centred on (mm), as in the first stage.
_REFERENCE_DIAMETER_MM = 30.0
#: Seed-sequence prefix of the stage's choices and draws ("lrnt").
_STAGE_STREAM = 0x6C726E74


def tumour_vector_dim() -> int:
    return len(TUMOUR_HOSTS) + 3


def tumour_vector(host: str, diameter_mm: float | None, count: int | None) -> np.ndarray:
    """Host one-hot (`TUMOUR_HOSTS`), diameter [known, log(d / 30 mm)], count min(n, 4) / 4.

    ``count=None`` is "more than one, number not stated" ("multiple metastases"), read as two, as
    the first stage's attribute record reads it; ``diameter_mm=None`` leaves the size to the network.
    """
    v = np.zeros(tumour_vector_dim(), dtype=np.float32)
    v[TUMOUR_HOSTS.index(host)] = 1
    i = len(TUMOUR_HOSTS)
    if diameter_mm:
        v[i] = 1
        v[i + 1] = math.log(float(diameter_mm) / _REFERENCE_DIAMETER_MM)
    v[i + 2] = min(count or 2, 4) / 4
    return v


def host_region(labels: Volume, host: str, segment: str | None = None) -> np.ndarray:
    """Bool mask of the host's voxels, restricted to the stated colon segment or liver lobe when the
    map shows that part (else the whole host: an unreadable frame must not leave no host at all)."""
    mask = labels.array == ID[host]
    if segment is None or not mask.any() or host not in ("colon", "liver"):
        return mask
    points = np.argwhere(mask)
    locate = colon_segment_of if host == "colon" else liver_lobe_of
    names = np.asarray(locate(labels, labels.world_coordinates(points)), dtype=object)
    inside = names == segment
    if not inside.any():
        return mask
    out = np.zeros_like(mask)
    out[tuple(points[inside].T)] = True
    return out


def window_around(
    host_mask: np.ndarray, window: tuple[int, ...], jitter: np.ndarray | None = None
) -> tuple[slice, ...]:
    """The ``window``-sized box of the map centred on the host region's bounding box (shifted by
    ``jitter`` voxels in training), kept inside the map: the stage draws inside it only."""
    points = np.argwhere(host_mask)
    centre = (points.min(0) + points.max(0)) // 2 if len(points) else np.array(host_mask.shape) // 2
    if jitter is not None:
        centre = centre + jitter
    out = []
    for c, w, size in zip(centre, window, host_mask.shape):
        start = int(np.clip(c - w // 2, 0, size - w))
        out.append(slice(start, start + w))
    return tuple(out)


def condition_channels(labels: Volume, host_mask: np.ndarray) -> np.ndarray:
    """(CONDITION_CHANNELS, X, Y, Z) float32: host region, soft tissue, other labels, outside."""
    array = labels.array
    soft = np.isin(array, soft_ids(array)) & ~host_mask
    outside = (array == ID["background"]) | (array == UNKNOWN)
    other = ~(host_mask | soft | outside)
    return np.stack([host_mask, soft, other, outside]).astype(np.float32)


@dataclass(frozen=True)
class TumourStageConfig:
    """The tumour stage's networks, training and data (saved next to every checkpoint).

    ``shape`` / ``spacing`` must be the first stage's grid (the stage draws into its maps); the data
    fields name the same real maps, prepared the same way (`guidegen.masks.train.load_base_cases`).
    """

    # grid (the mask sampler's)
    shape: tuple[int, int, int] = (48, 48, 40)
    spacing: tuple[float, float, float] = (8.0, 8.0, 8.0)
    # The box around the host region the networks see and draw in (256 mm at 8 mm: a liver fits):
    # a third of the map's voxels, so training steps cost a third.
    window: tuple[int, int, int] = (32, 32, 32)
    # networks (MONAI DiffusionModelUNet, 3-D, no attention: the tumour is a local object)
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    # The shape network's probability above which a voxel is tumour.
    threshold: float = 0.5
    # A later tumour's centre is not drawn within this many voxels of an earlier tumour.
    separation: int = 1
    # Training: how often the diameter is left out of the site network's input (prompts do not always
    # state it), and how often a colon or liver tumour's host region is the whole organ rather than
    # its segment / lobe.
    p_drop_diameter: float = 0.2
    p_whole_host: float = 0.3
    seed: int = 0
    steps: int = 800
    batch_size: int = 4
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    # Augmented anatomies drawn once per run (tumours are inserted into them afresh at every step).
    pool_size: int = 240
    p_elastic: float = 0.8
    p_organ_scaling: float = 0.5
    prepared_cache: str = ".cache/prepared-8mm-ts"
    data_sources: tuple[str, ...] = (
        "data/real/totalseg-example-a",
        "data/real/masks-only",
        "data/real/msd-spleen-8",
        "data/real/totalseg-dataset/s0001",
        "data/real/totalseg-dataset/s0004",
        "data/real/totalseg-dataset/s0009",
        "data/real/totalseg-dataset/s0327",
    )
    min_extent_mm: float = 150.0

    def __post_init__(self) -> None:
        levels = 2 ** (len(self.channels) - 1)
        if len(self.shape) != 3 or len(self.window) != 3 or any(w % levels for w in self.window):
            raise ValueError(f"shape and window must be 3 sizes each, the window's divisible by {levels}")
        if any(w > s for w, s in zip(self.window, self.shape)):
            raise ValueError(f"window {self.window} must fit in shape {self.shape}")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.separation < 0:
            raise ValueError(f"separation must be >= 0, got {self.separation!r}")
        for name in ("p_drop_diameter", "p_whole_host", "p_elastic", "p_organ_scaling"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.pool_size < 1:
            raise ValueError("batch_size and pool_size must be positive")


def _unet(config: TumourStageConfig, in_channels: int) -> DiffusionModelUNet:
    unet = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=1,
        channels=config.channels,
        attention_levels=(False,) * len(config.channels),
        num_res_blocks=config.num_res_blocks,
        norm_num_groups=config.norm_num_groups,
        num_class_embeds=1,
    )
    # MONAI adds class_embedding(class_labels) to the timestep embedding every ResnetBlock gets;
    # a linear map of the tumour vector replaces its lookup table.
    unet.class_embedding = nn.Linear(tumour_vector_dim(), config.channels[0] * 4)
    return unet


class TumourNetworks(nn.Module):
    """``site(condition (N, 4, …), vector (N, V))`` → centre logits (N, 1, …);
    ``shape(condition, centre (N, 1, …), vector)`` → tumour logits (N, 1, …)."""

    def __init__(self, config: TumourStageConfig):
        super().__init__()
        self.config = config
        self.site_net = _unet(config, CONDITION_CHANNELS)
        self.shape_net = _unet(config, CONDITION_CHANNELS + 1)

    @staticmethod
    def _t(x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def site(self, condition: Tensor, vector: Tensor) -> Tensor:
        return self.site_net(condition, timesteps=self._t(condition), class_labels=vector)

    def shape(self, condition: Tensor, centre: Tensor, vector: Tensor) -> Tensor:
        return self.shape_net(torch.cat([condition, centre], dim=1), timesteps=self._t(condition), class_labels=vector)


def centre_map(shape: tuple[int, ...], centre: np.ndarray) -> np.ndarray:
    """(X, Y, Z) float32: a Gaussian of `CENTRE_SIGMA_VOXELS` at voxel ``centre`` (peak 1)."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return np.exp(-d2 / (2 * CENTRE_SIGMA_VOXELS**2)).astype(np.float32)


def resolve_host(tumour: Tumour, labels: Volume, rng: np.random.Generator) -> str | None:
    """The `TUMOUR_HOSTS` organ a stated tumour group goes into, if the map has it: a kidney without a
    side and a tumour without a host are drawn among the hosts present."""
    present = [h for h in TUMOUR_HOSTS if np.any(labels.array == ID[h])]
    if tumour.organ is None:
        return present[int(rng.integers(len(present)))] if present else None
    if tumour.organ == KIDNEY_UNSPECIFIED:
        kidneys = [h for h in ("kidney_right", "kidney_left") if h in present]
        return kidneys[int(rng.integers(len(kidneys)))] if kidneys else None
    return tumour.organ if tumour.organ in present else None


def group_diameters(host: str, diameter_mm: float | None, count: int | None, rng: np.random.Generator) -> list[float]:
    """Each tumour's diameter: the first the stated one (else drawn in the host's training range),
    the others drawn up to it, as the training data has them; "multiple" (``None``) is two."""
    low, high = DIAMETER_RANGES_MM[host]
    first = float(diameter_mm) if diameter_mm else float(rng.uniform(low, high))
    return [first] + [float(rng.uniform(min(low, first), first)) for _ in range((count or 2) - 1)]


class TumourStage:
    """The trained stage: ``draw(map, tumours, seed)`` returns the map with the stated tumours drawn."""

    def __init__(self, config: TumourStageConfig, model: TumourNetworks | None = None, device: str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.model = (model or TumourNetworks(config)).to(self.device).eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> TumourStage:
        config, weights, _ = load_checkpoint(folder, TumourStageConfig)
        model = TumourNetworks(config)
        load_weights(model, weights, folder)
        return cls(config, model, device)

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        return save_checkpoint(
            folder, self.config, self.model.state_dict(), overwrite=overwrite, metadata={"component": "tumour_stage"}
        )

    @torch.no_grad()
    def draw_group(
        self, labels: Volume, host_mask: np.ndarray, host: str, tumour: Tumour, rng: np.random.Generator
    ) -> np.ndarray:
        """Bool (X, Y, Z): the voxels of one stated tumour group, drawn into ``labels`` inside the window
        around the host region: each tumour's centre drawn from the site network's distribution
        (away from the tumours before it), its voxels from the shape network."""
        cfg = self.config
        box = window_around(host_mask, cfg.window)
        channels = np.ascontiguousarray(condition_channels(labels, host_mask)[(slice(None), *box)])
        condition = torch.from_numpy(channels)[None].to(self.device)
        site_vector = torch.from_numpy(tumour_vector(host, tumour.diameter_mm, tumour.count))[None].to(self.device)
        logits = self.model.site(condition, site_vector)[0, 0].double().cpu()
        drawn = np.zeros(cfg.window, dtype=bool)
        taken = torch.zeros(cfg.window, dtype=torch.bool)
        for diameter in group_diameters(host, tumour.diameter_mm, tumour.count, rng):
            probs = torch.softmax(logits.masked_fill(taken, -torch.inf).flatten(), 0).numpy()
            if not np.isfinite(probs).all() or probs.sum() <= 0:
                break  # the window is full
            index = int(rng.choice(probs.size, p=probs / probs.sum()))
            centre = np.array(np.unravel_index(index, cfg.window))
            mark = torch.from_numpy(centre_map(cfg.window, centre))[None, None].to(self.device)
            shape_vector = torch.from_numpy(tumour_vector(host, diameter, 1))[None].to(self.device)
            voxels = torch.sigmoid(self.model.shape(condition, mark, shape_vector))[0, 0].cpu().numpy() > cfg.threshold
            drawn |= voxels
            near = voxels.copy()
            near[tuple(centre)] = True
            if cfg.separation:
                near = ndimage.binary_dilation(near, iterations=cfg.separation)
            taken |= torch.from_numpy(near)
        out = np.zeros(labels.shape, dtype=bool)
        out[box] = drawn
        return out

    def draw(self, labels: Volume, tumours: tuple[Tumour, ...], seed: int) -> tuple[Volume, dict]:
        """The map with each stated tumour group drawn in turn (later groups see the earlier ones as
        labelled tissue). The map should hold no tumour of its own (`remove_tumours` first)."""
        if tuple(labels.shape) != tuple(self.config.shape):
            raise InputError(None, f"the tumour stage draws on a {self.config.shape} grid, got a {labels.shape} map")
        rng = np.random.default_rng([_STAGE_STREAM, int(seed) % 2**64])
        array = labels.array.copy()
        groups = []
        for tumour in tumours:
            current = labels.with_array(array)
            host = resolve_host(tumour, current, rng)
            if host is None:
                groups.append({"organ": tumour.organ, "drawn": False, "why": "no such host organ in the map"})
                continue
            mask = host_region(current, host, tumour.segment)
            voxels = self.draw_group(current, mask, host, tumour, rng)
            array[voxels & (array != UNKNOWN)] = ID["tumour"]
            groups.append({"organ": host, "segment": tumour.segment, "drawn": True, "voxels": int(voxels.sum())})
        return labels.with_array(array), {"mode": "learned", "groups": groups}
