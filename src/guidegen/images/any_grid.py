"""Bring your own mask: a CT for a label map on any grid, returned on that grid.

`generate_ct` takes any label map at any spacing and orientation, gives it the body outline and
the unknown voxels the model was trained on (`guidegen.data.body`), resamples it onto the model
grid (`model_grid`), generates with `guidegen.images.generator.ConditionalImageGenerator`, resamples
the CT back onto the input grid (so the returned CT and the input labels share shape and affine
exactly) and, where that grid is finer than the model's, adds texture and data-driven levels
(`guidegen.images.native`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from guidegen.data.body import BODY_THRESHOLD_HU, complete_body, unknown_as_body
from guidegen.errors import InputError
from guidegen.grids.geometry import world_extent
from guidegen.grids.resample import grid_affine, resample_ct
from guidegen.grids.upsample import upsample_labels
from guidegen.images.config import ImageGeneratorConfig
from guidegen.images.generator import ConditionalImageGenerator, SliceCallback, checked_ids, image_settings
from guidegen.images.hu import int16_hu
from guidegen.images.native import finish_native, sharp_borders
from guidegen.images.texture import texture_applies
from guidegen.io.volume import Volume, canonical
from guidegen.labels.vocabulary import ID, NAMES, NUM_CLASSES, UNKNOWN, drawn_as, fold_for_drawing
from guidegen.settings import GenerationSettings

__all__ = ["MIN_TISSUE_FRACTION", "generate_ct", "model_grid"]

#: A generated CT is refused as "nearly all air" when fewer than this share of its labelled voxels
#: (any class but background and unknown) lie above `BODY_THRESHOLD_HU` (lungs drawn as "body" are
#: below it, so the share is not 1 for a correct CT; a failed one is near 0).
MIN_TISSUE_FRACTION = 0.25


def model_grid(
    labels: Volume, config: ImageGeneratorConfig, fov: Literal["crop", "fit"] = "crop"
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The model grid for a label map: axis-aligned RAS+, centred in-plane on the labelled body.

    Like `guidegen.data.prepare` does for training data: ``image_size``² voxels in-plane centred on
    the bounding box of the labelled voxels, the full z extent of the input at the model's z spacing.

    Args:
        labels: any label `Volume`.
        config: gives the model's spacing and in-plane size.
        fov: ``"crop"`` keeps the model's voxel size (anatomy beyond ``image_size · spacing`` mm is
            cut and becomes air); ``"fit"`` enlarges the in-plane voxel size when the labelled
            region is wider than that, so everything fits (the model then sees anatomy smaller
            than in training).

    Returns:
        (affine (4, 4), shape (X, Y, Z)).
    """
    if fov not in ("crop", "fit"):
        raise ValueError(f"fov must be 'crop' or 'fit', got {fov!r}")
    lo, hi = world_extent(labels)
    fg = (labels.array > 0) & (labels.array != UNKNOWN)
    if fg.any():
        idx = np.argwhere(fg)
        flo, fhi = world_extent(labels, idx.min(0), idx.max(0))
    else:
        flo, fhi = lo, hi
    centre = (flo + fhi) / 2
    sx, sy, sz = (float(s) for s in config.spacing)
    size = config.image_size
    if fov == "fit":
        need = float(max(fhi[0] - flo[0], fhi[1] - flo[1])) / size
        sx, sy = max(sx, need), max(sy, need)
    nz = max(1, int(np.floor((hi[2] - lo[2]) / sz + 1e-6)))
    origin = np.array(
        [
            centre[0] - (size - 1) / 2 * sx,
            centre[1] - (size - 1) / 2 * sy,
            lo[2] + sz / 2 + ((hi[2] - lo[2]) - nz * sz) / 2,
        ]
    )
    return grid_affine((sx, sy, sz), origin), (size, size, nz)


@torch.no_grad()
def generate_ct(
    model: ConditionalImageGenerator,
    labels: Volume | np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    prompt: str | None = None,
    text_embedding: Tensor | None = None,
    annotated: Sequence[str] | None = None,
    settings: GenerationSettings | None = None,
    fov: Literal["crop", "fit"] = "crop",
    callback: SliceCallback | None = None,
    add_body: bool = True,
    texture: bool = True,
    levels: bool = True,
    borders: bool | None = None,
    **options: object,
) -> Volume:
    """Bring your own mask: a CT for any GuideGen label map, returned on exactly the input's grid.

    The map is first shown to the model the way its training maps looked (`guidegen.data.body`):
    with ``add_body``, a map without "body" voxels gets a body outline derived from its structures
    (else the CT would be organs floating in air) and background enclosed by the body becomes
    "body"; unknown voxels (255) inside the body are shown as "body" (unannotated tissue), those
    outside it stay unknown (outside the scan: air). The labels are then resampled onto the model
    grid (`model_grid`; shape-based interpolation with `guidegen.grids.upsample.upsample_labels`, so
    coarse maps are not staircased), the CT is generated there and resampled back (linear,
    anti-aliased when the input grid is coarser) onto the input grid, the model grid's edge slices
    extended by one voxel so the input's first and last slices are covered; anything further
    outside the model's field of view is air (−1024 HU). Where the input grid is finer than the
    model's, texture and data-driven levels are added (`guidegen.images.native`).

    Args:
        model: a trained generator.
        labels: label `Volume` (any orientation and voxel size) in GuideGen ids, or a bare (X, Y, Z)
            array of ids in RAS+ order together with ``spacing``.
        spacing: voxel size in mm; required for a bare array, and overrides a `Volume`'s voxel
            size (keeping its axis directions and position) when its header is wrong.
        annotated: the classes the map annotates (the model's annotated-class flags); default
            every class. "body" is added when its outline is derived.
        seed, prompt, text_embedding, settings, callback: see `ConditionalImageGenerator.generate`
            (the contrast phase is the settings' ``phase``).
        fov: see `model_grid`.
        add_body: complete the body outline (`guidegen.data.body.complete_body`); turn off only for
            a map already completed (or to see what the model draws without one).
        texture: where the input grid is finer than the model's, keep borders between structures
            sharp (unless ``borders`` says otherwise) and add scanner-noise grain
            (`guidegen.images.texture`); ``False``: the resampled model CT as it is.
        levels: set the levels the network does not learn (tumours, unenhanced blood, portal vein,
            bone, organs outside their phase's range, muscle the model drew as body:
            `guidegen.images.levels.calibrate_levels`), and remove the level jumps of homogeneous
            organs between slices (`guidegen.images.slice_levels`); ``False``: the network's own levels.
        borders: resample the CT within each structure (`guidegen.grids.class_resample`), so a
            structure keeps its own HU up to its border instead of the model grid's 3 mm blend
            with its neighbour; ``None``: as ``texture``.
        **options: any `GenerationSettings` field (``phase="arterial"``, ``image_steps=4``).

    Returns:
        int16 HU CT `Volume` with the input's shape and affine; ``meta["body"]`` says whether the
        body outline was "derived", ``meta["annotated"]`` lists the flags used (``None`` = all),
        ``meta["drawn_as"]`` the map's classes the model lacks and what it drew them as
        (`guidegen.labels.vocabulary.DRAWN_AS`) and ``meta["native"]`` what the texture and level
        steps did.

    Raises:
        InputError: label ids outside the vocabulary, or a CT that came out nearly all air (fewer
            than `MIN_TISSUE_FRACTION` of the labelled voxels above −500 HU).
    """
    settings = image_settings(settings, options)
    if isinstance(labels, np.ndarray):
        if spacing is None:
            raise ValueError("spacing is required when labels is a bare array")
        labels = Volume(labels, np.diag([*map(float, spacing), 1.0]), "labels")
    elif spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64)
        if sp.shape != (3,) or np.any(sp <= 0):
            raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing}")
        affine = labels.affine.copy()
        affine[:3, :3] = affine[:3, :3] / np.asarray(labels.spacing) * sp
        labels = labels.with_array(labels.array, affine=affine)
    if not isinstance(labels, Volume) or labels.kind != "labels":
        raise ValueError("labels must be a label Volume or an integer array")
    # Ids checked against the whole vocabulary; the body outline is completed on them before the
    # newer classes are folded for an older model: folded lungs and muscles would count as a body
    # outline, none would be derived, and the map's fat (background) would be drawn as air.
    ids = checked_ids(labels, NUM_CLASSES)
    source = labels.with_array(ids.astype(np.uint8))
    body = "as given"
    if add_body:
        completion = complete_body(source, annotated)
        source, annotated = completion.labels, completion.annotated
        body = "derived" if completion.derived else "from the map"
    source = unknown_as_body(source)
    substituted = drawn_as(source.array, model.config.num_classes)
    # Muscle has no look-alike class in an older model: drawn as body, then given its level.
    muscle = np.asarray(source.array) == ID["muscle"] if substituted.get("muscle") == "body" else None
    source = source.with_array(fold_for_drawing(np.asarray(source.array), model.config.num_classes).astype(np.uint8))
    affine, shape = model_grid(canonical(source), model.config, fov)
    on_grid = upsample_labels(source, affine=affine, shape=shape)
    # No grid check: with fov="fit" the in-plane voxel size may differ from the trained one on purpose.
    ct = model.generate(
        [on_grid],
        seed,
        prompt=prompt,
        text_embedding=text_embedding,
        annotated=annotated,
        settings=settings,
        callback=callback,
        check_grid=False,
    )[0]
    model_ct = _edge_extended(Volume(ct.array.astype(np.float32), affine, "ct"))
    back = resample_ct(model_ct, labels.affine, labels.shape)
    _check_not_air(np.rint(back.array), source, labels.meta.get("source"), model.config.spacing)
    hu_back, border_record = back.array, None
    if (texture if borders is None else borders) and texture_applies(labels.affine, model.config.spacing):
        hu_back = sharp_borders(
            model_ct, np.pad(on_grid.array, 1, mode="edge"), source.array, labels.affine, back.array, settings.phase
        )
        border_record = {
            "applied": True,
            "changed_fraction": round(float(np.mean(np.abs(hu_back - back.array) > 1.0)), 4),
        }
    # Issue 28: native-resolution texture and tumour / aorta levels (guidegen.images.native), on the
    # completed map (a derived body outline and unknown voxels inside it are body tissue).
    finished, native = finish_native(
        hu_back,
        source.array,
        labels.affine,
        model.config.spacing,
        seed=seed,
        phase=settings.phase,
        texture=texture,
        levels=levels,
        muscle=muscle,
    )
    hu = int16_hu(finished)
    meta = dict(
        ct.meta,
        model_grid={
            "shape": list(shape),
            "spacing_mm": [round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        },
        body=body,
        annotated=None if annotated is None else sorted(annotated, key=NAMES.index),
        drawn_as=substituted,
        native={"borders": border_record, **native},
    )
    return Volume(hu, labels.affine.copy(), "ct", meta)


def _edge_extended(ct: Volume) -> Volume:
    """The CT with one more voxel on every side, a copy of the edge voxel.

    The model grid's slice centres lie up to one model voxel inside the input's first and last
    slice centres (its z extent is a whole number of model slices); linear resampling gives air
    beyond the outermost centres, so without the copy the input's end slices came back as air.
    """
    affine = ct.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.ones(3)
    return Volume(np.pad(ct.array, 1, mode="edge"), affine, "ct", dict(ct.meta))


def _check_not_air(hu: np.ndarray, labels: Volume, where: object, model_spacing: Sequence[float]) -> None:
    labelled = (labels.array != 0) & (labels.array != UNKNOWN)
    if not labelled.any():
        return
    tissue = float(np.count_nonzero(hu[labelled] > BODY_THRESHOLD_HU)) / float(np.count_nonzero(labelled))
    if tissue < MIN_TISSUE_FRACTION:
        raise InputError(
            where,
            f"the generated CT is air (below {BODY_THRESHOLD_HU:.0f} HU) in {1 - tissue:.0%} of the "
            "labelled voxels, so no CT was written: the map is outside what the model can draw "
            f"(structures too small for its {'×'.join(f'{float(v):g}' for v in model_spacing)} mm grid?)",
        )
