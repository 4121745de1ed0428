"""Stated tumours placed into sampled anatomy (the sampler's ``tumour_placement="insert"``).

Why this stage exists: the demo network, trained on six scans on a CPU, learns the organs but not
tumours. Probed along its sampling trajectory it spreads ~30 voxels' worth of tumour probability
over the whole map (max p ≈ 0.1, 80 % of it outside the liver for "4 cm tumour in the liver", the
same for "healthy abdomen"), so argmax and ancestral sampling both draw none: 0 of 26 tumour
prompts held (docs/results/mask_suite_32.txt). Loss weighting made it draw litres of tumour
everywhere (docs/results/mask_sampler_tumour_weight.txt). Until a network learns them, the
tumours a prompt states are put in by the procedure that made the training data: a real tumour
shape (`guidegen.data.augment.TumourInsertion`), resized to the stated diameter, at a random site
of the stated host organ, colon segment or liver lobe *of the sampled anatomy*. The result is
measured with the report generator's own measurements and checked with the adherence check's own
definition (`guidegen.text.agreement`); a draw that does not hold (a tumour clipped by a
neighbouring organ, two lesions merged, a centroid across a segment border) is redrawn.

What the network still decides: the anatomy (organ shapes, sizes, positions) and hence where the
tumour can go. What it does not: whether there is a tumour, its size and its host. Switch the
stage off (``tumour_placement="network"``) to see the network's own tumours.

Policy: a prompt that states tumours (or states "no tumour") gets exactly the stated ones; any
tumour voxels the network drew are first given back to the surrounding class. A prompt silent about
tumours keeps whatever the network drew.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from guidegen.data.augment import DIAMETER_RANGES_MM, TumourInsertion, TumourShape
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, TUMOUR_HOSTS
from guidegen.text.agreement import DIAMETER_TOLERANCE, tumour_agreement
from guidegen.text.attributes import KIDNEY_UNSPECIFIED, Tumour
from guidegen.text.measure import colon_segment_of, liver_lobe_of, measure_labels

__all__ = ["fill_from_nearest", "place_stated_tumours", "remove_tumours"]
#: Lesions drawn for "multiple" when no number is stated.
MULTIPLE_COUNT = (2, 4)
#: Secondary lesions of a group get this fraction range of the stated (largest) diameter.
SECONDARY_FRACTION = (0.5, 0.9)

_TUMOUR = ID["tumour"]


def fill_from_nearest(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``array`` whose ``mask`` voxels take the label of the nearest voxel outside it."""
    out = array.copy()
    if mask.any():
        _, index = ndimage.distance_transform_edt(mask, return_indices=True)
        out[mask] = array[tuple(i[mask] for i in index)]
    return out


def remove_tumours(labels: Volume) -> Volume:
    """Every tumour voxel relabelled as its nearest non-tumour voxel (the organ it sat in)."""
    tumour = labels.array == _TUMOUR
    if not tumour.any():
        return labels
    if tumour.all():
        return labels.with_array(np.zeros_like(labels.array))
    return labels.with_array(fill_from_nearest(labels.array, tumour))


def _site_of(host: str):
    if host == "colon":
        return lambda labels, points: [s or "unknown" for s in colon_segment_of(labels, points)]
    if host == "liver":
        return lambda labels, points: [s or "unknown" for s in liver_lobe_of(labels, points)]
    return None


def _present(labels: Volume) -> set[str]:
    counts = np.bincount(labels.array.ravel(), minlength=256)
    return {h for h in TUMOUR_HOSTS if counts[ID[h]] > 0}


def _draw_group(labels: Volume, group: Tumour, rng: np.random.Generator,
                shapes: Sequence[TumourShape] | None) -> tuple[Volume, dict[str, Any]]:
    """Insert one stated tumour group; returns the map and a record (with ``"error"`` on failure)."""
    if group.organ not in (None, KIDNEY_UNSPECIFIED, *TUMOUR_HOSTS):
        return labels, {"organ": group.organ,
                        "error": f"tumours of the {group.organ} are not placed (hosts: {', '.join(TUMOUR_HOSTS)})"}
    present = _present(labels)
    if group.organ is None:
        options = sorted(present)
    elif group.organ == KIDNEY_UNSPECIFIED:
        options = [k for k in ("kidney_right", "kidney_left") if k in present]
    else:
        options = [group.organ] if group.organ in present else []
    if not options:
        return labels, {"organ": group.organ, "error": f"the sampled map has no {group.organ or 'tumour host'}"}
    host = options[int(rng.integers(len(options)))]
    count = group.count if group.count is not None else int(rng.integers(MULTIPLE_COUNT[0], MULTIPLE_COUNT[1] + 1))
    low, high = DIAMETER_RANGES_MM[host]
    largest = float(group.diameter_mm) if group.diameter_mm is not None else float(rng.uniform(low, high))
    insertion = TumourInsertion(shapes=shapes, hosts=(host,), site_of=_site_of(host))
    record: dict[str, Any] = {"organ": host, "segment": group.segment, "diameters_mm": []}
    for k in range(count):
        diameter = largest if k == 0 else largest * float(rng.uniform(*SECONDARY_FRACTION))
        try:
            params = insertion.make_params(rng, labels, host=host, segment=group.segment, diameter_mm=diameter, count=1)
        except ValueError as exc:  # host used up by earlier lesions, no voxel in the segment
            record["error"] = str(exc)
            break
        labels, _ = insertion.apply(labels, params)
        record["diameters_mm"].append(round(diameter, 1))
    return labels, record


def place_stated_tumours(labels: Volume, stated: tuple[Tumour, ...] | None, rng: np.random.Generator,
                         attempts: int = 6, shapes: Sequence[TumourShape] | None = None,
                         tolerance: float = DIAMETER_TOLERANCE) -> tuple[Volume, dict[str, Any]]:
    """Give ``labels`` exactly the tumours ``stated`` (``parse_prompt(...).tumours``).

    Args:
        labels: a sampled label map (GuideGen ids, every class annotated).
        stated: ``None`` (prompt silent: ``labels`` returned unchanged), ``()`` ("no tumour": tumour
            voxels removed) or the stated tumour groups.
        rng: random generator (sites, shapes, orientations, unstated sizes and counts).
        attempts: whole draws tried until every stated tumour field holds; else the best draw.
        shapes: tumour shape bank; ``None``: the bundled real tumours (`default_tumour_shapes`).
        tolerance: relative diameter tolerance of the check (as the adherence check's).

    Returns:
        (labels, record): the new map and a JSON-ready record: ``mode``, ``attempts`` used,
        ``agreement`` (field → holds, `tumour_agreement` on the final map), ``groups`` (host,
        segment, diameters placed; ``error`` where a group could not be placed).
    """
    if stated is None:
        return labels, {"mode": "insert", "stated": False}
    base = remove_tumours(labels)
    if not stated:
        return base, {"mode": "insert", "stated": True, "attempts": 0,
                      "agreement": tumour_agreement(stated, measure_labels(base).attributes.tumours, tolerance)}
    best: tuple[int, Volume, dict[str, Any]] | None = None
    for attempt in range(1, attempts + 1):
        out, groups = base, []
        for group in stated:
            out, record = _draw_group(out, group, rng, shapes)
            groups.append(record)
        agreement = tumour_agreement(stated, measure_labels(out).attributes.tumours, tolerance)
        score = sum(agreement.values())
        record = {"mode": "insert", "stated": True, "attempts": attempt, "agreement": agreement, "groups": groups}
        if best is None or score > best[0]:
            best = (score, out, record)
        if all(agreement.values()):
            break
    assert best is not None
    best[2]["attempts"] = attempt
    meta = {k: v for k, v in best[1].meta.items() if k != "augmentations"}  # the record says it all
    return best[1].with_array(best[1].array, meta=meta), best[2]
