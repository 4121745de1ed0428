"""`RigidJitter`: a small random rotation and shift of the patient (parameters: `JitterParams`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guidegen.data.ops.base import check_inputs, finite_floats, rotation_matrix, step_meta
from guidegen.data.ops.warp import grid_points, warp_ct, warp_labels
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import UNKNOWN

#: Rigid jitter angles beyond this are refused: a rotation near 180° would put the liver on the
#: left without any mirroring, which is not anatomy either.
MAX_JITTER_DEGREES = 30.0


@dataclass(frozen=True)
class JitterParams:
    """Parameters of `RigidJitter`: a proper rotation (no reflection can be expressed) and a shift.

    Attributes:
        rotation_deg: angles about the world x, y, z axes (RAS+), degrees, applied in that order
            (extrinsic); each at most `MAX_JITTER_DEGREES` in magnitude.
        translation_mm: shift along world x, y, z, mm.
        centre_mm: world point the rotation turns about, mm; ``None``: the centroid of the labelled
            voxels (not background, not unknown) of the map it is applied to.
    """

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        rotation = finite_floats(self.rotation_deg, "rotation_deg")
        if max(abs(a) for a in rotation) > MAX_JITTER_DEGREES:
            raise ValueError(f"rotation_deg must stay within ±{MAX_JITTER_DEGREES}° per axis, got {rotation}")
        object.__setattr__(self, "rotation_deg", rotation)
        object.__setattr__(self, "translation_mm", finite_floats(self.translation_mm, "translation_mm"))
        if self.centre_mm is not None:
            object.__setattr__(self, "centre_mm", finite_floats(self.centre_mm, "centre_mm"))


def _labelled_centroid_mm(labels: Volume) -> np.ndarray:
    """World centroid of labelled voxels (not background, not unknown), else of the grid."""
    mask = (labels.array != 0) & (labels.array != UNKNOWN)
    index = np.argwhere(mask).mean(axis=0) if mask.any() else (np.array(labels.shape) - 1) / 2.0
    return labels.world_coordinates(index)


class RigidJitter:
    """Small random rotation and translation of the patient in the field of view.

    Mirroring is impossible by construction: the parameters hold only rotation angles (bounded by
    `MAX_JITTER_DEGREES`) and a shift, and a rotation has determinant +1, so the patient's right
    stays at larger world x.

    Args:
        max_rotation_deg: largest absolute angle about each world axis, degrees.
        max_translation_mm: largest absolute shift along each world axis, mm.
    """

    params_type = JitterParams

    def __init__(self, max_rotation_deg: float = 5.0, max_translation_mm: float = 10.0):
        if not (np.isfinite(max_rotation_deg) and 0.0 <= max_rotation_deg <= MAX_JITTER_DEGREES):
            raise ValueError(f"max_rotation_deg must be between 0 and {MAX_JITTER_DEGREES}, got {max_rotation_deg}")
        if not (np.isfinite(max_translation_mm) and 0.0 <= max_translation_mm <= 200.0):
            raise ValueError(f"max_translation_mm must be between 0 and 200 mm, got {max_translation_mm}")
        self.max_rotation_deg = float(max_rotation_deg)
        self.max_translation_mm = float(max_translation_mm)

    def applicable(self, labels: Volume) -> bool:
        return True

    def make_params(self, rng: np.random.Generator, labels: Volume | None = None) -> JitterParams:
        rotation = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg, 3)
        translation = rng.uniform(-self.max_translation_mm, self.max_translation_mm, 3)
        centre = None if labels is None else tuple(round(float(c), 3) for c in _labelled_centroid_mm(labels))
        return JitterParams(
            rotation_deg=tuple(round(float(a), 4) for a in rotation),  # type: ignore[arg-type]
            translation_mm=tuple(round(float(t), 3) for t in translation),  # type: ignore[arg-type]
            centre_mm=centre,  # type: ignore[arg-type]
        )

    @staticmethod
    def source_coordinates(labels: Volume, params: JitterParams) -> np.ndarray:
        """(3, X, Y, Z) float32: the input voxel index each output voxel shows."""
        centre = np.array(params.centre_mm) if params.centre_mm is not None else _labelled_centroid_mm(labels)
        rot = rotation_matrix(params.rotation_deg)
        a3, a0 = labels.affine[:3, :3], labels.affine[:3, 3]
        inv = np.linalg.inv(a3)
        # Forward map q -> R (q - c) + c + t; the output samples its inverse at each voxel's world point.
        matrix = inv @ rot.T @ a3
        offset = inv @ (rot.T @ (a0 - centre - np.array(params.translation_mm)) + centre - a0)
        grid = grid_points(labels.shape)
        return np.tensordot(matrix.astype(np.float32), grid, axes=1) + offset.astype(np.float32)[:, None, None, None]

    def apply(self, labels: Volume, params: JitterParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Rotate and shift ``labels`` (and ``ct``) on their own grid.

        Returns:
            (labels, ct): same grid as the input.
        """
        check_inputs(labels, ct)
        coords = self.source_coordinates(labels, params)
        out = warp_labels(labels.array, labels.spacing, coords)
        meta = step_meta(labels, "RigidJitter", params, {})
        new_ct = ct.with_array(warp_ct(ct, coords)) if ct is not None else None
        return labels.with_array(out, meta=meta), new_ct
