"""`OrganScaling`: one organ grown or shrunk about its centroid (parameters: `ScalingParams`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from guidegen.data.ops.base import check_inputs, check_range, fit_scale, soft_ids, step_meta
from guidegen.data.ops.warp import grid_points
from guidegen.grids.geometry import superior_axis
from guidegen.grids.resample import signed_distance
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, UNKNOWN

#: Organs `OrganScaling` draws from by default.
SCALABLE_ORGANS: tuple[str, ...] = ("spleen", "liver", "kidney_right", "kidney_left", "pancreas", "gallbladder")


@dataclass(frozen=True)
class ScalingParams:
    """Parameters of `OrganScaling`.

    Attributes:
        organ: class name of the organ to scale (e.g. ``"spleen"``).
        volume_factor: requested volume ratio after / before (the linear factor is its cube root).
        match_volume: adjust the linear factor (by at most ±25 %) so that the achieved volume comes
            close to the requested one although growth is blocked by other organs.
        fixed_top: scale about the organ's highest point (its centroid in the axial plane, its top
            along the patient's head-feet axis) instead of its centroid: the organ grows and shrinks
            downwards and sideways, its top held, as the diaphragm holds the liver's and the spleen's.
    """

    organ: str
    volume_factor: float
    match_volume: bool = True
    fixed_top: bool = False

    def __post_init__(self) -> None:
        if self.organ not in ID or self.organ in ("background", "body"):
            raise ValueError(f"organ must be an organ class name, got {self.organ!r}")
        if not (np.isfinite(self.volume_factor) and 0.1 <= self.volume_factor <= 10.0):
            raise ValueError(f"volume_factor must be between 0.1 and 10, got {self.volume_factor}")


class OrganScaling:
    """Grow or shrink one organ about its centroid, keeping the rest of the anatomy valid.

    The organ's signed distance map is sampled at ``c + (p - c) / s`` (linear factor
    ``s = volume_factor ** (1/3)``, c the centroid). Growth takes over only `SOFT_CLASSES`
    (never other organs, vessels, bone, tumour or unknown), so the achieved volume can fall short
    of the request; with ``match_volume`` the linear factor is adjusted (at most ±25 %) to make up
    for it, and the achieved ratio is recorded either way. Voxels the organ vacates become the
    nearest soft class (body, small bowel, colon; background only where the map has no body), or,
    where there is none, the nearest other known class. The CT (optional) is stretched the same
    way inside the organ, and vacated voxels copy the CT of the voxel whose class they took.

    Args:
        organs: organs to draw from (those present in the map).
        volume_factor: (min, max) range of the volume ratio drawn.
    """

    params_type = ScalingParams

    def __init__(self, organs: Sequence[str] = SCALABLE_ORGANS, volume_factor: Sequence[float] = (0.8, 1.6)):
        bad = [o for o in organs if o not in ID or o in ("background", "body")]
        if bad or not organs:
            raise ValueError(f"organs must be organ class names, got {list(organs)!r}")
        self.organs = tuple(organs)
        self.volume_factor = check_range(volume_factor, "volume_factor", 0.1, 10.0)

    def present(self, labels: Volume) -> list[str]:
        """The configured ``organs`` that ``labels`` holds, in configured order."""
        counts = np.bincount(labels.array.ravel(), minlength=256)
        return [o for o in self.organs if counts[ID[o]] > 0]

    def applicable(self, labels: Volume) -> bool:
        return bool(self.present(labels))

    def make_params(
        self, rng: np.random.Generator, labels: Volume | None = None, organ: str | None = None
    ) -> ScalingParams:
        """Draw an organ (among those present in ``labels`` unless given) and a volume factor.

        Raises:
            ValueError: no organ given and none of ``organs`` present in ``labels``.
        """
        if organ is None:
            choices = self.present(labels) if labels is not None else list(self.organs)
            if not choices:
                raise ValueError(f"labels contain none of the organs {', '.join(self.organs)}")
            organ = choices[int(rng.integers(len(choices)))]
        return ScalingParams(organ=organ, volume_factor=round(float(rng.uniform(*self.volume_factor)), 4))

    def apply(self, labels: Volume, params: ScalingParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Scale ``params.organ``; see the class docstring.

        Raises:
            ValueError: the organ is absent from ``labels``.
        """
        check_inputs(labels, ct)
        array = labels.array
        organ_id = ID[params.organ]
        organ = array == organ_id
        n0 = int(organ.sum())
        if n0 == 0:
            raise ValueError(f"params.organ {params.organ!r} is not present in labels")
        shape = np.array(array.shape)
        spacing = labels.spacing
        voxels = np.argwhere(organ)
        centre = voxels.mean(axis=0)
        if params.fixed_top:
            axis, upwards = superior_axis(labels.affine)
            centre[axis] = voxels[:, axis].max() if upwards else voxels[:, axis].min()
        nominal = float(params.volume_factor) ** (1.0 / 3.0)
        limits = (nominal / 1.25, nominal * 1.25) if params.match_volume else (nominal, nominal)
        # The organ's signed distance in its bounding box (+2 voxels); farther is "outside".
        box = ndimage.find_objects(organ.astype(np.uint8))[0]
        lo = np.array([max(s.start - 2, 0) for s in box])
        hi = np.array([min(s.stop + 2, n) for s, n in zip(box, shape)])
        sdf = signed_distance(organ[tuple(slice(a, b) for a, b in zip(lo, hi))], spacing)
        # Quadratic splines as in `warp_labels` (linear ones shrink convex shapes); beyond the box
        # the edge value (2 voxels outside the organ, positive) continues: outside.
        coefficients = ndimage.spline_filter(sdf, order=2, output=np.float32, mode="nearest")
        # Output region: the box scaled by the largest factor tried, about the centroid.
        reach = max(limits[1], 1.0)
        rlo = np.maximum(np.floor(centre + (lo - centre) * reach) - 2, 0).astype(int)
        rhi = np.minimum(np.ceil(centre + (hi - centre) * reach) + 3, shape).astype(int)
        region = tuple(slice(a, b) for a, b in zip(rlo, rhi))
        sub = array[region]
        allowed = organ[region] | np.isin(sub, soft_ids(array))
        grid = grid_points(sub.shape) + rlo.astype(np.float32)[:, None, None, None]

        def grown(scale: float) -> tuple[np.ndarray, np.ndarray]:
            c = centre.astype(np.float32)[:, None, None, None]
            src = c + (grid - c) / scale
            points = (src - lo.astype(np.float32)[:, None, None, None]).reshape(3, -1)
            values = ndimage.map_coordinates(coefficients, points, order=2, mode="nearest", prefilter=False).reshape(
                sub.shape
            )
            return (values < 0) & allowed, src

        def measure(scale: float) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
            mask, src = grown(scale)
            return float(mask.sum()), (mask, src)

        scale, _, (mask, src) = fit_scale(
            measure,
            nominal,
            n0 * float(params.volume_factor),
            0.02,
            limits,
            power=1.0 / 3.0,
            iterations=8 if params.match_volume else 1,
        )

        out = array.copy()
        out_sub = out[region]
        vacated = organ[region] & ~mask
        out_sub[mask] = organ_id
        new_ct = ct.array.astype(np.float32, copy=True) if ct is not None else None
        if new_ct is not None:
            stretched = ndimage.map_coordinates(
                ct.array.astype(np.float32), src.reshape(3, -1), order=1, mode="nearest"
            ).reshape(sub.shape)
            ct_sub = new_ct[region]
            ct_sub[mask] = stretched[mask]
        if vacated.any():
            fill_from = np.isin(out, soft_ids(array)) & (out != organ_id)
            if not fill_from.any():  # nothing soft anywhere: the nearest other known class
                fill_from = (out != organ_id) & (out != UNKNOWN)
            if fill_from.any():
                nearest = ndimage.distance_transform_edt(
                    ~fill_from, sampling=spacing, return_distances=False, return_indices=True
                )
                index = tuple(nearest[i][region][vacated] for i in range(3))
                out_sub[vacated] = out[index]
                if new_ct is not None:
                    new_ct[region][vacated] = ct.array[index]
            else:
                out_sub[vacated] = 0
        n1 = int((out == organ_id).sum())
        result = {
            "organ": params.organ,
            "linear_scale": round(scale, 4),
            "volume_before_ml": round(n0 * labels.voxel_volume_ml, 3),
            "volume_after_ml": round(n1 * labels.voxel_volume_ml, 3),
            "achieved_volume_factor": round(n1 / n0, 4),
        }
        meta = step_meta(labels, "OrganScaling", params, result)
        ct_out = ct.with_array(new_ct) if ct is not None else None
        return labels.with_array(out, meta=meta), ct_out
