"""Realism of sampled label maps against real ones, on the shape features of `mask_shape`.

`compare_shapes` takes the `MapShape` of real label maps (never trained on) and of sampled maps,
measured at one voxel spacing, and reports:

* **per statistic** (organ × feature, `FeatureRow`): the real maps' range (min–max), the sampled
  maps' median and range, the share of sampled maps inside the real range, whether the sampled
  median is inside it, and a standardised difference of means, Cohen's d with the pooled standard
  deviation ``d = (mean_sampled − mean_real) / sqrt((sd_sampled² + sd_real²) / 2)`` (|d| < 0.5:
  small, > 0.8: large; ``None`` when both sets are constant). An organ missing from a sampled map
  counts there as volume 0 (out of range) and leaves its other statistics unmeasured.
* **a distribution distance** over whole feature vectors: the energy distance (Székely & Rizzo
  2013, "Energy statistics", J. Stat. Plan. Inference 143:1249)
  ``E = 2·mean‖X − Y‖ − mean‖X − X'‖ − mean‖Y − Y'‖`` between the real (X) and sampled (Y) maps'
  vectors of every statistic measured in all maps, each standardised by the pooled mean and
  standard deviation of all maps (so that mL and mm weigh alike). E ≥ 0, and 0 only for equal
  distributions. Its permutation p-value (the share of random relabellings of the pooled maps
  whose E is at least the observed one) says whether the difference stands out of the noise of
  such small sets; with three real maps the smallest possible p-value is 1 / C(n, 3).
* **the colon**: the share of maps whose colon is in one piece (largest component ≥ 95 % of it)
  and whose tube runs in order from caecum to rectum (`mask_shape.colon_path`).

`mask_realism_report` runs it all on label maps (`guidegen evaluate masks`): the real maps are
resampled (`on_spacing`) to the sampled maps' voxel spacing over their own extent, their organs cut
by the field of view are left out (`mask_shape.CUT_SENSITIVE`), and with a prompt
the sampled maps' unstated organs are scored as well (`guidegen.evaluation.mask_unstated`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from guidegen.evaluation.mask_shape import CUT_SENSITIVE, SHAPE_FEATURES, SHAPE_ORGANS, MapShape, map_shapes
from guidegen.evaluation.masks import check_masks
from guidegen.grids.resample import grid_affine, resample_labels
from guidegen.io.volume import Volume

#: Random relabellings for the energy distance's p-value.
PERMUTATIONS = 999


@dataclass(frozen=True)
class FeatureRow:
    """One statistic (organ × feature) over the real and the sampled maps (values where measured)."""

    organ: str
    feature: str
    real: tuple[float, ...]
    sampled: tuple[float, ...]
    sampled_maps: int  # maps in the sampled set, measured or not

    @property
    def real_range(self) -> tuple[float, float] | None:
        return (min(self.real), max(self.real)) if self.real else None

    @property
    def in_range(self) -> int:
        """Sampled maps whose value lies inside the real range (unmeasured ones do not)."""
        if not self.real:
            return 0
        low, high = min(self.real), max(self.real)
        return sum(low <= v <= high for v in self.sampled)

    @property
    def sampled_median(self) -> float | None:
        return float(np.median(self.sampled)) if self.sampled else None

    @property
    def median_in_range(self) -> bool | None:
        median, bounds = self.sampled_median, self.real_range
        if median is None or bounds is None:
            return None
        return bounds[0] <= median <= bounds[1]

    @property
    def cohen_d(self) -> float | None:
        if len(self.real) < 2 or len(self.sampled) < 2:
            return None
        pooled = math.sqrt((np.var(self.real, ddof=1) + np.var(self.sampled, ddof=1)) / 2.0)
        if pooled == 0.0:
            return None
        return float((np.mean(self.sampled) - np.mean(self.real)) / pooled)

    def to_dict(self) -> dict[str, Any]:
        bounds, median, d = self.real_range, self.sampled_median, self.cohen_d
        return {
            "organ": self.organ,
            "feature": self.feature,
            "real": [round(v, 4) for v in self.real],
            "real_range": None if bounds is None else [round(b, 4) for b in bounds],
            "sampled_median": None if median is None else round(median, 4),
            "sampled_range": [round(min(self.sampled), 4), round(max(self.sampled), 4)] if self.sampled else None,
            "sampled_measured": len(self.sampled),
            "sampled_maps": self.sampled_maps,
            "in_range": self.in_range,
            "median_in_range": self.median_in_range,
            "cohen_d": None if d is None else round(d, 3),
        }


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two samples of vectors, ``x`` (n, F) and ``y`` (m, F) (see the module)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f"x and y must be (n, F) and (m, F) with n, m ≥ 1, got {x.shape} and {y.shape}")
    return float(2.0 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


def energy_test(
    x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0
) -> tuple[float, float | None]:
    """The energy distance and its permutation p-value (``None`` with ``permutations=0``)."""
    observed = energy_distance(x, y)
    if permutations <= 0:
        return observed, None
    pooled = np.concatenate([x, y])
    rng = np.random.default_rng(seed)
    at_least = 0
    for _ in range(permutations):
        order = rng.permutation(len(pooled))
        at_least += energy_distance(pooled[order[: len(x)]], pooled[order[len(x) :]]) >= observed - 1e-12
    return observed, (at_least + 1) / (permutations + 1)


@dataclass(frozen=True)
class RealismComparison:
    """What `compare_shapes` found (see the module docstring)."""

    rows: list[FeatureRow]
    n_real: int
    n_sampled: int
    energy: float | None
    energy_p: float | None
    energy_statistics: list[str]
    colon_real: dict[str, float | None]
    colon_sampled: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_real": self.n_real,
            "n_sampled": self.n_sampled,
            "statistics_median_in_range": sum(bool(r.median_in_range) for r in self.rows),
            "statistics": len(self.rows),
            "energy_distance": None if self.energy is None else round(self.energy, 4),
            "energy_p_value": None if self.energy_p is None else round(self.energy_p, 4),
            "energy_statistics": list(self.energy_statistics),
            "colon_real": dict(self.colon_real),
            "colon_sampled": dict(self.colon_sampled),
            "rows": [r.to_dict() for r in self.rows],
        }

    def table_lines(self) -> list[str]:
        """The sampled-vs-real table, one statistic per line, then the summary."""
        lines = [
            f"{'organ':13s} {'statistic':18s} {'real min – max':>21s}  {'sampled median [min – max]':>34s}"
            f"  {'in range':>8s}  {'median':>6s}  {'d':>6s}"
        ]
        for row in self.rows:
            bounds, median, d = row.real_range, row.sampled_median, row.cohen_d
            real = "–" if bounds is None else f"{_num(bounds[0])} – {_num(bounds[1])}"
            sampled = "–" if median is None else f"{_num(median)} [{_num(min(row.sampled))} – {_num(max(row.sampled))}]"
            flag = {None: "n/a", True: "in", False: "OUT"}[row.median_in_range]
            lines.append(
                f"{row.organ:13s} {row.feature:18s} {real:>21s}  {sampled:>34s}  "
                f"{f'{row.in_range}/{row.sampled_maps}':>8s}  {flag:>6s}  {'–' if d is None else f'{d:+.2f}':>6s}"
            )
        inside = sum(bool(r.median_in_range) for r in self.rows)
        lines.append(f"statistics whose sampled median lies in the real range: {inside}/{len(self.rows)}")
        if self.energy is None:
            lines.append("energy distance: n/a (no statistic measured in every map)")
        else:
            p = "" if self.energy_p is None else f", permutation p = {self.energy_p:.3f}"
            lines.append(
                f"energy distance (standardised vectors of {len(self.energy_statistics)} statistics): "
                f"{self.energy:.3f}{p}"
            )
        for name, rates in (("real", self.colon_real), ("sampled", self.colon_sampled)):
            lines.append(
                f"colon ({name}, {rates['maps']:.0f} maps): in one piece {_rate(rates['one_piece'])}, "
                f"ordered caecum→rectum path {_rate(rates['path_ordered'])}, both {_rate(rates['continuous'])}"
            )
        return lines


def compare_shapes(
    real: Sequence[MapShape],
    sampled: Sequence[MapShape],
    organs: Sequence[str] = SHAPE_ORGANS,
    features: Sequence[str] = SHAPE_FEATURES,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> RealismComparison:
    """Compare the shape features of sampled maps with those of real maps (see the module docstring).

    Args:
        real: `mask_shape.map_shapes` of the real (held-out) maps.
        sampled: the same of the sampled maps, at the same spacing.
        organs, features: the statistics compared.
        permutations: relabellings for the energy distance's p-value (0: none).
        seed: seed of the relabellings.

    Raises:
        ValueError: an empty set, or sets measured at different spacings.
    """
    if not real or not sampled:
        raise ValueError("compare_shapes needs at least one real and one sampled map")
    spacings = {tuple(round(s, 3) for s in m.spacing) for m in (*real, *sampled)}
    if len(spacings) > 1:
        raise ValueError(f"maps measured at different spacings {sorted(spacings)}: resample them to one first")
    rows = []
    for organ in organs:
        for feature in features:
            rows.append(
                FeatureRow(
                    organ,
                    feature,
                    real=_values(real, organ, feature),
                    sampled=_values(sampled, organ, feature),
                    sampled_maps=len(sampled),
                )
            )
    common = [r for r in rows if len(r.real) == len(real) and len(r.sampled) == len(sampled)]
    energy = p_value = None
    used: list[str] = []
    if common:
        matrix = np.array([[*r.real, *r.sampled] for r in common], dtype=np.float64).T  # maps × statistics
        spread = matrix.std(axis=0)
        keep = spread > 0
        used = [f"{r.organ}.{r.feature}" for r, k in zip(common, keep) if k]
        if keep.any():
            z = (matrix[:, keep] - matrix[:, keep].mean(axis=0)) / spread[keep]
            energy, p_value = energy_test(z[: len(real)], z[len(real) :], permutations, seed)
    return RealismComparison(
        rows=rows,
        n_real=len(real),
        n_sampled=len(sampled),
        energy=energy,
        energy_p=p_value,
        energy_statistics=used,
        colon_real=colon_rates(real),
        colon_sampled=colon_rates(sampled),
    )


def on_spacing(labels: Volume, spacing: Sequence[float]) -> Volume:
    """A label map resampled (shape-based, `resample_labels`) to ``spacing`` mm over its own extent
    (RAS axes); ``meta`` is kept."""
    if np.allclose(labels.spacing, spacing, atol=1e-3) and np.allclose(
        np.abs(labels.affine[:3, :3]), np.diag(labels.spacing), atol=1e-3
    ):
        return labels
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (np.array(labels.shape) - 1)
    world = labels.world_coordinates(corners)
    low, high = world.min(axis=0), world.max(axis=0)
    shape = tuple(int(np.floor((h - lo) / s + 1e-6)) + 1 for lo, h, s in zip(low, high, spacing))
    return resample_labels(labels, grid_affine(tuple(float(s) for s in spacing), low), shape)  # type: ignore[arg-type]


def mask_realism_report(
    sampled: Sequence[Volume],
    real: Sequence[Volume],
    prompt: str | None = None,
    permutations: int = PERMUTATIONS,
) -> tuple[list[str], dict[str, Any]]:
    """Shape realism of sampled label maps against real ones, plus their unstated organs.

    Args:
        sampled: sampled label maps (GuideGen ids), all at one spacing.
        real: real label maps (GuideGen ids, ``meta["annotated"]`` honoured), any spacing: each is
            resampled to the sampled maps' spacing; organs its field of view cuts are left out
            (`mask_shape.CUT_SENSITIVE`).
        prompt: the prompt the maps were sampled from (scores the organs it leaves unchanged).
        permutations: relabellings for the energy distance's p-value.

    Returns:
        (text lines, JSON-ready results).
    """
    if not sampled or not real:
        raise ValueError("need at least one sampled and one real label map")
    spacing = sampled[0].spacing
    comparison = compare_shapes(
        [map_shapes(on_spacing(v, spacing), skip_cut=CUT_SENSITIVE) for v in real],
        [map_shapes(v) for v in sampled],
        permutations=permutations,
    )
    lines = [f"{len(sampled)} sampled vs {len(real)} real label map(s) at {spacing} mm", *comparison.table_lines()]
    results: dict[str, Any] = {"comparison": comparison.to_dict()}
    if prompt is not None:
        report = check_masks(list(sampled), [prompt] * len(sampled))
        lines += [line for line in report.summary_lines() if "unstated" in line]
        results["unstated"] = report.unstated
    return lines, results


def colon_rates(maps: Sequence[MapShape]) -> dict[str, float | None]:
    """Shares of maps whose colon is in one piece / ordered / both (maps without a colon fail)."""
    paths = [m.colon for m in maps]
    n = len(paths)

    def share(test) -> float | None:
        return round(sum(p is not None and test(p) for p in paths) / n, 4) if n else None

    return {
        "maps": float(n),
        "one_piece": share(lambda p: p.one_piece),
        "path_ordered": share(lambda p: p.path_ordered),
        "continuous": share(lambda p: p.continuous),
    }


def _values(maps: Sequence[MapShape], organ: str, feature: str) -> tuple[float, ...]:
    values = [m.organs.get(organ, {}).get(feature) for m in maps]
    return tuple(float(v) for v in values if v is not None and math.isfinite(v))


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"
