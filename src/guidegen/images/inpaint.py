"""Inpainting a real CT: regenerate it only where its label map was edited (issue 25).

`guidegen edit` changes a real scan's label map (a tumour placed, an organ resized) and asks the
image generator for new CT only inside the changed voxels plus a margin; everything else stays the
real scan, bit for bit, at its own resolution.

How (the rectified-flow form of RePaint, Lugmayr et al., CVPR 2022, without resampling rounds):

* **A crop at the generator's resolution.** The generator's grid (`any_grid.model_grid`: 128² in-plane
  centred on the body, the model's voxel size) is cut in z to the slab around the edit
  (`inpaint_slab`); the real CT and the edited labels are resampled onto it.
* **Known outside, model inside** (`sample_inpainted`). For each slice of the slab that holds edited
  voxels, the flow starts from noise ε and after every Euler step the voxels outside the edit are
  reset to the real CT carried to that time, ``x_t = (1 − t)·x_real + t·ε`` (the straight path of
  `guidegen.diffusion.flow`, with the slice's own ε), so the network only ever sees states of the
  real scan there and draws the edit to fit them. At t = 0 those voxels are the real CT exactly. The
  slice autoregression is fed the real previous slice where the slice before is not edited.
* **Only the crop goes back.** The generated slab is resampled (linear) onto the native voxels of the
  edit region's bounding box; inside the region it is blended with the real CT by a weight that is 1
  on the changed voxels and up to half the margin and falls linearly to 0 at the margin's edge, so
  there is no step at the seam. Outside the region + margin nothing is written.
* **Levels joined to the real scan** (`guidegen.images.seam`): before the blend, the generated box is
  shifted by a per-tissue harmonic offset field that takes the real scan's level on the region's
  border (Poisson image editing), and the margin's real gas and the unchanged voxels of hollow
  organs (stomach, bowel: gas, contents, wall) are kept real.
* **Levels from data.** New tumours are shifted to the level real tumours of that host show in that
  phase (`guidegen.images.levels.relative_tumour_hu`: relative to the real host organ of this scan
  for the liver), and native-resolution grain is added where the scan's grid is finer than the
  model's (`guidegen.images.texture`), as in bring-your-own-mask generation; a new tumour's grain
  is then raised to the share of its real host's grain that real tumours show
  (`guidegen.images.tumour_grain`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from guidegen.data.body import complete_body, unknown_as_body
from guidegen.diffusion.flow import FlowConfig, euler_step, sampling_schedule
from guidegen.errors import InputError
from guidegen.grids.resample import resample_ct
from guidegen.grids.upsample import upsample_labels
from guidegen.images.any_grid import model_grid
from guidegen.images.config import ImageGeneratorConfig
from guidegen.images.generator import (
    ConditionalImageGenerator,
    SliceVelocity,
    annotated_vector,
    checked_ids,
    correlated_noise,
    image_settings,
)
from guidegen.images.grain import interior
from guidegen.images.hu import hu_to_unit, unit_to_hu
from guidegen.images.levels import (
    SOLID_TUMOUR_FLOOR_HU,
    TUMOUR_DEPTH_MM,
    relative_tumour_hu,
    scan_phase,
    tumour_host,
    tumour_level,
)
from guidegen.images.model import context_labels, mask_channels, phase_id
from guidegen.images.native import sharp_borders
from guidegen.images.seam import GAS_HU, HOLLOW_CLASSES, level_offset
from guidegen.images.texture import add_texture, texture_applies
from guidegen.images.tumour_grain import match_tumour_grain
from guidegen.io.volume import HU_MAX, HU_MIN, Volume
from guidegen.labels.vocabulary import ID, drawn_as, fold_for_drawing
from guidegen.runtime.backends import torch_threads_for
from guidegen.settings import GenerationSettings

__all__ = ["DEFAULT_MARGIN_MM", "EditRegion", "edit_region", "inpaint_ct", "inpaint_slab", "sample_inpainted"]

#: Margin (mm) regenerated around the changed voxels: two model voxels of the shipped 3 mm model,
#: enough room for the blend and for the network to join the edit to the real tissue around it.
DEFAULT_MARGIN_MM = 6.0


@dataclass(frozen=True)
class EditRegion:
    """The voxels an edit may change, in a bounding box of the native grid.

    Attributes:
        box: the box's slices (X, Y, Z) in the full array.
        region: (box shape) bool, changed voxels plus the margin: the only voxels written.
        weight: (box shape) float32 in [0, 1], the generated CT's share in the blend (0 outside ``region``).
        changed: (box shape) bool, the voxels whose label changed.
        distance_mm: (box shape) float32 distance to the nearest changed voxel (0 on them).
    """

    box: tuple[slice, slice, slice]
    region: np.ndarray
    weight: np.ndarray
    changed: np.ndarray
    distance_mm: np.ndarray

    def full(self, shape: Sequence[int]) -> np.ndarray:
        """``region`` as a bool mask of the whole array."""
        out = np.zeros(tuple(shape), dtype=bool)
        out[self.box] = self.region
        return out


def edit_region(changed: np.ndarray, spacing: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM) -> EditRegion:
    """The changed voxels plus ``margin_mm`` (Euclidean, in mm), and their blend weights.

    Args:
        changed: (X, Y, Z) bool, voxels whose label the edit changed (at least one).
        spacing: voxel size (mm) along the array axes.
        margin_mm: margin around the changed voxels, > 0.

    Returns:
        The `EditRegion` (the box is the region's bounding box, clipped to the array).
    """
    if not changed.any():
        raise ValueError("changed must hold at least one voxel")
    if not (math.isfinite(margin_mm) and margin_mm > 0):
        raise ValueError(f"margin_mm must be a positive number, got {margin_mm!r}")
    spacing = tuple(float(s) for s in spacing)
    idx = np.argwhere(changed)
    pad = [int(math.ceil(margin_mm / s)) + 1 for s in spacing]
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + 1 + np.array(pad), changed.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inner = changed[box]
    distance = ndimage.distance_transform_edt(~inner, sampling=spacing).astype(np.float32)
    region = distance <= margin_mm
    # 1 up to half the margin, then linearly down to 0 at its edge (so the last voxel inside is
    # mostly real tissue and the seam has no step).
    half = 0.5 * margin_mm
    weight = np.clip((margin_mm - distance) / half, 0.0, 1.0).astype(np.float32) * region
    return EditRegion(box, region, weight, inner, distance)


def inpaint_slab(
    labels: Volume, region_full: np.ndarray, config: ImageGeneratorConfig, context: int
) -> tuple[np.ndarray, tuple[int, int, int], int, int]:
    """The generator's grid (`model_grid`) cut in z to the slab around an edit.

    Args:
        labels: the (completed) label map, canonical RAS+.
        region_full: (X, Y, Z) bool edit region on that map's grid.
        config: the generator's configuration (in-plane size, voxel size).
        context: model slices of real context kept on each side of the edit (within the scan).

    Returns:
        (affine, shape, first, last): the slab's grid and the slab slices [first, last] that hold the edit.
    """
    affine, shape = model_grid(labels, config)
    # z (world) of the region's voxel centres → model slice indices.
    zs = np.nonzero(region_full.any(axis=(0, 1)))[0]
    world_z = labels.affine[2, 2] * np.array([zs.min(), zs.max()], dtype=np.float64) + labels.affine[2, 3]
    k = (world_z - affine[2, 3]) / affine[2, 2]
    k_lo = int(np.clip(np.floor(k.min()), 0, shape[2] - 1))
    k_hi = int(np.clip(np.ceil(k.max()), 0, shape[2] - 1))
    s_lo, s_hi = max(0, k_lo - context), min(shape[2] - 1, k_hi + context)
    slab = affine.copy()
    slab[:3, 3] = affine[:3, 3] + affine[:3, 2] * s_lo
    return slab, (shape[0], shape[1], s_hi - s_lo + 1), k_lo - s_lo, k_hi - s_lo


@torch.no_grad()
def sample_inpainted(
    model: nn.Module,
    labels: Tensor,
    known: Tensor,
    keep: Tensor,
    *,
    flow: FlowConfig,
    steps: int,
    guidance: float,
    phase: Tensor,
    annotated: Tensor,
    text: Tensor | None,
    generators: Sequence[torch.Generator],
    network,
    noise_correlation: float = 0.0,
) -> Tensor:
    """`guidegen.images.generator.sample_volume` with the known voxels held to the real CT.

    Slices whose voxels are all known are returned as they are (no noise drawn, no network call) and
    serve as the next slice's previous slice; in the others the flow runs as in `sample_volume`,
    and after each Euler step ``x[keep] = (1 − t)·known + t·ε`` (module docstring).

    Args:
        model: gives ``config`` (context radius, classes, slice position, sample shift).
        labels: (N, X, Y, Z) int64 label volumes (255 unknown).
        known: (N, X, Y, Z) float32 real CT in model units.
        keep: (N, X, Y, Z) bool, True where the real CT is kept.
        flow, steps, guidance, phase, annotated, text, generators, noise_correlation: as in `sample_volume`.
        network: the velocity network (`ConditionalImageGenerator.network`).

    Returns:
        (N, X, Y, Z) float32 volumes in model units; equal to ``known`` wherever ``keep``.
    """
    cfg = model.config
    n, x, y, z = labels.shape
    if known.shape != labels.shape or keep.shape != labels.shape:
        raise ValueError(
            f"known and keep must have the labels' shape {tuple(labels.shape)}, "
            f"got {tuple(known.shape)} and {tuple(keep.shape)}"
        )
    if len(generators) != n:
        raise ValueError(f"generators must hold one generator per volume ({n}), got {len(generators)}")
    device = labels.device
    shift = getattr(cfg, "sample_shift", None)
    times = [float(v) for v in sampling_schedule(steps, flow.shift if shift is None else shift)]
    slice_velocity = SliceVelocity(network, guidance, phase, annotated, text, n, device)
    out = known.clone()
    noise = None
    with torch_threads_for(network):
        for k in range(z):
            keep_k = keep[..., k].unsqueeze(1)
            if bool(keep_k.all()):
                noise = None  # the noise chain restarts after an unedited slice
                continue
            known_k = known[..., k].unsqueeze(1)
            masks = mask_channels(context_labels(labels, k, cfg.context_radius), cfg.num_classes)
            zpos = torch.full((n,), k / max(z - 1, 1) if cfg.slice_position else 0.0, device=device)
            prev = out[..., k - 1].unsqueeze(1) if k > 0 else torch.zeros_like(known_k)
            has_prev = torch.full((n,), 1.0 if k > 0 else 0.0, device=device)
            fresh = torch.stack([torch.randn(1, x, y, generator=g, device=device) for g in generators])
            noise = correlated_noise(noise, fresh, noise_correlation)
            velocity = slice_velocity.at(masks, prev, has_prev, zpos)
            state = noise
            for t, t_next in zip(times, times[1:]):
                state = euler_step(state, velocity(state, t).to(state.dtype), t, t_next)
                state = torch.where(keep_k, (1.0 - t_next) * known_k + t_next * noise, state)
            out[..., k] = torch.where(keep_k, known_k, state.clamp(-1.0, 1.0))[:, 0]
    return out


def _resample_back(slab_hu: np.ndarray, slab_affine: np.ndarray, affine: np.ndarray, shape) -> np.ndarray:
    """Linear resampling of the slab onto a native box; beyond the slab's outermost voxel centres the
    edge value continues (the box lies inside the slab's extent, up to half a model voxel)."""
    m = np.linalg.inv(slab_affine) @ affine
    return ndimage.affine_transform(slab_hu, m[:3, :3], m[:3, 3], output_shape=tuple(shape), order=1, mode="nearest")


def _set_tumour_levels(
    hu: np.ndarray, labels: np.ndarray, new_tumour: np.ndarray, real: np.ndarray, spacing, phase: str | None
) -> list[dict]:
    """Shift each new tumour (a connected component) to `relative_tumour_hu` of its host, in place;
    in a host without a level, up to `SOLID_TUMOUR_FLOOR_HU` when the network drew it below."""
    record: list[dict] = []
    components, count = ndimage.label(new_tumour)
    for index in range(1, count + 1):
        comp = components == index
        host = tumour_host(labels, comp)
        entry: dict = {"voxels": int(comp.sum()), "host": host}
        host_mask = interior(labels == ID[host], spacing, TUMOUR_DEPTH_MM) if host else None
        host_hu = float(real[host_mask].mean()) if host_mask is not None and host_mask.any() else None
        target = relative_tumour_hu(host, phase, host_hu) if host and phase else None
        before = tumour_level(hu, comp, spacing)
        if target is None and before < SOLID_TUMOUR_FLOOR_HU:
            target = SOLID_TUMOUR_FLOOR_HU
            entry["rule"] = "soft-tissue floor"
        if target is None:
            entry["left"] = "no tumour level for this host and phase (the network's own, above the soft-tissue floor)"
        else:
            hu[comp] += target - before
            entry.update(before_hu=round(before, 1), target_hu=round(target, 1), host_hu=host_hu and round(host_hu, 1))
        record.append(entry)
    return record


def _join_to_real(
    generated: np.ndarray,
    real: np.ndarray,
    labels: np.ndarray,
    region: EditRegion,
    spacing,
    new_tumour: np.ndarray | None,
    tumour_levels: list[dict] | None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The generated box shifted onto the real scan's levels (`guidegen.images.seam.level_offset`)
    and the blend weight with the margin's real gas and unchanged hollow-organ voxels kept (weight
    0: the generator draws bowel gas, contents and wall unlike this scan, and a level offset cannot
    join them; the changed voxels themselves are always generated).

    New tumours whose level was set from real tumours get no offset; the others (no level for their
    host and phase) move with their host, keeping the contrast the network drew.
    """
    membrane = labels.copy()
    fixed = np.zeros(labels.shape, bool)
    moving: list[np.ndarray] = []
    if new_tumour is not None and new_tumour[region.box].any():
        components, count = ndimage.label(new_tumour[region.box])  # as `_set_tumour_levels` numbers them
        for index in range(1, count + 1):
            comp = components == index
            entry = tumour_levels[index - 1] if tumour_levels and index <= len(tumour_levels) else {}
            if entry.get("target_hu") is not None:
                fixed |= comp
            else:
                host = tumour_host(labels, comp)
                if host:
                    membrane[comp] = ID[host]
                moving.append(comp)
    offset, record = level_offset(generated, real, membrane, region.region, spacing, fixed=fixed)
    joined = generated + offset
    # A tumour that moved with its host keeps the soft-tissue floor (the host's offset can take it
    # below: a spleen drawn 35 HU brighter than the real one took its tumour from 43 to 7 HU).
    raised = 0
    for comp in moving:
        level = tumour_level(joined, comp, spacing)
        if level < SOLID_TUMOUR_FLOOR_HU:
            offset[comp] += SOLID_TUMOUR_FLOOR_HU - level  # so that the recorded mean offset includes it
            joined[comp] += SOLID_TUMOUR_FLOOR_HU - level
            raised += 1
    # Unchanged voxels of hollow organs (gas, contents and wall) and any real gas stay real.
    hollow = np.isin(labels, [ID[n] for n in HOLLOW_CLASSES if n in ID])
    gas_kept = region.region & ~region.changed & ((real < GAS_HU) | hollow)
    weight = np.where(gas_kept, 0.0, region.weight).astype(np.float32)
    solved = region.region & ~fixed
    record.update(
        mean_offset_hu=round(float(offset[solved].mean()), 1) if solved.any() else 0.0,
        real_voxels_kept=int(gas_kept.sum()),
        tumours_raised_to_floor=raised,
    )
    return joined, weight, record


@torch.no_grad()
def inpaint_ct(
    model: ConditionalImageGenerator,
    ct: Volume,
    labels: Volume,
    changed: np.ndarray,
    *,
    new_tumour: np.ndarray | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    seed: int = 0,
    annotated: Sequence[str] | None = None,
    settings: GenerationSettings | None = None,
    texture: bool = True,
    levels: bool = True,
    seamless: bool = True,
    **options: object,
) -> tuple[Volume, EditRegion, dict]:
    """Regenerate a real CT inside an edited region of its label map (module docstring).

    Args:
        model: a trained generator.
        ct: the real CT, canonical RAS+ (HU, any numeric dtype).
        labels: the *edited* label map on the CT's grid (GuideGen ids).
        changed: (X, Y, Z) bool, voxels whose label the edit changed.
        new_tumour: (X, Y, Z) bool, tumour voxels the edit added (their levels are set); default none.
        margin_mm: regenerated margin around ``changed``.
        seed: seed of the noise (the texture draws from its own stream of it).
        annotated: classes the map annotates (the generator's flags); ``None``: every class.
        settings: image settings (steps, guidance, phase, precision, backend); a ``phase`` of
            ``None`` is estimated from the real CT.
        texture, levels: native grain and tumour levels (module docstring).
        seamless: join the generated CT to the real one by a per-tissue offset field and keep the
            real gas of the margin (`_join_to_real`); ``False``: the linear blend alone.
        **options: any `GenerationSettings` field.

    Returns:
        (CT `Volume` with the input's grid and dtype, identical to ``ct`` outside the region and
        whole HU in [−1024, 3071] inside it,
        the `EditRegion`, a JSON-able record).

    Raises:
        InputError: the edit lies outside the generator's in-plane field of view.
    """
    settings = image_settings(settings, options)
    if not ct.same_grid(labels, atol=1e-2):
        raise ValueError("ct and labels must share one grid")
    cfg = model.config
    real = np.maximum(np.asarray(ct.array, dtype=np.float32), HU_MIN)
    lab = checked_ids(labels, cfg.num_classes).astype(np.uint8)
    region = edit_region(changed, ct.spacing, margin_mm)
    full_region = region.full(ct.shape)
    phase = settings.phase or scan_phase(real, lab)
    # The generator sees the map as in training: body completed, unknown inside the body as body.
    # Completed before the newer classes are folded for an older model: folded lungs and muscles
    # would be "body" voxels, and a map with body voxels gets no derived outline (its fat stays
    # background, which the generator draws as air).
    completion = complete_body(labels.with_array(np.asarray(labels.array).astype(np.uint8)), annotated)
    source = unknown_as_body(completion.labels)
    substituted = drawn_as(source.array, cfg.num_classes)
    source = source.with_array(fold_for_drawing(source.array, cfg.num_classes))
    slab_affine, slab_shape, first, last = inpaint_slab(source, full_region, cfg, cfg.context_radius + 1)
    # The region must lie inside the generator's in-plane field of view.
    pts = np.argwhere(full_region)
    corners = pts[[0, -1]]
    pts = pts[:: max(1, len(pts) // 20000)]  # a sample is enough to find a region beyond the edge
    slab_idx = (np.linalg.inv(slab_affine) @ labels.affine @ np.c_[pts, np.ones(len(pts))].T)[:3]
    if np.any(slab_idx[:2] < -0.5) or np.any(slab_idx[:2] > cfg.image_size - 0.5):
        raise InputError(
            labels.meta.get("source"),
            f"the edit (around voxel {corners[0].tolist()}) lies outside the generator's in-plane field of "
            f"view ({cfg.image_size} × {cfg.spacing[0]:g} mm centred on the body)",
        )
    slab_labels = upsample_labels(source, affine=slab_affine, shape=slab_shape)
    slab_real = resample_ct(ct.with_array(real), slab_affine, slab_shape).array
    # Model voxels to regenerate: any whose neighbourhood touches the region (one model voxel of slack,
    # so every native region voxel interpolates between generated model voxels only).
    m = np.linalg.inv(labels.affine) @ slab_affine
    slab_region = ndimage.affine_transform(
        full_region.astype(np.float32), m[:3, :3], m[:3, 3], output_shape=slab_shape, order=1, mode="constant"
    )
    free = ndimage.binary_dilation(slab_region > 0, structure=np.ones((3, 3, 3), bool))
    free[..., :first] = False
    free[..., last + 1 :] = False
    network = model.network(settings.backend, settings.precision)
    units = sample_inpainted(
        model,
        torch.from_numpy(slab_labels.array.astype(np.int64))[None].to(model.device),
        torch.from_numpy(hu_to_unit(slab_real))[None].to(model.device),
        torch.from_numpy(~free)[None].to(model.device),
        flow=cfg.flow,
        steps=settings.image_steps or cfg.flow_steps,
        guidance=cfg.guidance_scale if settings.image_guidance is None else settings.image_guidance,
        phase=torch.tensor([phase_id(phase)], dtype=torch.long, device=model.device),
        annotated=annotated_vector(completion.annotated, cfg.num_classes).to(model.device),
        text=None,
        generators=[torch.Generator(device=model.device).manual_seed(int(seed))],
        network=network,
        noise_correlation=cfg.noise_correlation,
    )[0]
    slab_hu = unit_to_hu(units.float().cpu().numpy()).astype(np.float32)
    box_affine = labels.affine.copy()
    box_affine[:3, 3] = labels.affine[:3, :3] @ np.array([s.start for s in region.box]) + labels.affine[:3, 3]
    box_shape = region.region.shape
    generated = _resample_back(slab_hu, slab_affine, box_affine, box_shape)
    box_labels = lab[region.box]
    borders = None
    if texture and texture_applies(box_affine, cfg.spacing):
        # As `generate_ct` does: structures keep their own HU up to their border on the finer grid.
        generated = sharp_borders(
            Volume(slab_hu, slab_affine, "ct"),
            slab_labels.array,
            np.asarray(source.array)[region.box],
            box_affine,
            generated,
            phase,
        )
        borders = {"applied": True}
    record: dict = {
        "phase": phase,
        "phase_estimated": settings.phase is None,
        "margin_mm": margin_mm,
        "box": [[s.start, s.stop] for s in region.box],
        "changed_voxels": int(region.changed.sum()),
        "region_voxels": int(region.region.sum()),
        "model_slices": [int(first), int(last)],
        "runtime": {"backend": network.backend, "precision": network.precision},
        "borders": borders,
        "drawn_as": substituted,
        "tumour_levels": None,
        "texture": None,
        "tumour_grain": None,
    }
    if levels and new_tumour is not None and new_tumour.any():
        record["tumour_levels"] = _set_tumour_levels(
            generated, box_labels, new_tumour[region.box], real[region.box], ct.spacing, phase
        )
    if texture:
        generated, record["texture"] = add_texture(generated, box_labels, box_affine, cfg.spacing, seed, phase)
        if new_tumour is not None and new_tumour.any():
            components, count = ndimage.label(new_tumour[region.box])  # as `_set_tumour_levels` numbers them
            hosts = [tumour_host(box_labels, components == i) for i in range(1, count + 1)]
            record["tumour_grain"] = match_tumour_grain(
                generated, components, hosts, real, np.where(changed, 0, lab), ct.spacing, cfg.spacing[0], seed
            )
    real_box = real[region.box]
    weight = region.weight
    if seamless:
        generated, weight, record["seam"] = _join_to_real(
            generated, real_box, box_labels, region, ct.spacing, new_tumour, record["tumour_levels"]
        )
    blended = weight * generated + (1.0 - weight) * real_box
    blended = np.clip(np.rint(blended), HU_MIN, HU_MAX)  # whole HU, as the scan's own voxels
    out = np.array(ct.array, copy=True)
    box_out = out[region.box]
    box_out[region.region] = blended[region.region].astype(out.dtype)
    return ct.with_array(out), region, record
