"""Training batches of the slice-wise CT generator from prepared cases (``guidegen prepare`` output).

Every axial slice k of every prepared case with a CT is a training example (`SliceDataset`): the
target is CT slice k (HU → model units, `guidegen.images.hu`), the condition is the label slices
k−r … k+r, the *real* slice k−1 (teacher forcing), the slice position, the case's annotated
classes and its contrast phase. `SliceDataset.make_batch` draws a `SliceBatch` and alters it as
follows; `guidegen.images.train` trains on it.

**Exposure bias.** At sampling time the previous slice is the model's own output, never a real
slice. Two measures keep the model from trusting its context too much (noise-conditioning
augmentation, Ho et al. "Cascaded Diffusion Models", JMLR 2022, §3.2, used here for the
autoregressive context):

* Gaussian noise with a std drawn uniformly in [0, ``prev_noise``] (model units) is added to the
  teacher-forced previous slice, so small errors of a generated slice look like training data;
* with probability ``prev_dropout`` the previous slice is hidden (has_prev = 0, zeros), which also
  trains the first slice of a volume, where there is no previous slice.

**Augmentation** is one in-plane similarity transform (rotation, zoom, shift) applied jointly to
target, previous slice and context masks (bilinear for CT padded with air, nearest for labels padded
with "unknown"); never a left/right flip (anatomy is not symmetric) and never an intensity change
(HU are physical quantities the model must reproduce).

**Classifier-free guidance**: with probability ``cond_dropout`` a sample is trained unconditionally
(phase 0 and the learned null token). Masks and previous slice are never dropped for guidance: the
CT must follow the mask in both branches.

All randomness of a batch comes from the step's generators (``guidegen.training.step_generators``),
drawn in a fixed order for the whole global batch, so that a resumed or data-parallel run sees the
same examples as an uninterrupted one-process run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from guidegen.data.phase import TYPICAL_HU, typical_hu
from guidegen.data.prepare import load_prepared
from guidegen.errors import InputError
from guidegen.images.config import ImageGeneratorConfig
from guidegen.images.hu import AIR_UNIT, hu_to_unit, unit_to_hu
from guidegen.images.model import OUTSIDE, phase_id, phase_prior_table
from guidegen.io.nifti import read_nifti
from guidegen.labels.vocabulary import ID, NAMES, UNKNOWN, fold_for_model, fold_names

__all__ = [
    "REMAP_PHASES",
    "SOFT_TISSUE_MAX_HU",
    "SliceBatch",
    "SliceDataset",
    "augment_slices",
    "hide_classes",
    "infer_phase",
    "measured_levels",
    "partial_volume_shift_map",
    "phase_shift_map",
]


def infer_phase(mean_hu: dict[str, float] | None) -> str | None:
    """Rough contrast phase from a case's mean HU per structure (``None`` when it cannot tell).

    Aortic enhancement is the clearest marker: unenhanced blood is 30–60 HU, arterial-phase aorta
    250–400 HU with a still unenhanced liver (< 90 HU), portal-venous aorta ~120–200 HU with an
    enhanced liver. Delayed phase is not distinguished (it is rare in public data).
    """
    if not mean_hu or "aorta" not in mean_hu:
        return None
    aorta = float(mean_hu["aorta"])
    liver = mean_hu.get("liver")
    if aorta < 90:
        return "non_contrast"
    if aorta >= 250 and (liver is None or float(liver) < 90):
        return "arterial"
    return "portal_venous"


@dataclass
class SliceBatch:
    """One training batch of B slices (all tensors on the CPU).

    Attributes:
        target: (B, 1, H, W) CT slice k, model units.
        ctx: (B, S, H, W) int64 label slices k−r … k+r (255 unknown, −1 outside the volume).
        prev: (B, 1, H, W) slice k−1 in model units (zeros where has_prev = 0).
        has_prev: (B,) float 0/1.
        z: (B,) slice position in [0, 1].
        phase: (B,) int64 phase ids.
        annotated: (B, K) float annotated-class indicators.
        text: (B, D) pooled prompt embeddings (zeros = no prompt).
        uncond: (B,) bool, trained unconditionally.
        levels: (B, K) the phase-prior channel's value of each class, model units
            (`ImageGeneratorConfig.prior_levels` "measured"), or ``None``: the phase's typical values.
    """

    target: Tensor
    ctx: Tensor
    prev: Tensor
    has_prev: Tensor
    z: Tensor
    phase: Tensor
    annotated: Tensor
    text: Tensor
    uncond: Tensor
    levels: Tensor | None = None


@dataclass
class _Case:
    case_id: str
    ct: Tensor  # (X, Y, Z) float32 model units
    labels: Tensor  # (X, Y, Z) uint8
    annotated: Tensor  # (K,)
    phase: int
    text: Tensor  # (D,)
    mean_hu: dict[str, float] = field(default_factory=dict)  # measured per structure (prepare's case.json)


class SliceDataset:
    """All axial slices of the prepared cases that have a CT, in memory (3 mm data is small).

    Args:
        prepared_dir: output folder of ``guidegen prepare``.
        config: generator config (class count, text width, held-out cases, phase inference).
        text_embeddings: optional case id → (D,) pooled prompt embedding (e.g. of a report derived
            from the case); cases without one are trained without text.
    """

    def __init__(
        self, prepared_dir: str | Path, config: ImageGeneratorConfig, text_embeddings: dict[str, Tensor] | None = None
    ):
        self.config = config
        self.cases: list[_Case] = []
        #: The structures the phase remap moves, for this config.
        self.enhancing = enhancing = enhancing_names(config.enhancing_structures)
        for entry in load_prepared(prepared_dir):
            if not entry["has_ct"] or entry["case_id"] in config.holdout_cases:
                continue
            ct = read_nifti(entry["ct_path"], kind="ct")
            labels = read_nifti(entry["labels_path"], kind="labels")
            # A config with fewer classes than the vocabulary (an older model's) sees newer classes
            # as what they were before (guidegen.labels.vocabulary.FALLBACK).
            labels = labels.with_array(fold_for_model(labels.array, config.num_classes))
            if ct.shape[:2] != (config.image_size, config.image_size) or not np.allclose(
                ct.spacing, config.spacing, rtol=0.02
            ):
                raise InputError(
                    entry["ct_path"],
                    f"is {ct.shape} at {ct.spacing} mm; the config expects "
                    f"{config.image_size}² in-plane at {config.spacing} mm (prepare with matching settings)",
                )
            annotated = torch.zeros(config.num_classes)
            annotated[0] = 1.0
            for name in fold_names([n for n in entry.get("annotated", []) if n in NAMES], config.num_classes):
                annotated[NAMES.index(name)] = 1.0
            phase = entry.get("phase")
            if "phase_estimate" in entry:
                # Estimated by `guidegen prepare` (guidegen.data.phase), which also uses the liver,
                # veins, spleen and kidneys and ignores structures with too few voxels: preferred,
                # even when it says "unknown". It is an inference, so infer_phase=False drops it.
                phase = phase if config.infer_phase else None
            elif phase is None and config.infer_phase:
                phase = infer_phase(entry.get("mean_hu"))  # caches prepared before phase estimation
            text = torch.zeros(config.text_dim)
            if text_embeddings and entry["case_id"] in text_embeddings:
                text = torch.as_tensor(text_embeddings[entry["case_id"]], dtype=torch.float32).reshape(config.text_dim)
            means = _interior_means(ct.array, labels.array, [n for n in entry.get("annotated", []) if n in enhancing])
            self.cases.append(
                _Case(
                    entry["case_id"],
                    torch.from_numpy(hu_to_unit(ct.array)),
                    torch.from_numpy(np.ascontiguousarray(labels.array)),
                    annotated,
                    phase_id(phase),
                    text,
                    means,
                )
            )
        if not self.cases:
            raise InputError(prepared_dir, "holds no prepared case with a CT to train on")
        self.index = [(c, k) for c, case in enumerate(self.cases) for k in range(case.ct.shape[2])]

    def __len__(self) -> int:
        return len(self.index)

    def make_batch(
        self,
        rng: np.random.Generator,
        gen: torch.Generator,
        batch_size: int,
        indices: Sequence[int] | None = None,
        train: bool = True,
        select: Sequence[int] | None = None,
    ) -> SliceBatch:
        """Draw (or take) slices and apply dropout and augmentation; deterministic given (rng, gen).

        Args:
            rng, gen: the step's generators (`guidegen.training.step_generators`).
            batch_size: B (ignored when ``indices`` is given).
            indices: fixed slice indices into `index` instead of random ones.
            train: apply prev-slice noise/dropout, condition dropout and augmentation.
            select: build only these positions of the batch (a process's share in distributed
                training); the random draws are still made for the whole batch, so example i is
                the same whichever positions are built with it.
        """
        cfg = self.config
        r = cfg.context_radius
        if indices is None:
            indices = rng.integers(0, len(self.index), size=batch_size).tolist()
        full = len(indices)
        chosen = None if select is None else [int(p) for p in select]
        if chosen is not None:
            indices = [indices[p] for p in chosen]
        targets, ctxs, prevs, has_prev, zs, phases, anns, texts = [], [], [], [], [], [], [], []
        item_cases: list[_Case] = []
        for i in indices:
            c, k = self.index[int(i)]
            case = self.cases[c]
            item_cases.append(case)
            depth = case.ct.shape[2]
            targets.append(case.ct[..., k])
            ctx = torch.full((2 * r + 1, *case.labels.shape[:2]), OUTSIDE, dtype=torch.int64)
            for j, kk in enumerate(range(k - r, k + r + 1)):
                if 0 <= kk < depth:
                    ctx[j] = case.labels[..., kk].long()
            ctxs.append(ctx)
            prevs.append(case.ct[..., k - 1] if k > 0 else torch.zeros_like(case.ct[..., 0]))
            has_prev.append(1.0 if k > 0 else 0.0)
            zs.append(k / max(depth - 1, 1))
            phases.append(case.phase)
            anns.append(case.annotated)
            texts.append(case.text)
        b = len(indices)
        batch = SliceBatch(
            target=torch.stack(targets).unsqueeze(1),
            ctx=torch.stack(ctxs),
            prev=torch.stack(prevs).unsqueeze(1),
            has_prev=torch.tensor(has_prev),
            z=torch.tensor(zs, dtype=torch.float32),
            phase=torch.tensor(phases, dtype=torch.int64),
            annotated=torch.stack(anns),
            text=torch.stack(texts),
            uncond=torch.zeros(b, dtype=torch.bool),
        )
        if not train:
            return batch
        # Draw every random number in a fixed order (exact resume depends on it), for the whole batch.
        drop_prev = rng.random(full) < cfg.prev_dropout
        prev_std = rng.uniform(0.0, cfg.prev_noise, size=full).astype(np.float32)
        uncond = rng.random(full) < cfg.cond_dropout
        do_aug = rng.random(full) < cfg.augment_prob
        angle = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, size=full))
        zoom = 1.0 + rng.uniform(-cfg.scale, cfg.scale, size=full)
        shift = rng.uniform(-cfg.translate_mm, cfg.translate_mm, size=(full, 2))
        prev_noise = torch.randn((full, *batch.prev.shape[1:]), generator=gen)
        if chosen is not None:
            drop_prev, prev_std, uncond, do_aug = drop_prev[chosen], prev_std[chosen], uncond[chosen], do_aug[chosen]
            angle, zoom, shift, prev_noise = angle[chosen], zoom[chosen], shift[chosen], prev_noise[chosen]
        drop_prev, prev_std = torch.from_numpy(drop_prev), torch.from_numpy(prev_std)
        batch.uncond = torch.from_numpy(uncond)
        batch.prev = batch.prev + prev_std.reshape(b, 1, 1, 1) * prev_noise
        batch.has_prev = batch.has_prev * (~drop_prev).float()
        batch.prev = batch.prev * batch.has_prev.reshape(b, 1, 1, 1)
        if do_aug.any():
            augment_slices(batch, do_aug, angle, zoom, shift, cfg.spacing[:2], cfg.label_interpolation)
        hide = None
        if cfg.p_hide_classes > 0:
            # Drawn after everything else, and only when enabled: old configs keep their streams.
            hide_item = rng.random(full) < cfg.p_hide_classes
            hide_class = rng.random((full, cfg.num_classes)) < 0.5
            if chosen is not None:
                hide_item, hide_class = hide_item[chosen], hide_class[chosen]
            hide = hide_item[:, None] & hide_class
        remapped = np.zeros(b, dtype=bool)
        if cfg.p_phase_remap > 0:
            remap_item = rng.random(full) < cfg.p_phase_remap
            remap_phase = rng.integers(0, len(REMAP_PHASES), size=full)
            if chosen is not None:
                remap_item, remap_phase = remap_item[chosen], remap_phase[chosen]
            # Before hiding classes: the shift follows the true anatomy, whatever is shown.
            for b_i in np.flatnonzero(remap_item):
                remapped[b_i] = _remap_phase(
                    batch,
                    int(b_i),
                    item_cases[b_i].mean_hu,
                    REMAP_PHASES[int(remap_phase[b_i])],
                    cfg.context_radius,
                    cfg.phase_remap_edge,
                    cfg.enhancing_structures,
                )
        if cfg.prior_levels == "measured":
            batch.levels = measured_levels(
                batch.phase,
                [c.mean_hu for c in item_cases],
                remapped,
                cfg.num_phases,
                cfg.num_classes,
                cfg.enhancing_structures,
            )
        if cfg.prev_shift_hu > 0:
            shift_hu = rng.uniform(-cfg.prev_shift_hu, cfg.prev_shift_hu, size=full)
            if chosen is not None:
                shift_hu = shift_hu[chosen]
            _shift_previous(batch, shift_hu, cfg.context_radius, self.enhancing)
        if hide is not None:
            hide_classes(batch, hide)
        return batch


def enhancing_names(structures: str = "core") -> tuple[str, ...]:
    """The structures whose HU the phase remap moves (`ImageGeneratorConfig.enhancing_structures`)."""
    return tuple(sorted({n for values in typical_hu(structures).values() for n in values}))


def _interior_means(
    ct_hu: np.ndarray, labels: np.ndarray, names: Sequence[str], min_voxels: int = 20
) -> dict[str, float]:
    """Mean HU inside each structure eroded by one voxel (its rim is partial volume with fat)."""
    means = {}
    for name in names:
        mask = labels == ID[name]
        interior = ndimage.binary_erosion(mask)
        use = interior if interior.sum() >= min_voxels else mask
        if use.sum() >= min_voxels:
            means[name] = float(ct_hu[use].mean())
    return means


#: Phases a slice may be re-rendered in (`ImageGeneratorConfig.p_phase_remap`).
REMAP_PHASES: tuple[str, ...] = tuple(TYPICAL_HU)


def phase_shift_map(
    labels: np.ndarray, mean_hu: dict[str, float], phase: str, sigma_px: float = 1.0, structures: str = "core"
) -> np.ndarray | None:
    """(H, W) HU to add to a slice so its enhancing structures take ``phase``'s typical HU.

    Each structure of `typical_hu` (``structures``) measured in the scan (``mean_hu``) moves by
    typical − measured; the map is blurred by ``sigma_px`` so a label edge does not become an
    intensity step. ``None`` when the scan has none of those structures measured (the slice cannot
    be re-rendered).
    """
    targets = {k: v for k, v in typical_hu(structures)[phase].items() if k in mean_hu}
    if not targets:
        return None
    shift = np.zeros(labels.shape, dtype=np.float32)
    for name, value in targets.items():
        shift[labels == ID[name]] = value - mean_hu[name]
    return ndimage.gaussian_filter(shift, sigma_px) if sigma_px > 0 else shift


#: Above this mean HU a structure is enhanced, brighter than any unlabelled soft tissue (muscle,
#: bowel wall, unenhanced vessels: 30-70 HU).
SOFT_TISSUE_MAX_HU = 100.0


def partial_volume_shift_map(
    ct_hu: np.ndarray,
    labels: np.ndarray,
    mean_hu: dict[str, float],
    phase: str,
    min_contrast_hu: float = 50.0,
    structures: str = "core",
) -> np.ndarray | None:
    """(H, W) HU to add to a slice so its enhancing structures take ``phase``'s typical HU, edges by
    their partial volume (`ImageGeneratorConfig.phase_remap_edge` "partial_volume").

    A pixel holding a fraction f of a structure at level S (the rest fat at level F) reads
    F + f·(S − F); re-rendering the structure at T moves it by f·(T − S). Inside the label, away
    from its one-pixel edge, f = 1: the whole shift T − S, so the interior lands on T and keeps the
    scan's noise and texture (a blurred shift map weakens it inside anything a few pixels across).
    On the label's edge and on the one-pixel ring of unlabelled tissue ("body") just outside it,
    f = (CT − F) / (S − F) clipped to [0, 1], with F the median CT of the unlabelled tissue two to
    three pixels out; on the ring around a structure no brighter than soft tissue
    (< `SOFT_TISSUE_MAX_HU`), at most the label blurred by one pixel. Where that tissue is too
    little (< 3 pixels) or the structure barely differs from it (|S − F| < ``min_contrast_hu``),
    the edge takes the whole shift and nothing outside moves. Other labelled neighbours (bone,
    other organs) never move. ``None`` as `phase_shift_map`.
    """
    targets = {k: v for k, v in typical_hu(structures)[phase].items() if k in mean_hu}
    if not targets:
        return None
    shift = np.zeros(labels.shape, dtype=np.float32)
    tissue = labels == ID["body"]
    for name, value in targets.items():
        mask = labels == ID[name]
        if not mask.any():
            continue
        delta = value - mean_hu[name]
        shift[mask] = delta
        near = ndimage.binary_dilation(mask)
        ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(near) & tissue
        if ring.sum() < 3:
            continue
        fat = float(np.median(ct_hu[ring]))
        contrast = mean_hu[name] - fat
        if abs(contrast) < min_contrast_hu:
            continue
        fraction = np.clip((ct_hu - fat) / contrast, 0.0, 1.0)
        edge = mask & ~ndimage.binary_erosion(mask)
        outer = near & ~mask & tissue
        shift[edge] = delta * fraction[edge]
        if mean_hu[name] < SOFT_TISSUE_MAX_HU:
            # Outside the label the CT cannot tell a partial-volume pixel of an unenhanced structure
            # from soft tissue (the crus beside an unenhanced aorta reads like blood): there, never
            # more than the label blurred by one pixel gives. An enhanced structure is brighter
            # than any soft tissue, so a bright pixel beside it is its partial volume.
            fraction = np.minimum(fraction, ndimage.gaussian_filter(mask.astype(np.float32), 1.0))
        shift[outer] += delta * fraction[outer]
    return shift


def _add_hu(slice_units: Tensor, shift_hu: np.ndarray) -> Tensor:
    """A model-unit slice with ``shift_hu`` added in HU (the unit mapping is piecewise linear)."""
    return hu_to_unit(unit_to_hu(slice_units) + torch.from_numpy(shift_hu))


def measured_levels(
    phase: Tensor,
    mean_hu: Sequence[dict[str, float]],
    remapped: np.ndarray,
    num_phases: int,
    num_classes: int,
    structures: str = "core",
) -> Tensor:
    """(B, K) the phase-prior channel's value of each class for B training items, model units
    (`ImageGeneratorConfig.prior_levels` "measured").

    An item keeps the typical values of its phase (`phase_prior_table`; zero for phase 0) except for
    the enhancing structures its scan has measured (``mean_hu``, HU), which take the measured
    level, unless the phase remap re-rendered the item (``remapped``): that puts every measured
    structure at the typical level, so the typical values are then what the target shows.
    """
    levels = phase_prior_table(num_phases, num_classes, structures)[phase.long()].clone()
    enhancing = enhancing_names(structures)
    for b, means in enumerate(mean_hu):
        if remapped[b] or int(phase[b]) == 0:
            continue
        for name, hu in means.items():
            if name in enhancing and ID[name] < num_classes:
                levels[b, ID[name]] = float(hu_to_unit(np.array(hu)))
    return levels


def _remap_phase(
    batch: SliceBatch,
    b: int,
    mean_hu: dict[str, float],
    phase: str,
    radius: int,
    edge: str = "blur",
    structures: str = "core",
) -> bool:
    """Re-render item ``b`` (target and previous slice) in ``phase`` and label it so (in place);
    False when the scan has measured none of the structures to move (nothing changed).

    ``edge``: `ImageGeneratorConfig.phase_remap_edge`; ``structures``: its ``enhancing_structures``.
    """

    def shift_map(slice_units: Tensor, labels: Tensor) -> np.ndarray | None:
        if edge == "partial_volume":
            return partial_volume_shift_map(
                unit_to_hu(slice_units).numpy(), labels.numpy(), mean_hu, phase, structures=structures
            )
        return phase_shift_map(labels.numpy(), mean_hu, phase, structures=structures)

    target_shift = shift_map(batch.target[b, 0], batch.ctx[b, radius])
    if target_shift is None:
        return False
    batch.target[b, 0] = _add_hu(batch.target[b, 0], target_shift)
    if radius >= 1 and float(batch.has_prev[b]) > 0:
        prev_shift = shift_map(batch.prev[b, 0], batch.ctx[b, radius - 1])
        if prev_shift is not None:
            batch.prev[b, 0] = _add_hu(batch.prev[b, 0], prev_shift)
    batch.phase[b] = phase_id(phase)
    return True


def _shift_previous(batch: SliceBatch, shift_hu: np.ndarray, radius: int, names: Sequence[str]) -> None:
    """Add ``shift_hu[b]`` HU to the enhancing structures (``names``) of item b's previous slice (in place)."""
    if radius < 1:
        return
    enhancing = torch.tensor([ID[n] for n in names])
    for b in range(batch.prev.shape[0]):
        if float(batch.has_prev[b]) == 0 or shift_hu[b] == 0:
            continue
        where = torch.isin(batch.ctx[b, radius - 1], enhancing).numpy().astype(np.float32)
        batch.prev[b, 0] = _add_hu(batch.prev[b, 0], ndimage.gaussian_filter(where, 1.0) * float(shift_hu[b]))


def hide_classes(batch: SliceBatch, hide: np.ndarray) -> None:
    """Show classes ``hide[b, c]`` of item b as unannotated, the way preparation shows them (in place).

    A prepared partial map (AMOS: no bones or bowel) labels unannotated tissue inside the body as
    "body" (`guidegen.data.prepare`), so hidden pixels become "body" where the item's body class is
    annotated and background elsewhere, and their flags go off. Background, "body" (every prepared
    case has it) and the tumour are never hidden. Hidden pixels shown as background instead made a
    pattern no prepared map has (holes inside the body), and the model trained on it rendered the
    held-out AMOS map's body ever darker along z, −100 to −350 HU
    (docs/results/image_generator_noncontrast.txt).
    """
    hide = torch.from_numpy(hide) & (batch.annotated > 0)
    for name in ("background", "body", "tumour"):
        hide[:, NAMES.index(name)] = False
    if not bool(hide.any()):
        return
    ctx = batch.ctx
    valid = (ctx >= 0) & (ctx < hide.shape[1])
    hidden = torch.gather(hide, 1, torch.where(valid, ctx, 0).flatten(1)).reshape(ctx.shape) & valid
    has_body = (batch.annotated[:, ID["body"]] > 0).reshape(-1, *([1] * (ctx.dim() - 1)))
    fill = torch.where(has_body, torch.full_like(ctx, ID["body"]), torch.zeros_like(ctx))
    batch.ctx = torch.where(hidden, fill, ctx)
    batch.annotated = torch.where(hide, torch.zeros_like(batch.annotated), batch.annotated)


def augment_slices(
    batch: SliceBatch,
    apply: np.ndarray,
    angle: np.ndarray,
    zoom: np.ndarray,
    shift_mm: np.ndarray,
    spacing_xy: Sequence[float],
    label_interpolation: str = "nearest",
) -> None:
    """Joint in-plane similarity transform of target, prev and context masks (in place).

    ``label_interpolation``: "nearest", or "linear" (`ImageGeneratorConfig.label_interpolation`).
    """
    b, _, h, w = batch.target.shape
    theta = torch.zeros(b, 2, 3, dtype=torch.float32)
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    # affine_grid maps output → input normalised coordinates; (x, y) = (W axis, H axis).
    theta[:, 0, 0] = torch.from_numpy(cos).float()
    theta[:, 0, 1] = torch.from_numpy(-sin).float()
    theta[:, 1, 0] = torch.from_numpy(sin).float()
    theta[:, 1, 1] = torch.from_numpy(cos).float()
    theta[:, 0, 2] = torch.from_numpy(2 * shift_mm[:, 1] / (w * spacing_xy[1])).float()
    theta[:, 1, 2] = torch.from_numpy(2 * shift_mm[:, 0] / (h * spacing_xy[0])).float()
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    theta[torch.from_numpy(~apply)] = identity
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    sel = torch.from_numpy(apply)
    # CT: bilinear, padded with air (sample x − air so that zero padding means air).
    for name in ("target", "prev"):
        x = getattr(batch, name)
        moved = (
            F.grid_sample(x[sel] - AIR_UNIT, grid[sel], mode="bilinear", padding_mode="zeros", align_corners=False)
            + AIR_UNIT
        )
        x = x.clone()
        x[sel] = moved
        setattr(batch, name, x)
    batch.prev = batch.prev * batch.has_prev.reshape(b, 1, 1, 1)  # a hidden previous slice stays zero
    # Labels: padded with UNKNOWN; slices outside the volume stay outside.
    ctx = batch.ctx[sel]
    outside = (ctx == OUTSIDE).all(dim=(2, 3), keepdim=True)
    if label_interpolation == "linear":
        moved = _resample_labels_linear(ctx, grid[sel])
    else:
        moved = (
            F.grid_sample(ctx.float() - UNKNOWN, grid[sel], mode="nearest", padding_mode="zeros", align_corners=False)
            .round()
            .long()
            + UNKNOWN
        )
    moved = torch.where(outside, torch.full_like(moved, OUTSIDE), moved)
    new_ctx = batch.ctx.clone()
    new_ctx[sel] = moved
    batch.ctx = new_ctx


def _resample_labels_linear(ctx: Tensor, grid: Tensor) -> Tensor:
    """Label slices (N, C, H, W) int64 moved by ``grid`` with bilinear weights on their one-hot codes.

    Each output pixel takes the label with the largest bilinear weight, so a boundary lands where the
    bilinearly moved CT crosses halfway between the two sides, exactly where the CT edge went;
    out-of-volume weight counts for UNKNOWN. Every value of ``ctx`` other than UNKNOWN (the classes,
    and OUTSIDE, which never mixes with them within a slice) keeps its own code.
    """
    order = torch.unique(torch.cat([ctx.flatten(), torch.tensor([UNKNOWN], dtype=ctx.dtype)]))  # sorted codes
    index = torch.searchsorted(order, ctx)
    n, c, h, w = ctx.shape
    one_hot = F.one_hot(index, len(order)).permute(0, 1, 4, 2, 3).float()  # (N, C, V, H, W)
    weights = F.grid_sample(
        one_hot.reshape(n, c * len(order), h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).reshape(n, c, len(order), h, w)
    unknown = int(torch.nonzero(order == UNKNOWN)[0])
    weights[:, :, unknown] += 1.0 - weights.sum(2)  # weight that fell outside the slice is unknown
    return order[weights.argmax(2)]
