"""`ElasticDeformation`: a smooth random displacement field (parameters: `ElasticParams`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline

from guidegen.data.ops.base import check_inputs, check_range, step_meta
from guidegen.data.ops.warp import grid_points, warp_ct, warp_labels
from guidegen.io.volume import Volume


@dataclass(frozen=True)
class ElasticParams:
    """Parameters of `ElasticDeformation`.

    Attributes:
        seed: seed of the white noise behind the displacement field (the field itself is not stored).
        amplitude_mm: largest displacement of any voxel along any array axis, mm.
        smoothness_mm: standard deviation of the Gaussian that smooths the noise, mm; larger is
            smoother (organ volumes change by roughly amplitude / smoothness).
    """

    seed: int
    amplitude_mm: float
    smoothness_mm: float

    def __post_init__(self) -> None:
        if not 0 <= int(self.seed) < 2**63:
            raise ValueError(f"seed must be a non-negative 63-bit integer, got {self.seed}")
        if not (np.isfinite(self.amplitude_mm) and self.amplitude_mm >= 0):
            raise ValueError(f"amplitude_mm must be >= 0 mm, got {self.amplitude_mm}")
        if not (np.isfinite(self.smoothness_mm) and self.smoothness_mm > 0):
            raise ValueError(f"smoothness_mm must be > 0 mm, got {self.smoothness_mm}")


class ElasticDeformation:
    """Smooth random displacement field, applied shape-based to labels and linearly to CT.

    The field is Gaussian-smoothed white noise per array axis, drawn on a coarse grid (a third of
    the smoothness) and interpolated with cubic splines, so its look depends on millimetres, not on
    the voxel size; each component is then scaled so its largest magnitude is ``amplitude_mm``.

    Args:
        amplitude_mm: (min, max) range the amplitude is drawn from, mm.
        smoothness_mm: (min, max) range of the smoothing Gaussian's sigma, mm.
    """

    params_type = ElasticParams

    def __init__(self, amplitude_mm: Sequence[float] = (4.0, 10.0), smoothness_mm: Sequence[float] = (35.0, 60.0)):
        self.amplitude_mm = check_range(amplitude_mm, "amplitude_mm", 0.0, 100.0)
        self.smoothness_mm = check_range(smoothness_mm, "smoothness_mm", 1.0, 1000.0)

    def applicable(self, labels: Volume) -> bool:
        return True

    def make_params(self, rng: np.random.Generator, labels: Volume | None = None) -> ElasticParams:
        return ElasticParams(
            seed=int(rng.integers(0, 2**32)),  # 32 bits: exact in any JSON reader
            amplitude_mm=round(float(rng.uniform(*self.amplitude_mm)), 3),
            smoothness_mm=round(float(rng.uniform(*self.smoothness_mm)), 3),
        )

    @staticmethod
    def displacement(labels: Volume, params: ElasticParams) -> np.ndarray:
        """The field: (3, X, Y, Z) float32 displacement along each array axis, mm.

        An output voxel at index p shows what the input had at p + u(p) / spacing.
        """
        spacing = np.array(labels.spacing)
        step = params.smoothness_mm / 3.0  # coarse grid: 3 nodes per sigma resolve the Gaussian
        # Cubic-spline weights from coarse nodes to voxels, per axis: the field is a tensor product,
        # so interpolating axis by axis costs a few matrix products instead of a 3-D spline.
        weights = []
        for n, s in zip(labels.shape, spacing):
            position = np.arange(n) * s / step
            nodes = max(int(np.ceil(position[-1])) + 1, 4)
            weights.append(make_interp_spline(np.arange(nodes), np.eye(nodes), k=3)(position))
        rng = np.random.default_rng(params.seed)
        field = np.empty((3, *labels.shape), dtype=np.float32)
        for axis in range(3):
            noise = rng.standard_normal(tuple(w.shape[1] for w in weights))
            smooth = ndimage.gaussian_filter(noise, sigma=3.0, mode="reflect")
            component = np.einsum("xa,yb,zc,abc->xyz", *weights, smooth, optimize=True)
            peak = float(np.abs(component).max())
            field[axis] = component * (params.amplitude_mm / peak if peak > 0 else 0.0)
        return field

    def apply(self, labels: Volume, params: ElasticParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Deform ``labels`` (and ``ct`` on the same grid) by the field of ``params``.

        Returns:
            (labels, ct): same grid as the input; ``ct`` is ``None`` when none was given.
        """
        check_inputs(labels, ct)
        field = self.displacement(labels, params)
        spacing = np.array(labels.spacing, dtype=np.float32)
        coords = grid_points(labels.shape) + field / spacing[:, None, None, None]
        out = warp_labels(labels.array, labels.spacing, coords)
        magnitude = float(np.sqrt((field**2).sum(0)).max())
        meta = step_meta(labels, "ElasticDeformation", params, {"max_displacement_mm": round(magnitude, 2)})
        new_ct = ct.with_array(warp_ct(ct, coords)) if ct is not None else None
        return labels.with_array(out, meta=meta), new_ct
