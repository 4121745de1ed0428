"""`TumourInsertion`: real tumour shapes, resized to a target diameter, inserted into a host organ
(parameters: `TumourParams`, one `TumourSpec` per tumour)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from guidegen.data.ops.base import (
    CONNECTIVITY_26,
    FAR_OUTSIDE_MM,
    check_inputs,
    check_range,
    finite_floats,
    fit_scale,
    rotation_matrix,
    soft_ids,
    step_meta,
    surface_points,
)
from guidegen.data.ops.tumour_bank import TumourShape, default_tumour_shapes
from guidegen.grids.geometry import longest_diameter_mm
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, TUMOUR_HOSTS
from guidegen.terms import COLON_SEGMENTS  # the names a ``site_of`` callable returns

#: Default target longest diameters per host organ, mm: small hosts get smaller tumours, so that a
#: drawn tumour usually fits inside its organ.
DIAMETER_RANGES_MM: dict[str, tuple[float, float]] = {
    "liver": (10.0, 70.0),
    "kidney_right": (10.0, 50.0),
    "kidney_left": (10.0, 50.0),
    "pancreas": (10.0, 40.0),
    "colon": (15.0, 60.0),
    "spleen": (10.0, 45.0),
    "stomach": (15.0, 60.0),
}
#: Default tumour counts per host (inclusive range); hosts not listed get exactly one.
COUNT_RANGES: dict[str, tuple[int, int]] = {"liver": (1, 3)}

SiteOf = Callable[[Volume, np.ndarray], "list[str]"]


@dataclass(frozen=True)
class TumourSpec:
    """One tumour to insert.

    Attributes:
        shape_index: index into the transform's shape bank.
        shape_source: the shape's ``source`` (checked on apply, so a record cannot silently be
            replayed with another bank).
        centre_mm: world position (RAS+ mm) of a host voxel centre where the shape's centroid goes.
        diameter_mm: target longest diameter, mm.
        rotation_deg: orientation of the shape, extrinsic x-y-z angles in degrees.
    """

    shape_index: int
    shape_source: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    rotation_deg: tuple[float, float, float]

    def __post_init__(self) -> None:
        if int(self.shape_index) < 0:
            raise ValueError(f"shape_index must be >= 0, got {self.shape_index}")
        object.__setattr__(self, "centre_mm", finite_floats(self.centre_mm, "centre_mm"))
        object.__setattr__(self, "rotation_deg", finite_floats(self.rotation_deg, "rotation_deg"))
        if not (np.isfinite(self.diameter_mm) and 1.0 <= self.diameter_mm <= 300.0):
            raise ValueError(f"diameter_mm must be between 1 and 300 mm, got {self.diameter_mm}")


@dataclass(frozen=True)
class TumourParams:
    """Parameters of `TumourInsertion`.

    Attributes:
        host: host organ name (one of `TUMOUR_HOSTS`).
        segment: colon segment the sites were drawn from, or ``None``.
        tumours: the tumours, inserted in order.
    """

    host: str
    segment: str | None
    tumours: tuple[TumourSpec, ...]

    def __post_init__(self) -> None:
        if self.host not in TUMOUR_HOSTS:
            raise ValueError(f"host must be one of {', '.join(TUMOUR_HOSTS)}, got {self.host!r}")
        tumours = tuple(t if isinstance(t, TumourSpec) else TumourSpec(**t) for t in self.tumours)
        if not tumours:
            raise ValueError("tumours must hold at least one TumourSpec")
        object.__setattr__(self, "tumours", tumours)


class TumourInsertion:
    """Insert real tumour shapes, resized to a target longest diameter, into a host organ.

    A shape's signed distance map is rotated, scaled and centred at a host voxel and sampled
    linearly on the label grid (shape-based resampling); the scale is refined (proportional steps,
    then bisection; `fit_scale`) until the longest diameter on the grid, in world mm, is as close
    to the target as the voxels allow. The tumour overwrites the host, soft tissue
    (`SOFT_CLASSES`) and earlier tumour, never other organs, vessels, bone or unknown; of what may
    be written, the connected part holding the centre is kept, so each insertion is one lesion.

    Sites are drawn among host voxels (optionally of one colon segment), preferring, in turn,
    voxels deep enough that the whole tumour fits inside the host, voxels at least half as deep
    and far enough from every protected class (the volume's edge counts as protected), and else
    the deepest quarter; later tumours of one case avoid earlier ones where possible. ``make_params``
    rasterises each draw and redraws shape, orientation and site (up to 8 times) until the tumour
    comes within 10 % of the target diameter, so the parameters it returns are known to work.
    The CT, if given, is returned unchanged (the mask sampler needs labels only).

    Args:
        shapes: the shape bank; ``None``: `default_tumour_shapes` (loaded on first use).
        hosts: host organs to draw from (those present in the map).
        diameter_mm: (min, max) target diameter range for every host, mm; ``None``:
            `DIAMETER_RANGES_MM` per host.
        counts: host → (min, max) number of tumours; default `COUNT_RANGES` (others: one).
        site_of: ``site_of(labels, points)`` names the colon segment of each world point
            (``points`` (N, 3) RAS+ mm) — needed to request or draw a segment.
        segments: segments to draw from for colon tumours when ``site_of`` is given (those present).
        data_dir: folder for the default bank.
    """

    params_type = TumourParams

    def __init__(
        self,
        shapes: Sequence[TumourShape] | None = None,
        hosts: Sequence[str] = TUMOUR_HOSTS,
        diameter_mm: Sequence[float] | None = None,
        counts: dict[str, tuple[int, int]] | None = None,
        site_of: SiteOf | None = None,
        segments: Sequence[str] = COLON_SEGMENTS,
        data_dir: str | Path | None = None,
    ):
        bad = [h for h in hosts if h not in TUMOUR_HOSTS]
        if bad or not hosts:
            raise ValueError(f"hosts must be among {', '.join(TUMOUR_HOSTS)}, got {list(hosts)!r}")
        if shapes is not None and not shapes:
            raise ValueError("shapes must hold at least one TumourShape")
        self._shapes = list(shapes) if shapes is not None else None
        self.data_dir = data_dir
        self.hosts = tuple(hosts)
        self.diameter_mm = check_range(diameter_mm, "diameter_mm", 1.0, 300.0) if diameter_mm is not None else None
        self.counts = dict(COUNT_RANGES if counts is None else counts)
        for host, (a, b) in self.counts.items():
            if host not in TUMOUR_HOSTS or not 1 <= a <= b <= 20:
                raise ValueError(f"counts must map host names to 1 <= min <= max <= 20, got {host!r}: {(a, b)}")
        bad_segments = [s for s in segments if s not in COLON_SEGMENTS]
        if bad_segments:
            raise ValueError(f"segments must be among {', '.join(COLON_SEGMENTS)}, got {bad_segments}")
        self.segments = tuple(segments)
        self.site_of = site_of

    @property
    def shapes(self) -> list[TumourShape]:
        if self._shapes is None:
            self._shapes = default_tumour_shapes(self.data_dir)
            if not self._shapes:
                raise ValueError("the default tumour shape bank is empty")
        return self._shapes

    def present(self, labels: Volume) -> list[str]:
        """The configured ``hosts`` that ``labels`` holds, in configured order."""
        counts = np.bincount(labels.array.ravel(), minlength=256)
        return [h for h in self.hosts if counts[ID[h]] > 0]

    def applicable(self, labels: Volume) -> bool:
        return bool(self.present(labels))

    def make_params(
        self,
        rng: np.random.Generator,
        labels: Volume | None = None,
        host: str | None = None,
        segment: str | None = None,
        diameter_mm: float | None = None,
        count: int | None = None,
    ) -> TumourParams:
        """Draw host, sites, diameters, shapes and orientations.

        Args:
            rng: random generator.
            labels: the map the tumours go into (required: sites are host voxels).
            host: host organ; default: drawn among ``hosts`` present.
            segment: colon segment to place the tumours in (needs ``site_of``); default: for the
                colon, drawn among ``segments`` present when ``site_of`` is set, else anywhere.
            diameter_mm: target diameter for every tumour; default: drawn per tumour.
            count: number of tumours; default: drawn from ``counts``.

        Raises:
            ValueError: ``labels`` missing, host absent, segment requested without ``site_of``,
                no host voxel in the requested segment, bad ``count``.
        """
        if labels is None:
            raise ValueError("labels is required: tumour sites are drawn among host voxels")
        check_inputs(labels, None)
        if host is None:
            present = self.present(labels)
            if not present:
                raise ValueError(f"labels contain none of the hosts {', '.join(self.hosts)}")
            host = present[int(rng.integers(len(present)))]
        elif host not in TUMOUR_HOSTS:
            raise ValueError(f"host must be one of {', '.join(TUMOUR_HOSTS)}, got {host!r}")
        array = labels.array
        host_mask = array == ID[host]
        if not host_mask.any():
            raise ValueError(f"host {host!r} is not present in labels")
        candidates = np.argwhere(host_mask)
        if segment is not None or (host == "colon" and self.site_of is not None):
            if self.site_of is None:
                raise ValueError(f"segment {segment!r} requested but no site_of was given")
            names = np.asarray(self.site_of(labels, labels.world_coordinates(candidates)), dtype=object)
            if len(names) != len(candidates):
                raise ValueError(f"site_of returned {len(names)} names for {len(candidates)} points")
            if segment is None:
                options = [s for s in self.segments if np.any(names == s)]
                segment = options[int(rng.integers(len(options)))] if options else None
            if segment is not None:
                candidates = candidates[names == segment]
                if len(candidates) == 0:
                    raise ValueError(f"segment {segment!r}: no {host} voxel lies in that segment")
        if count is None:
            a, b = self.counts.get(host, (1, 1))
            count = int(rng.integers(a, b + 1))
        if not 1 <= count <= 20:
            raise ValueError(f"count must be between 1 and 20, got {count}")
        low, high = self.diameter_mm or DIAMETER_RANGES_MM[host]

        spacing = labels.spacing
        # Distances inside the host and to anything protected, mm. The padding counts the volume's
        # edge as protected: beyond it the anatomy is unknown, and a tumour cut by the edge would
        # not have the diameter asked for.
        allowed = host_mask | np.isin(array, soft_ids(array)) | (array == ID["tumour"])
        depth = ndimage.distance_transform_edt(np.pad(host_mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        clearance = ndimage.distance_transform_edt(np.pad(allowed, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        cand_depth = depth[tuple(candidates.T)]
        cand_clear = clearance[tuple(candidates.T)]
        cand_world = labels.world_coordinates(candidates)
        shapes = self.shapes
        soft = soft_ids(array)
        work = array.copy()  # the map as apply will see it, tumour after tumour
        specs: list[TumourSpec] = []
        placed: list[tuple[np.ndarray, float]] = []
        for _ in range(count):
            target = float(diameter_mm) if diameter_mm is not None else float(rng.uniform(low, high))
            # A shape with thin parts can jump past the target diameter on a coarse grid (a bridge
            # appears or vanishes as it grows), and clipping by protected neighbours can stop it
            # short: draw shape, orientation and site again (up to 8 times) until the rasterised
            # tumour comes within 10 % of the target, else keep the closest draw.
            best: tuple[float, TumourSpec, tuple[slice, ...], np.ndarray, np.ndarray, float] | None = None
            for _attempt in range(8):
                index = int(rng.integers(len(shapes)))
                # Uniform over all orientations; positional rng because scipy renamed the keyword.
                rotation = Rotation.random(None, rng).as_euler("xyz", degrees=True)
                # Room the tumour needs around its centre: its reach from the centroid, plus a voxel.
                need = shapes[index].radius_mm * target / shapes[index].diameter_mm + max(spacing)
                apart = np.ones(len(candidates), dtype=bool)
                for centre, reach in placed:
                    apart &= np.linalg.norm(cand_world - centre, axis=1) >= reach + need - max(spacing)
                pool = None
                for ok in (cand_depth >= need, (cand_depth >= need / 2) & (cand_clear >= need)):
                    if np.any(ok & apart):
                        pool = np.flatnonzero(ok & apart)
                        break
                if pool is None:
                    base = np.flatnonzero(apart) if apart.any() else np.arange(len(candidates))
                    pool = base[cand_depth[base] >= np.quantile(cand_depth[base], 0.75)]
                centre = cand_world[int(pool[int(rng.integers(len(pool)))])]
                spec = TumourSpec(
                    shape_index=index,
                    shape_source=shapes[index].source,
                    centre_mm=tuple(round(float(c), 4) for c in centre),  # type: ignore[arg-type]
                    diameter_mm=round(target, 3),
                    rotation_deg=tuple(round(float(a), 4) for a in rotation),  # type: ignore[arg-type]
                )
                box, mask, diameter, _ = self._place(work, labels.affine, spec, ID[host], soft)
                err = abs(diameter - spec.diameter_mm) / spec.diameter_mm
                if best is None or err < best[0]:
                    best = (err, spec, box, mask, centre, need)
                if err <= 0.1:
                    break
            _, spec, box, mask, centre, need = best  # type: ignore[misc]
            work[box][mask] = ID["tumour"]
            placed.append((centre, need))
            specs.append(spec)
        return TumourParams(host=host, segment=segment, tumours=tuple(specs))

    def _place(
        self, out: np.ndarray, affine: np.ndarray, spec: TumourSpec, host_id: int, soft: np.ndarray
    ) -> tuple[tuple[slice, ...], np.ndarray, float, float]:
        """Where ``spec``'s tumour goes in the label array ``out`` (not modified).

        Returns:
            (box, mask, diameter_mm, scale): the voxels (a bool mask over ``out[box]``), their
            longest diameter and the shape's scale factor.

        Raises:
            ValueError: ``spec`` names a shape this bank does not hold (index or source differ).
        """
        shapes = self.shapes
        if spec.shape_index >= len(shapes) or shapes[spec.shape_index].source != spec.shape_source:
            raise ValueError(f"params: shape {spec.shape_index} ({spec.shape_source}) is not in this shape bank")
        shape = shapes[spec.shape_index]
        rot = rotation_matrix(spec.rotation_deg)
        centre = np.array(spec.centre_mm)
        centre_idx = np.rint(np.linalg.inv(affine)[:3] @ np.append(centre, 1.0)).astype(int)
        tumour_id = ID["tumour"]

        def measure(scale: float) -> tuple[float, tuple[tuple[slice, ...], np.ndarray]]:
            box, inside = self._rasterise(shape, rot, scale, centre, affine, out.shape)
            sub = out[box]
            mask = inside & ((sub == host_id) | np.isin(sub, soft) | (sub == tumour_id))
            mask = self._keep_centre_component(mask, centre_idx - np.array([s.start for s in box]))
            diameter = longest_diameter_mm(surface_points(mask), affine) if mask.any() else 0.0
            return diameter, (box, mask)

        scale, diameter, (box, mask) = fit_scale(measure, spec.diameter_mm / shape.diameter_mm, spec.diameter_mm, 0.02)
        return box, mask, diameter, scale

    def _rasterise(
        self,
        shape: TumourShape,
        rot: np.ndarray,
        scale: float,
        centre_mm: np.ndarray,
        affine: np.ndarray,
        grid_shape: tuple[int, int, int],
    ) -> tuple[tuple[slice, ...], np.ndarray]:
        """The shape, rotated, scaled by ``scale`` and centred at ``centre_mm``, on the label grid.

        Returns:
            (box, inside): the grid box around the tumour and a bool mask over it.
        """
        a3, a0 = affine[:3, :3], affine[:3, 3]
        inv = np.linalg.inv(a3)
        reach = shape.radius_mm * scale + 2 * float(np.linalg.norm(a3, axis=0).max())
        centre_idx = inv @ (centre_mm - a0)
        half = np.abs(inv) @ np.full(3, reach)  # the ball's bounding box in voxels
        lo = np.maximum(np.floor(centre_idx - half), 0).astype(int)
        hi = np.minimum(np.ceil(centre_idx + half) + 1, grid_shape).astype(int)
        if np.any(hi <= lo):
            return tuple(slice(0, 0) for _ in range(3)), np.zeros((0, 0, 0), dtype=bool)
        # Grid voxel p -> world w -> shape frame q = R^T (w - c) / scale + centroid -> shape index q / spacing.
        to_shape = np.diag(1.0 / np.array(shape.spacing)) @ rot.T / scale
        matrix = to_shape @ a3
        offset = to_shape @ (a0 + a3 @ lo - centre_mm) + np.array(shape.centroid_mm) / np.array(shape.spacing)
        values = ndimage.affine_transform(
            shape.sdf, matrix, offset, output_shape=tuple(hi - lo), order=1, mode="constant", cval=float(FAR_OUTSIDE_MM)
        )
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), values < 0

    def apply(self, labels: Volume, params: TumourParams, ct: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Insert the tumours of ``params`` as class ``tumour``.

        Returns:
            (labels, ct): ``ct`` unchanged. ``labels.meta["annotated"]``, when present, gains
            ``"tumour"`` (the inserted tumours are known; the class must be measured).

        Raises:
            ValueError: a spec names a shape the bank does not hold (index or source differ).
        """
        check_inputs(labels, ct)
        host_id = ID[params.host]
        tumour_id = ID["tumour"]
        out = labels.array.copy()
        soft = soft_ids(labels.array)
        results = []
        for spec in params.tumours:
            box, mask, diameter, scale = self._place(out, labels.affine, spec, host_id, soft)
            sub = out[box]
            was_host = float((sub[mask] == host_id).mean()) if mask.any() else 0.0
            sub[mask] = tumour_id
            results.append(
                {
                    "diameter_mm": round(diameter, 2),
                    "target_diameter_mm": spec.diameter_mm,
                    "volume_ml": round(int(mask.sum()) * labels.voxel_volume_ml, 3),
                    "host_fraction": round(was_host, 4),
                    "scale": round(scale, 5),
                }
            )
        meta = step_meta(
            labels, "TumourInsertion", params, {"host": params.host, "segment": params.segment, "tumours": results}
        )
        if "annotated" in meta and "tumour" not in meta["annotated"]:
            meta["annotated"] = [*meta["annotated"], "tumour"]
        return labels.with_array(out, meta=meta), ct

    @staticmethod
    def _keep_centre_component(mask: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """The 26-connected component holding ``centre`` (else the largest)."""
        if not mask.any():
            return mask
        components, n = ndimage.label(mask, structure=CONNECTIVITY_26)
        if n == 1:
            return mask
        if np.all(centre >= 0) and np.all(centre < mask.shape) and components[tuple(centre)] > 0:
            keep = components[tuple(centre)]
        else:
            keep = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
        return components == keep
