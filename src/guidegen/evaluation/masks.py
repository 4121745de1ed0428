"""Quality checks for sampled GuideGen label maps (what ``guidegen sample-masks --check`` reports).

The Volumetric Mask Sampler draws low-resolution 3-D label maps (GuideGen ids, see
`guidegen.labels.vocabulary`) from text prompts. None of these checks needs a ground truth: each
compares a sample with anatomy, with the reference (training) set, or with its own prompt.

* **Volumes** (`volume_statistics`, `volume_check`): each organ's volume (mL) against the
  reference distribution; missing organs and absurd sizes (outside ``[mean / tolerance,
  mean × tolerance]``, default 3×) are flagged unless the prompt asked for them.
* **Components** (`component_check`): an organ should be one solid piece; it passes when its largest
  26-connected component holds at least 95 % of its voxels (no fragments, no floating islands).
* **Relations** (`relation_check`): coarse anatomical relations between organ centroids / extents in
  world RAS+ millimetres (liver right of spleen, bladder below the kidneys …), see `RELATIONS`.
* **Adherence** (`adherence_check`): the attributes the prompt states (tumour presence, host organ,
  colon segment / liver lobe, longest diameter, count, organ size state …) hold in the sample, as
  `guidegen.text.measure.measure_labels` measures it.
* **Diversity** (`diversity`): mean pairwise Dice over organ classes between samples of one prompt;
  ``1 - Dice`` is the diversity (identical samples: Dice 1.0, diversity 0).

`check_masks` runs them all on a batch of samples and returns a JSON-ready `MaskCheckReport`.

World coordinates are RAS+ millimetres as `guidegen.io.volume` defines them: +x towards the
patient's right, +y anterior, +z superior; every position test goes through the volume's affine, so
any orientation and voxel size is handled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, ORGANS, UNKNOWN
from guidegen.text.agreement import DIAMETER_TOLERANCE, ORGAN_VOLUME_TOLERANCE, finding_volume, organ_agreement, tumour_agreement
from guidegen.text.attributes import Attributes, OrganFinding
from guidegen.text.measure import measure_labels
from guidegen.text.parse import parse_prompt

#: An organ passes the component check when its largest component holds at least this share of
#: its voxels.
MIN_MAIN_FRACTION = 0.95
#: Volume outliers: a volume below ``mean / VOLUME_TOLERANCE`` or above ``mean × VOLUME_TOLERANCE``
#: of the reference set (3 → outside 0.33×-3× the reference mean).
VOLUME_TOLERANCE = 3.0

#: 26-connectivity (faces, edges and corners touch).
_FULL = np.ones((3, 3, 3), dtype=bool)
_TUMOUR = ID["tumour"]
_KIDNEYS = ("kidney_right", "kidney_left")

#: The anatomical relations `relation_check` tests, name → definition (RAS+: +x = patient's right,
#: +z = superior). Centroids are the mean world position of a class's voxel centres.
RELATIONS: dict[str, str] = {
    "liver_right_of_spleen": "liver centroid x > spleen centroid x",
    "kidney_right_right_of_kidney_left": "right kidney centroid x > left kidney centroid x",
    "kidneys_either_side_of_midline": (
        "the midline x lies between the two kidneys' centroid x; midline = aorta centroid x when the "
        "aorta is present, else the middle of the body's x extent (1st-99th percentile of all labelled "
        "voxels) when the body class is present"
    ),
    "stomach_left_of_liver": "stomach centroid x < liver centroid x",
    "liver_above_bladder": "liver centroid z > urinary bladder centroid z",
    "bladder_below_kidneys": (
        "urinary bladder centroid z < lowest kidney voxel z (the lower pole of the lower kidney)"
    ),
    "liver_above_kidney_right": "liver centroid z > right kidney centroid z",
    "spleen_above_kidney_left": "spleen centroid z > left kidney centroid z",
    "pancreas_anterior_of_aorta": "pancreas centroid y > aorta centroid y",
}


# --------------------------------------------------------------------------------------------------
# Volumes


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
    _check_volume(labels, "labels")
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
    classes = _check_classes(classes, ORGANS, "classes")
    observed: dict[str, list[float]] = {name: [] for name in classes}
    count = 0
    for index, labels in enumerate(labels_list):
        _check_volume(labels, f"labels_list[{index}]")
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
        prompt_attributes: the sample's prompt parsed with `parse_prompt`, or ``None``.

    Returns:
        Organ name → `VolumeFinding` for every organ that has reference statistics.

    Raises:
        ValueError: bad ``sample``, ``reference_stats`` or ``tolerance``.
    """
    _check_volume(sample, "sample")
    stats = _check_reference(reference_stats)
    tolerance = _check_tolerance(tolerance)
    return _volume_findings(organ_volumes(sample), stats, tolerance, prompt_attributes)


def _volume_findings(
    volumes: Mapping[str, float | None],
    stats: Mapping[str, VolumeStats],
    tolerance: float,
    prompt_attributes: Attributes | None,
) -> dict[str, VolumeFinding]:
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


# --------------------------------------------------------------------------------------------------
# Connected components


@dataclass(frozen=True)
class ComponentResult:
    """Connected components of one organ.

    Attributes:
        voxels: the organ's voxel count.
        components: number of 26-connected components (0 when the organ has no voxels).
        main_fraction: share of the voxels in the largest component (0-1); ``None`` without voxels.
        outside_fraction: ``1 - main_fraction`` (fragments and floating islands); ``None`` without
            voxels.
        passed: ``main_fraction >= min_fraction``; ``None`` when the organ has no voxels (absent or
            not annotated: nothing to judge).
    """

    voxels: int
    components: int
    main_fraction: float | None
    outside_fraction: float | None
    passed: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "voxels": self.voxels,
            "components": self.components,
            "main_fraction": self.main_fraction,
            "outside_fraction": self.outside_fraction,
            "passed": self.passed,
        }


def component_check(
    labels: Volume, classes: Sequence[str] = ORGANS, min_fraction: float = MIN_MAIN_FRACTION
) -> dict[str, ComponentResult]:
    """Connected components (26-connectivity) of each organ.

    Definition: an organ passes when its largest component holds at least ``min_fraction`` (95 %) of
    its voxels, i.e. it is one solid piece up to specks. Each kidney is its own class, so each must
    be one main component. Tumour voxels count as part of the organ they touch when components are
    formed (a tumour replaces organ voxels and may cut through its host), but are not counted in the
    organ's voxels. The tumour class itself is not checked (several lesions are legitimate).

    Args:
        labels: label map (GuideGen ids).
        classes: vocabulary class names to check (default: every organ).
        min_fraction: pass threshold on the main component's share, in (0, 1].

    Returns:
        Class name → `ComponentResult`.

    Raises:
        ValueError: bad ``labels``, ``classes`` or ``min_fraction``.
    """
    array = _check_volume(labels, "labels")
    classes = _check_classes(classes, NAMES[1:], "classes")
    if not (isinstance(min_fraction, (int, float)) and 0.0 < min_fraction <= 1.0):
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    boxes = ndimage.find_objects(array, max_label=len(NAMES))
    tumour_box = boxes[_TUMOUR - 1]
    results: dict[str, ComponentResult] = {}
    for name in classes:
        class_id = ID[name]
        box = boxes[class_id - 1]
        if box is None:
            results[name] = ComponentResult(0, 0, None, None, None)
            continue
        if tumour_box is not None and name != "tumour":
            # Tumours may bridge pieces of the organ from outside its own bounding box.
            box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box, tumour_box))
        crop = array[box]
        organ = crop == class_id
        mask = organ | (crop == _TUMOUR) if name != "tumour" else organ
        components, _ = ndimage.label(mask, structure=_FULL)
        sizes = np.bincount(components[organ])[1:]
        sizes = sizes[sizes > 0]  # components made of tumour voxels only are not the organ's
        total = int(sizes.sum())
        main = float(sizes.max()) / total
        results[name] = ComponentResult(
            voxels=total,
            components=int(len(sizes)),
            main_fraction=round(main, 4),
            outside_fraction=round(1.0 - main, 4),
            passed=bool(main >= min_fraction),
        )
    return results


def components_pass(results: Mapping[str, ComponentResult]) -> bool | None:
    """Whether every checked organ is one main component; ``None`` when no organ was present."""
    scored = [r.passed for r in results.values() if r.passed is not None]
    return all(scored) if scored else None


# --------------------------------------------------------------------------------------------------
# Anatomical relations


class _Geometry:
    """World positions of each class's voxel centres, computed on first use."""

    def __init__(self, labels: Volume, array: np.ndarray):
        self.labels = labels
        self.array = array
        self.boxes = ndimage.find_objects(array, max_label=len(NAMES))
        self._points: dict[str, np.ndarray | None] = {}

    def points(self, name: str) -> np.ndarray | None:
        if name not in self._points:
            box = self.boxes[ID[name] - 1]
            if box is None:
                self._points[name] = None
            else:
                index = np.argwhere(self.array[box] == ID[name]) + np.array([s.start for s in box])
                self._points[name] = self.labels.world_coordinates(index)
        return self._points[name]

    def centroid(self, name: str) -> np.ndarray | None:
        points = self.points(name)
        return None if points is None else points.mean(axis=0)

    def midline_x(self) -> float | None:
        aorta = self.centroid("aorta")
        if aorta is not None:
            return float(aorta[0])
        if self.boxes[ID["body"] - 1] is None:
            return None  # without the body outline the labelled voxels do not span the body
        # The body outline plus everything inside it; percentiles ignore arms / stray voxels.
        inside = (self.array != 0) & (self.array != UNKNOWN)
        x = self.labels.world_coordinates(np.argwhere(inside))[:, 0]
        low, high = np.percentile(x, [1, 99])
        return float(low + high) / 2.0


def relation_check(labels: Volume) -> dict[str, bool | None]:
    """Test the anatomical relations of `RELATIONS` in world RAS+ coordinates.

    Centroids and extents are taken over each class's voxel centres mapped through the affine, so
    any orientation works. Choices (documented because several definitions are possible):

    * "kidneys either side of the midline" does not care which kidney is on which side (that is
      ``kidney_right_right_of_kidney_left``); the midline is the aorta when present, else the middle
      of the body's x extent.
    * "bladder below the kidneys" compares the bladder's centroid with the *lowest* kidney voxel
      (the lower pole of the lower kidney), not with the kidneys' centroids: the bladder sits in the
      pelvis, ~10 cm below the lower poles, so the stricter rule still holds comfortably on real
      maps while a bladder drawn at kidney level fails.

    Args:
        labels: label map (GuideGen ids).

    Returns:
        Relation name → ``True`` (holds), ``False`` (violated) or ``None`` (an organ it needs has no
        voxels: absent or not annotated).

    Raises:
        ValueError: ``labels`` not a label `Volume`.
    """
    array = _check_volume(labels, "labels")
    geo = _Geometry(labels, array)
    needed = ("liver", "spleen", "stomach", "pancreas", "aorta", "urinary_bladder", *_KIDNEYS)
    c = {name: geo.centroid(name) for name in needed}

    def compare(a: str, b: str, axis: int) -> bool | None:
        if c[a] is None or c[b] is None:
            return None
        return bool(c[a][axis] > c[b][axis])

    results: dict[str, bool | None] = {
        "liver_right_of_spleen": compare("liver", "spleen", 0),
        "kidney_right_right_of_kidney_left": compare("kidney_right", "kidney_left", 0),
        "kidneys_either_side_of_midline": None,
        "stomach_left_of_liver": compare("liver", "stomach", 0),
        "liver_above_bladder": compare("liver", "urinary_bladder", 2),
        "bladder_below_kidneys": None,
        "liver_above_kidney_right": compare("liver", "kidney_right", 2),
        "spleen_above_kidney_left": compare("spleen", "kidney_left", 2),
        "pancreas_anterior_of_aorta": compare("pancreas", "aorta", 1),
    }
    right, left = c["kidney_right"], c["kidney_left"]
    if right is not None and left is not None:
        midline = geo.midline_x()
        if midline is not None:
            low, high = sorted((float(right[0]), float(left[0])))
            results["kidneys_either_side_of_midline"] = bool(low < midline < high)
    kidney_points = [p for p in (geo.points(k) for k in _KIDNEYS) if p is not None]
    if c["urinary_bladder"] is not None and kidney_points:
        lowest = min(float(p[:, 2].min()) for p in kidney_points)
        results["bladder_below_kidneys"] = bool(c["urinary_bladder"][2] < lowest)
    return results


def relation_pass_fraction(results: Mapping[str, bool | None]) -> float | None:
    """Share of the testable relations that hold; ``None`` when none could be tested."""
    scored = [r for r in results.values() if r is not None]
    return sum(scored) / len(scored) if scored else None


# --------------------------------------------------------------------------------------------------
# Prompt adherence


def adherence_check(
    prompt_attributes: Attributes,
    measured_attributes: Attributes,
    diameter_tolerance: float = DIAMETER_TOLERANCE,
    volume_tolerance: float = ORGAN_VOLUME_TOLERANCE,
    reference_stats: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, bool]:
    """Whether the attributes a prompt states hold in a sample.

    Only stated fields are scored. Fields (keys of the result):

    * ``"tumours"``: "no tumour" (``tumours=()``) → the sample has no tumour; any stated tumour →
      it has at least one.
    * per stated tumour group ``i`` (1-based), compared with the measured groups of the same host
      (``"kidney"`` without a side matches either kidney; a group without a host matches every
      measured tumour):
      ``tumour{i}.organ`` a tumour in the stated host; ``tumour{i}.segment`` one of them in the
      stated colon segment / liver lobe; ``tumour{i}.diameter_mm`` the largest of them within
      ±``diameter_tolerance`` of the stated longest diameter; ``tumour{i}.count`` their number
      equals the stated count (a singular mention states one tumour; "multiple" means at least two).
    * per stated organ: ``{organ}.state``: "enlarged" → volume above the normal range of
      `guidegen.text.measure.REFERENCE_RANGES`; "small" → below it (a partially imaged organ cannot
      be proven small); "normal" → within it; "absent" → no voxels. Organs without a normal range
      (hollow organs) use the reference set's ``(min, max)`` when ``reference_stats`` is given, and
      are not scored otherwise. ``{organ}.severity``: the measured grade (`grade_volume`) equals the
      stated one. ``{organ}.volume_ml``: within ±``volume_tolerance`` of a stated volume.
    * ``"field_of_view"``: the measured field of view equals the stated one.
    * ``"all"``: every scored field holds (``True`` when nothing was scored).

    Sex, age and contrast phase are not scored: a label map does not show them. A stated attribute
    the sample cannot show (its class not annotated) does not hold.

    Args:
        prompt_attributes: `parse_prompt` of the prompt.
        measured_attributes: ``measure_labels(sample).attributes``.
        diameter_tolerance: relative tolerance on tumour diameters (0.3 = ±30 %).
        volume_tolerance: relative tolerance on stated organ volumes.
        reference_stats: optional reference volumes (see `volume_statistics`) for organs without a
            normal range.

    Returns:
        Field → bool, plus ``"all"``.

    Raises:
        ValueError: arguments of the wrong type or tolerances outside (0, 1).
    """
    if not isinstance(prompt_attributes, Attributes):
        raise ValueError(f"prompt_attributes must be an Attributes record, got {type(prompt_attributes).__name__}")
    if not isinstance(measured_attributes, Attributes):
        raise ValueError(f"measured_attributes must be an Attributes record, got {type(measured_attributes).__name__}")
    for arg, value in (("diameter_tolerance", diameter_tolerance), ("volume_tolerance", volume_tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{arg} must be in (0, 1), got {value!r}")
    stats = _check_reference(reference_stats) if reference_stats is not None else {}
    result: dict[str, bool] = {}
    stated, measured = prompt_attributes.tumours, measured_attributes.tumours
    result.update(tumour_agreement(stated, measured, diameter_tolerance))
    for organ, finding in prompt_attributes.organs.items():
        result.update(organ_agreement(organ, finding, measured_attributes.organs.get(organ), stats, volume_tolerance))
    if prompt_attributes.field_of_view is not None:
        result["field_of_view"] = measured_attributes.field_of_view == prompt_attributes.field_of_view
    result["all"] = all(result.values())
    return result


# --------------------------------------------------------------------------------------------------
# Diversity


def diversity(samples: Sequence[Volume | np.ndarray], classes: Sequence[str] = ORGANS) -> float | None:
    """Mean pairwise Dice between samples of one prompt, over organ classes.

    Definition: for each pair of samples, Dice ``2|A∩B| / (|A| + |B|)`` of each class present in
    either sample (voxels of unknown class in either sample are ignored), averaged over those
    classes; then averaged over all pairs. Identical samples give 1.0; ``1 - Dice`` is the diversity.

    Args:
        samples: two or more label maps on the same grid (`Volume` or arrays).
        classes: class names compared (default: every organ).

    Returns:
        Mean pairwise Dice in [0, 1], or ``None`` when no pair has any voxel of ``classes``.

    Raises:
        ValueError: fewer than two samples, different grids, or unknown class names.
    """
    classes = _check_classes(classes, NAMES[1:], "classes")
    if isinstance(samples, (Volume, np.ndarray)) or len(samples) < 2:
        raise ValueError("samples must be a sequence of at least two label maps")
    first = samples[0]
    arrays: list[np.ndarray] = []
    for index, sample in enumerate(samples):
        if isinstance(sample, Volume):
            array = _check_volume(sample, f"samples[{index}]")
        else:
            array = _check_array(sample, f"samples[{index}]")
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(f"samples[{index}] has shape {array.shape}, samples[0] {arrays[0].shape}")
        if isinstance(sample, Volume) and isinstance(first, Volume) and not sample.same_grid(first):
            raise ValueError(f"samples[{index}] is not on the grid (affine) of samples[0]")
        arrays.append(array.astype(np.intp, copy=False))
    ids = np.array([ID[name] for name in classes], dtype=np.intp)
    size = UNKNOWN + 1
    scores: list[float] = []
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            a, b = arrays[i], arrays[j]
            known = (a != UNKNOWN) & (b != UNKNOWN)
            # One joint histogram gives every class's overlap and both sizes at once.
            joint = np.bincount(a[known] * size + b[known], minlength=size * size).reshape(size, size)
            overlap = np.diag(joint)[ids]
            total = joint.sum(axis=1)[ids] + joint.sum(axis=0)[ids]
            present = total > 0
            if present.any():
                scores.append(float(np.mean(2.0 * overlap[present] / total[present])))
    return float(np.mean(scores)) if scores else None


# --------------------------------------------------------------------------------------------------
# Batch report


@dataclass
class SampleCheck:
    """All checks of one sample (see `check_masks`)."""

    index: int
    prompt: str
    components: dict[str, ComponentResult]
    relations: dict[str, bool | None]
    adherence: dict[str, bool]
    volumes: dict[str, VolumeFinding]
    measured: Attributes

    @property
    def components_ok(self) -> bool | None:
        return components_pass(self.components)

    @property
    def fragmented(self) -> list[str]:
        return [name for name, r in self.components.items() if r.passed is False]

    @property
    def adherence_scored(self) -> bool:
        """Whether the prompt stated anything a label map can show."""
        return len(self.adherence) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prompt": self.prompt,
            "components_ok": self.components_ok,
            "components": {name: r.to_dict() for name, r in self.components.items() if r.voxels},
            "relations": dict(self.relations),
            "relation_pass_fraction": relation_pass_fraction(self.relations),
            "adherence": dict(self.adherence),
            "volumes": {name: f.to_dict() for name, f in self.volumes.items()},
            "measured": self.measured.to_dict(),
        }


@dataclass
class MaskCheckReport:
    """Aggregate quality of a batch of sampled label maps.

    Attributes:
        n_samples: number of samples checked.
        component_pass_fraction: share of samples whose every present organ is one main component
            (`component_check`); ``None`` when no sample had an organ.
        relation_pass_fraction: share of all testable relations satisfied, over every sample.
        relation_pass_by_name: the same per relation (``None`` where never testable).
        adherence_fraction: share of samples whose stated attributes all hold, among samples whose
            prompt states something a label map can show; ``None`` when there is none.
        adherence_by_field: pass share per field kind (``"tumours"``, ``"tumour.diameter_mm"``,
            ``"organ.state"`` …).
        volume_outliers: one entry per flagged organ volume (sample index, prompt, organ, status,
            volume mL, reference mean mL, ratio).
        diversity: prompt → ``{"samples", "mean_dice", "diversity"}`` for prompts with several
            samples.
        settings: thresholds used.
        samples: per-sample details.
    """

    n_samples: int
    component_pass_fraction: float | None
    relation_pass_fraction: float | None
    relation_pass_by_name: dict[str, float | None]
    adherence_fraction: float | None
    adherence_by_field: dict[str, float]
    volume_outliers: list[dict[str, Any]]
    diversity: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    samples: list[SampleCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (str, int, float, bool, None, list, dict only)."""
        return {
            "n_samples": self.n_samples,
            "component_pass_fraction": self.component_pass_fraction,
            "relation_pass_fraction": self.relation_pass_fraction,
            "relation_pass_by_name": dict(self.relation_pass_by_name),
            "adherence_fraction": self.adherence_fraction,
            "adherence_by_field": dict(self.adherence_by_field),
            "volume_outliers": [dict(o) for o in self.volume_outliers],
            "diversity": {p: dict(d) for p, d in self.diversity.items()},
            "settings": dict(self.settings),
            "samples": [s.to_dict() for s in self.samples],
        }

    def summary_lines(self) -> list[str]:
        """A short human-readable summary, one finding per line."""
        lines = [f"mask check: {self.n_samples} sample(s), {len({s.prompt for s in self.samples})} prompt(s)"]
        scored = [s for s in self.samples if s.components_ok is not None]
        fragmented = Counter(name for s in self.samples for name in s.fragmented)
        lines.append(
            f"  components: {_count_line(sum(bool(s.components_ok) for s in scored), len(scored))} samples have every "
            f"organ in one main component (≥ {self.settings['min_main_fraction']:.0%})"
            + (f"; fragmented: {_tally(fragmented)}" if fragmented else "")
        )
        relations = [r for s in self.samples for r in s.relations.values() if r is not None]
        failing = Counter(name for s in self.samples for name, r in s.relations.items() if r is False)
        lines.append(
            f"  relations: {_count_line(sum(relations), len(relations))} anatomical relations hold"
            + (f"; violated: {_tally(failing)}" if failing else "")
        )
        adherent = [s for s in self.samples if s.adherence_scored]
        missed = Counter(_field_kind(k) for s in adherent for k, v in s.adherence.items() if k != "all" and not v)
        lines.append(
            f"  adherence: {_count_line(sum(s.adherence['all'] for s in adherent), len(adherent))} samples hold every "
            "stated attribute" + (f"; failing: {_tally(missed)}" if missed else "")
        )
        if self.volume_outliers:
            shown = ", ".join(
                f"#{o['sample']} {o['organ']} {o['status'].replace('_', ' ')}"
                + (f" ({o['ratio']:.2f}× ref)" if o["ratio"] is not None and o["status"] != "missing" else "")
                for o in self.volume_outliers[:6]
            )
            more = f" … (+{len(self.volume_outliers) - 6})" if len(self.volume_outliers) > 6 else ""
            lines.append(f"  volume outliers: {len(self.volume_outliers)}: {shown}{more}")
        else:
            checked = self.settings.get("reference")
            lines.append("  volume outliers: none" if checked else "  volumes: not checked (no reference statistics)")
        for prompt, entry in self.diversity.items():
            dice = entry["mean_dice"]
            text = "n/a" if dice is None else f"mean Dice {dice:.3f} (diversity {entry['diversity']:.3f})"
            lines.append(f"  diversity of {prompt!r} ({entry['samples']} samples): {text}")
        return lines


def check_masks(
    samples: Sequence[Volume],
    prompts: Sequence[str] | None,
    reference_stats: Mapping[str, Sequence[float]] | None = None,
    tolerance: float = VOLUME_TOLERANCE,
    min_fraction: float = MIN_MAIN_FRACTION,
    component_classes: Sequence[str] = ORGANS,
) -> MaskCheckReport:
    """Run every check on a batch of sampled label maps.

    Args:
        samples: sampled label maps (GuideGen ids); ``meta["annotated"]`` is honoured when present.
        prompts: the prompt each sample was drawn from (same length as ``samples``); ``None``: each
            sample's ``meta["prompt"]``, which `guidegen.masks.sampler` records.
        reference_stats: reference volumes (`volume_statistics`); ``None`` skips the volume check.
        tolerance: volume ratio bound of `volume_check`.
        min_fraction: main-component share of `component_check`.
        component_classes: classes `component_check` examines.

    Returns:
        `MaskCheckReport`.

    Raises:
        ValueError: empty or mismatched ``samples`` / ``prompts``, bad thresholds or reference.
        guidegen.errors.InputError: a prompt `parse_prompt` refuses (empty) or a map with ids outside
            the vocabulary.
    """
    if isinstance(samples, Volume) or not len(samples):
        raise ValueError("samples must be a non-empty sequence of label maps")
    if prompts is None:
        prompts = [s.meta.get("prompt") if isinstance(s, Volume) else None for s in samples]
        missing = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if missing:
            raise ValueError(f"prompts not given and samples {missing[:8]} have no meta['prompt']")
    if isinstance(prompts, str) or len(prompts) != len(samples):
        raise ValueError(f"prompts must be a sequence of one prompt per sample ({len(samples)}), got {prompts!r:.80}")
    stats = _check_reference(reference_stats) if reference_stats is not None else {}
    tolerance = _check_tolerance(tolerance)
    parsed: dict[str, Attributes] = {}
    checks: list[SampleCheck] = []
    for index, (sample, prompt) in enumerate(zip(samples, prompts)):
        _check_volume(sample, f"samples[{index}]")
        if not isinstance(prompt, str):
            raise ValueError(f"prompts[{index}] must be text, got {type(prompt).__name__}")
        if prompt not in parsed:
            parsed[prompt] = parse_prompt(prompt)
        attributes = parsed[prompt]
        measured = measure_labels(sample).attributes
        volumes = {name: finding_volume(measured.organs.get(name)) for name in ORGANS}
        checks.append(
            SampleCheck(
                index=index,
                prompt=prompt,
                components=component_check(sample, component_classes, min_fraction),
                relations=relation_check(sample),
                adherence=adherence_check(attributes, measured, reference_stats=stats or None),
                volumes=_volume_findings(volumes, stats, tolerance, attributes),
                measured=measured,
            )
        )

    component_scored = [c.components_ok for c in checks if c.components_ok is not None]
    relation_values = [r for c in checks for r in c.relations.values() if r is not None]
    by_name: dict[str, float | None] = {}
    for name in RELATIONS:
        values = [c.relations[name] for c in checks if c.relations.get(name) is not None]
        by_name[name] = round(sum(values) / len(values), 4) if values else None  # type: ignore[arg-type]
    adherent = [c for c in checks if c.adherence_scored]
    kinds: dict[str, list[bool]] = {}
    for c in adherent:
        for key, value in c.adherence.items():
            if key != "all":
                kinds.setdefault(_field_kind(key), []).append(value)
    outliers = [
        {
            "sample": c.index,
            "prompt": c.prompt,
            "organ": name,
            "status": f.status,
            "volume_ml": f.volume_ml,
            "reference_mean_ml": f.reference_mean_ml,
            "ratio": f.ratio,
        }
        for c in checks
        for name, f in c.volumes.items()
        if f.outlier
    ]
    groups: dict[str, list[Volume]] = {}
    for sample, prompt in zip(samples, prompts):
        groups.setdefault(prompt, []).append(sample)
    spread: dict[str, dict[str, Any]] = {}
    for prompt, group in groups.items():
        if len(group) < 2:
            continue
        dice = diversity(group)
        spread[prompt] = {
            "samples": len(group),
            "mean_dice": None if dice is None else round(dice, 4),
            "diversity": None if dice is None else round(1.0 - dice, 4),
        }
    return MaskCheckReport(
        n_samples=len(checks),
        component_pass_fraction=_fraction(sum(component_scored), len(component_scored)),
        relation_pass_fraction=_fraction(sum(relation_values), len(relation_values)),
        relation_pass_by_name=by_name,
        adherence_fraction=_fraction(sum(c.adherence["all"] for c in adherent), len(adherent)),
        adherence_by_field={k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())},
        volume_outliers=outliers,
        diversity=spread,
        settings={
            "min_main_fraction": min_fraction,
            "volume_tolerance": tolerance,
            "diameter_tolerance": DIAMETER_TOLERANCE,
            "organ_volume_tolerance": ORGAN_VOLUME_TOLERANCE,
            "component_classes": list(component_classes),
            "reference": bool(stats),
        },
        samples=checks,
    )


# --------------------------------------------------------------------------------------------------
# Helpers


def _fraction(passed: int, total: int) -> float | None:
    return round(passed / total, 4) if total else None


def _count_line(passed: int, total: int) -> str:
    if not total:
        return "0/0 (n/a)"
    return f"{passed}/{total} ({100.0 * passed / total:.1f} %)"


def _tally(counter: Counter[str]) -> str:
    return ", ".join(f"{name} ×{n}" for name, n in counter.most_common(6))


def _field_kind(key: str) -> str:
    """``"tumour2.count"`` → ``"tumour.count"``, ``"spleen.state"`` → ``"organ.state"``."""
    if "." not in key:
        return key
    head, tail = key.split(".", 1)
    return f"tumour.{tail}" if head.startswith("tumour") and head[6:].isdigit() else f"organ.{tail}"


def _check_array(array: Any, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D label array or a Volume, got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer label ids, got dtype {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > UNKNOWN):
        raise ValueError(f"{name} holds ids outside 0-{UNKNOWN}")
    return array


def _check_volume(volume: Any, name: str) -> np.ndarray:
    if not isinstance(volume, Volume):
        raise ValueError(f"{name} must be a guidegen Volume (label map), got {type(volume).__name__}")
    return _check_array(np.asarray(volume.array), name)


def _check_classes(classes: Sequence[str], allowed: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(classes, str):
        classes = (classes,)
    bad = [c for c in classes if c not in allowed]
    if bad:
        raise ValueError(f"{name}: {', '.join(map(repr, bad))} not allowed; valid: {', '.join(allowed)}")
    return tuple(classes)


def _check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (1.0 < tolerance < math.inf):
        raise ValueError(f"tolerance must be a ratio > 1, got {tolerance!r}")
    return float(tolerance)


def _check_reference(reference_stats: Mapping[str, Sequence[float]] | None) -> dict[str, VolumeStats]:
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
