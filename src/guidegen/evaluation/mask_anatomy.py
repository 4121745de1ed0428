"""Anatomical plausibility of a sampled label map: each organ in one piece, organs where anatomy
puts them.

* `component_check`: an organ should be one solid piece; it passes when its largest
  26-connected component holds at least 95 % of its voxels (no fragments, no floating islands).
* `relation_check`: coarse anatomical relations between organ centroids / extents in world RAS+
  millimetres (liver right of spleen, bladder below the kidneys …), see `RELATIONS`.

Part of the mask checks of `guidegen.evaluation.masks`; world coordinates as defined there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from guidegen.evaluation.mask_arguments import check_class_names, check_label_volume
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, ORGANS, UNKNOWN

#: An organ passes the component check when its largest component holds at least this share of
#: its voxels.
MIN_MAIN_FRACTION = 0.95

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
    array = check_label_volume(labels, "labels")
    classes = check_class_names(classes, NAMES[1:], "classes")
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
    array = check_label_volume(labels, "labels")
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
# Sides

#: The side tests of `side_check`, name → definition (RAS+: +x = patient's right).
SIDES: dict[str, str] = {
    "kidney_left_left_of_kidney_right": "left kidney centroid x < right kidney centroid x",
    "kidney_right_right_of_midline": "right kidney centroid x > midline x",
    "kidney_left_left_of_midline": "left kidney centroid x < midline x",
    "spleen_left_of_midline": "spleen centroid x < midline x",
    "liver_right_of_midline": "liver centroid x > midline x",
}


def side_check(labels: Volume) -> dict[str, bool | None]:
    """Whether the organs lie on the patient's side anatomy puts them (`SIDES`), in world RAS+ mm.

    The midline is the one `relation_check` uses (the aorta when present, else the middle of the
    body's x extent). A sampled map that fails any of these has an organ on the wrong side: a "left
    kidney" on the patient's right (issue 24: drawn beside the right kidney, or with the two kidney
    labels exchanged), or a mirrored layout.

    Args:
        labels: label map (GuideGen ids), any orientation.

    Returns:
        Test name → ``True`` (holds), ``False`` (wrong side) or ``None`` (not testable: an organ it
        needs has no voxels, or no midline).

    Raises:
        ValueError: ``labels`` not a label `Volume`.
    """
    array = check_label_volume(labels, "labels")
    geo = _Geometry(labels, array)
    c = {name: geo.centroid(name) for name in ("liver", "spleen", *_KIDNEYS)}
    results: dict[str, bool | None] = dict.fromkeys(SIDES)
    if c["kidney_right"] is not None and c["kidney_left"] is not None:
        results["kidney_left_left_of_kidney_right"] = bool(c["kidney_left"][0] < c["kidney_right"][0])
    midline = geo.midline_x() if any(v is not None for v in c.values()) else None
    if midline is not None:
        for name, test, right in (
            ("kidney_right", "kidney_right_right_of_midline", True),
            ("kidney_left", "kidney_left_left_of_midline", False),
            ("spleen", "spleen_left_of_midline", False),
            ("liver", "liver_right_of_midline", True),
        ):
            if c[name] is not None:
                results[test] = bool(c[name][0] > midline) if right else bool(c[name][0] < midline)
    return results


def wrong_sides(results: Mapping[str, bool | None]) -> list[str]:
    """Names of the `side_check` tests a map fails (empty: nothing on the wrong side)."""
    return [name for name, holds in results.items() if holds is False]
