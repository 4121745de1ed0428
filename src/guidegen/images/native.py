"""The last step of `guidegen.images.any_grid.generate_ct`: from the model's CT, resampled onto the
user's grid, to a CT that looks like CT at that grid's resolution.

Before them, where the grid is finer than the model's, the CT is resampled within each structure
(`guidegen.grids.class_resample`; `border_fill_classes` says which structures keep their inside's
HU up to their border); `generate_ct` and the edit's inpainting do that, since it needs the model
grid's CT and labels. Then three independent corrections, in this order (each can be turned off):

1. `guidegen.images.slice_levels.even_slice_levels`: one level along z per homogeneous organ (the
   slice-by-slice generator's level jumps between slices removed, a smooth z trend kept);
2. `guidegen.images.levels.calibrate_levels`: the levels the network does not learn (tumours,
   unenhanced blood, portal vein, bone, organs outside their phase's range, muscle drawn as body);
3. `guidegen.images.texture.add_texture`: scanner-noise grain at the scales the model grid cannot
   carry, where the grid is finer than the model's.

Only `generate_ct` calls this; CT drawn on the model grid (`guidegen generate`) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from guidegen.grids.class_resample import point_spread, resample_ct_within_classes
from guidegen.images.levels import calibrate_levels
from guidegen.images.slice_levels import CONSISTENT_CLASSES, UNENHANCED_ONLY, even_slice_levels
from guidegen.images.texture import add_texture
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID

__all__ = ["border_fill_classes", "finish_native", "sharp_borders"]


def border_fill_classes(phase: str | None) -> tuple[str, ...]:
    """Structures that keep their inside's HU up to their border on a finer grid
    (`guidegen.grids.class_resample`): parenchyma, fluid and blood (kidneys only unenhanced: their
    cortex enhances), lung, muscle, the body's fat and the air outside it. Bone (cortex), hollow
    organs (wall around gas), the heart, tumours (rims) and kidneys after contrast are left out."""
    solid = tuple(n for n in CONSISTENT_CLASSES if phase == "non_contrast" or n not in UNENHANCED_ONLY)
    return (*solid, "lung", "muscle", "body", "background")


def sharp_borders(
    model_ct: Volume,
    model_labels: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    plain: np.ndarray,
    phase: str | None,
) -> np.ndarray:
    """The model's CT on a finer grid, resampled within each structure (`border_fill_classes` for
    ``phase``) and softened by the scanner point-spread: what `generate_ct` and the edit put in place
    of the plain resampling ``plain`` (the model CT resampled linearly onto ``labels``' grid)."""
    out = resample_ct_within_classes(
        model_ct, model_labels, labels, affine, plain=plain, fill=[ID[n] for n in border_fill_classes(phase)]
    )
    return point_spread(out, np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))


def finish_native(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    model_spacing: Sequence[float],
    *,
    seed: int,
    phase: str | None,
    texture: bool = True,
    levels: bool = True,
    slice_levels: bool | None = None,
    muscle: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Apply the level corrections and the native-resolution texture.

    Args:
        hu: (X, Y, Z) float HU on the labels' grid (any axis order).
        labels: (X, Y, Z) GuideGen ids on the same grid; never changed.
        affine: that grid's affine.
        model_spacing: the model grid's voxel size (mm).
        seed: the generation seed (the texture draws from its own stream of it).
        phase: the requested contrast phase, or ``None``.
        texture: add the texture; levels: correct the levels (tumour, aorta and, unless
            ``slice_levels`` says otherwise, the slice-to-slice levels).
        slice_levels: even the slice-to-slice levels; ``None``: as ``levels``.
        muscle: muscle the model drew as body (`calibrate_levels`), or ``None``.

    Returns:
        (float32 HU, JSON-able record ``{"slice_levels": …, "levels": …, "texture": …}``; a step
        turned off is ``None``).
    """
    record: dict = {"slice_levels": None, "levels": None, "texture": None}
    out = np.asarray(hu, dtype=np.float32)
    if levels if slice_levels is None else slice_levels:
        out, record["slice_levels"] = even_slice_levels(out, labels, affine, phase)
    if levels:
        out, record["levels"] = calibrate_levels(out, labels, affine, phase, muscle=muscle)
    if texture:
        out, record["texture"] = add_texture(out, labels, affine, model_spacing, seed, phase)
    return out, record
