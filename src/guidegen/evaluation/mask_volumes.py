"""Organ volumes of sampled label maps against a reference (training) set.

`volume_statistics` summarises the reference set per organ; `volume_check` flags a sample's
missing organs and absurd sizes (outside ``[mean / tolerance, mean × tolerance]``, default 3×)
unless its prompt asked for them. Part of the mask checks of `guidegen.evaluation.masks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from guidegen.evaluation.mask_arguments import check_class_names, check_label_volume
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import NAMES, ORGANS
from guidegen.text.agreement import finding_volume
from guidegen.text.attributes import Attributes
from guidegen.text.measure import measure_labels

#: Volume outliers: a volume below ``mean / VOLUME_TOLERANCE`` or above ``mean × VOLUME_TOLERANCE``
#: of the reference set (3 → outside 0.33×-3× the reference mean).
VOLUME_TOLERANCE = 3.0


class VolumeStats(NamedTuple):
    """Volume distribution of one class over a reference set, mL.

    A plain 4-tuple ``(mean, std, min, max)`` (JSON: a list); ``std`` is the sample standard
    deviation (0.0 for a single observation).
    """

    mean_ml: float
    std_ml: float
    min_ml: float
    max_ml: float


@dataclass(frozen=True)
class VolumeFinding:
    """One organ's volume in a sample against the reference distribution.

    Attributes:
        volume_ml: measured volume, mL (tumour voxels hosted by the organ included, as
            `measure_labels` counts them); ``None`` when the class is not annotated in the sample.
        reference_mean_ml: mean of the reference set, mL.
        ratio: ``volume_ml / reference_mean_ml``; ``None`` when the volume is unknown.
        z: ``(volume_ml - mean) / std``; ``None`` when unknown or the reference std is 0.
        status: ``"ok"``, ``"missing"`` (no voxels, and the prompt did not say absent),
            ``"too_small"`` (ratio < 1 / tolerance, prompt did not say small), ``"too_large"``
            (ratio > tolerance, prompt did not say enlarged) or ``"unknown"`` (not annotated).
        expected: the organ state the prompt stated (``"enlarged"`` …) or ``None``.
    """

    volume_ml: float | None
    reference_mean_ml: float
    ratio: float | None
    z: float | None
    status: str
    expected: str | None = None

    @property
    def outlier(self) -> bool:
        """Whether the volume is flagged (missing, too small or too large)."""
        return self.status in ("missing", "too_small", "too_large")

    def to_dict(self) -> dict[str, Any]:
        return {
            "volume_ml": self.volume_ml,
            "reference_mean_ml": self.reference_mean_ml,
            "ratio": self.ratio,
            "z": self.z,
            "status": self.status,
            "expected": self.expected,
        }


def organ_volumes(labels: Volume) -> dict[str, float | None]:
    """Volume of every organ class in a label map, mL.

    Volumes are `measure_labels`'s: organ voxels plus the tumour voxels it hosts (a tumour replaces
    organ voxels in the map, but belongs to the organ's size). Annotated classes come from
    ``labels.meta["annotated"]`` (default: every class).

    Args:
        labels: label map in GuideGen ids.

    Returns:
        Organ name → volume in mL (0.0 for an annotated organ without voxels); ``None`` for organs
        that were not annotated (unknown, not absent).
    """
    check_label_volume(labels, "labels")
    organs = measure_labels(labels).attributes.organs
    return {name: finding_volume(organs.get(name)) for name in ORGANS}


def volume_statistics(labels_list: Iterable[Volume], classes: Sequence[str] = ORGANS) -> dict[str, VolumeStats]:
    """Per-class volume distribution over a reference (training) set.

    Only maps in which the class is annotated and present count: an organ outside one scan's field
    of view (or removed) says nothing about normal size. Partially imaged organs do count (their
    volume is a lower bound), because samples are drawn on the same grid and are cut the same way.

    Args:
        labels_list: reference label maps (`Volume`, GuideGen ids).
        classes: organ names to summarise (a subset of `ORGANS`).

    Returns:
        Class name → `VolumeStats` ``(mean, std, min, max)`` in mL; classes never observed are left
        out.

    Raises:
        ValueError: ``labels_list`` empty or not of volumes, or ``classes`` naming non-organs.
    """
    classes = check_class_names(classes, ORGANS, "classes")
    observed: dict[str, list[float]] = {name: [] for name in classes}
    count = 0
    for index, labels in enumerate(labels_list):
        check_label_volume(labels, f"labels_list[{index}]")
        count += 1
        volumes = organ_volumes(labels)
        for name in classes:
            volume = volumes[name]
            if volume is not None and volume > 0:
                observed[name].append(volume)
    if count == 0:
        raise ValueError("labels_list must hold at least one label map")
    stats: dict[str, VolumeStats] = {}
    for name, values in observed.items():
        if not values:
            continue
        data = np.asarray(values, dtype=np.float64)
        std = float(data.std(ddof=1)) if len(data) > 1 else 0.0
        stats[name] = VolumeStats(float(data.mean()), std, float(data.min()), float(data.max()))
    return stats


def volume_check(
    sample: Volume,
    reference_stats: Mapping[str, Sequence[float]],
    tolerance: float = VOLUME_TOLERANCE,
    prompt_attributes: Attributes | None = None,
) -> dict[str, VolumeFinding]:
    """Each organ's volume in a sample against the reference distribution.

    Definition: with ``ratio = volume / reference mean``, an organ is flagged ``"missing"`` when it
    has no voxels, ``"too_small"`` when ``ratio < 1 / tolerance`` and ``"too_large"`` when
    ``ratio > tolerance``; the z-score is reported for information (reference sets are small and
    organ volumes skewed, so the ratio decides). A state the prompt asked for is not an outlier:
    "enlarged" lifts the upper bound, "small" the lower one, "absent" allows a missing organ.

    Args:
        sample: sampled label map (GuideGen ids).
        reference_stats: class name → ``(mean, std, min, max)`` mL, as `volume_statistics` returns
            (lists from JSON are accepted). Classes without reference statistics are not checked.
        tolerance: ratio bound (> 1); 3.0 flags volumes outside 0.33×-3× the reference mean.
        prompt_attributes: the sample's prompt parsed with `guidegen.text.parse.parse_prompt`, or
            ``None``.

    Returns:
        Organ name → `VolumeFinding` for every organ that has reference statistics.

    Raises:
        ValueError: bad ``sample``, ``reference_stats`` or ``tolerance``.
    """
    check_label_volume(sample, "sample")
    stats = check_reference_stats(reference_stats)
    tolerance = check_volume_tolerance(tolerance)
    return volume_findings(organ_volumes(sample), stats, tolerance, prompt_attributes)


def volume_findings(
    volumes: Mapping[str, float | None],
    stats: Mapping[str, VolumeStats],
    tolerance: float,
    prompt_attributes: Attributes | None,
) -> dict[str, VolumeFinding]:
    """`volume_check` on volumes already measured (organ → mL, as `organ_volumes` gives them) and
    arguments already checked: `guidegen.evaluation.masks.check_masks` measures each sample once."""
    stated = prompt_attributes.organs if prompt_attributes is not None else {}
    findings: dict[str, VolumeFinding] = {}
    for name, ref in stats.items():
        if name not in volumes:
            continue  # not an organ (reference statistics from elsewhere): nothing to compare
        expected = stated[name].state if name in stated else None
        volume = volumes[name]
        if volume is None:
            findings[name] = VolumeFinding(None, ref.mean_ml, None, None, "unknown", expected)
            continue
        ratio = volume / ref.mean_ml
        z = (volume - ref.mean_ml) / ref.std_ml if ref.std_ml > 0 else None
        if volume <= 0:
            status = "ok" if expected == "absent" else "missing"
        elif ratio < 1.0 / tolerance and expected not in ("small", "absent"):
            status = "too_small"
        elif ratio > tolerance and expected != "enlarged":
            status = "too_large"
        else:
            status = "ok"
        findings[name] = VolumeFinding(
            volume_ml=round(volume, 1),
            reference_mean_ml=round(ref.mean_ml, 1),
            ratio=round(ratio, 3),
            z=None if z is None else round(z, 2),
            status=status,
            expected=expected,
        )
    return findings


def check_volume_tolerance(tolerance: float) -> float:
    """A volume ratio bound as a float > 1 (see `volume_check`); ValueError otherwise."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (1.0 < tolerance < math.inf):
        raise ValueError(f"tolerance must be a ratio > 1, got {tolerance!r}")
    return float(tolerance)


def check_reference_stats(reference_stats: Mapping[str, Sequence[float]] | None) -> dict[str, VolumeStats]:
    """Reference volumes (`volume_statistics`, or lists read from JSON) as `VolumeStats`; ValueError
    naming the entry when a class is unknown or an entry is not ``(mean > 0, std ≥ 0, min, max)``."""
    if not isinstance(reference_stats, Mapping):
        raise ValueError(
            f"reference_stats must map class names to (mean, std, min, max) mL, got {type(reference_stats).__name__}"
        )
    stats: dict[str, VolumeStats] = {}
    for name, values in reference_stats.items():
        if name not in NAMES:
            raise ValueError(f"reference_stats: unknown class {name!r}")
        try:
            entry = VolumeStats(*(float(v) for v in values))
        except (TypeError, ValueError):
            raise ValueError(f"reference_stats[{name!r}] must be (mean, std, min, max) in mL, got {values!r}") from None
        if not all(math.isfinite(v) for v in entry) or entry.mean_ml <= 0 or entry.std_ml < 0:
            raise ValueError(f"reference_stats[{name!r}] needs a positive mean and a non-negative std, got {values!r}")
        stats[name] = entry
    return stats
