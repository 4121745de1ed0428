"""The placement stage after the mask sampler's network: stated tumours and organ sizes, and the aorta.

Stated tumours placed into sampled anatomy (the sampler's ``tumour_placement="insert"``).

Why this stage exists: the demo network, trained on six scans on a CPU, learns the organs but not
tumours. Probed along its sampling trajectory it spreads ~30 voxels' worth of tumour probability
over the whole map (max p ≈ 0.1, 80 % of it outside the liver for "4 cm tumour in the liver", the
same for "healthy abdomen"), so argmax and ancestral sampling both draw none: 0 of 26 tumour
prompts held (docs/results/mask_suite_32.txt). Loss weighting made it draw litres of tumour
everywhere (docs/results/mask_sampler_tumour_weight.txt). Until a network learns them, the
tumours a prompt states are put in by the procedure that made the training data: a real tumour
shape (`guidegen.data.ops.TumourInsertion`), resized to the stated diameter, at a random site
of the stated host organ, colon segment or liver lobe *of the sampled anatomy*. The result is
measured with the report generator's own measurements and checked with the adherence check's own
definition (`guidegen.text.agreement`); a draw that does not hold (a tumour clipped by a
neighbouring organ, two lesions merged, a centroid across a segment border) is redrawn.

What the network still decides: the anatomy (organ shapes, sizes, positions) and hence where the
tumour can go. What it does not: whether there is a tumour, its size and its host. Switch the
stage off (``tumour_placement="network"``) to see the network's own tumours.

Policy: a prompt that states tumours (or states "no tumour") gets exactly the stated ones; any
tumour voxels the network drew are first given back to the surrounding class. `place_stated_tumours`
leaves a map alone for a prompt silent about tumours; the sampler's placement stage
(`guidegen.masks.sampler.apply_statements`) removes the network's tumour voxels then too: the
sampler trained on the TotalSegmentator maps draws 1-23 scattered tumour voxels in most maps, which
the report would read as lesions.

**Hosts too small to hold the tumour.** The network draws some organs far too small (pancreas and
stomach often 10-15 mL, the left kidney ~60 mL): a 4 cm tumour (34 mL) put into such a host
replaces it and touches it on under 10 % of its surface, so no report would name the host. Before
a tumour goes in, its host is grown (`OrganScaling`, the training data's organ scaling, about its
centroid, `UNDER_THE_DIAPHRAGM` its top; growth takes over fat, bowel and background only) to at
least `HOST_TUMOUR_RATIO` times the tumours' volume and the low end of the organ's normal range.
Organs whose size the prompt states are left at that size.

**Stated organ sizes** (`apply_stated_organs`, the sampler's ``organ_sizes="scale"``): the demo
network follows "enlarged spleen" weakly (organ-size statements held in 9 of 21 cases of the prompt
suite). An organ the prompt calls enlarged, small or normal whose sampled volume does not say so
(the adherence check's definition, `guidegen.text.agreement.organ_agreement`) is scaled to a volume
drawn in the middle half of the stated grade's band of `guidegen.text.measure.REFERENCE_RANGES`
(again `OrganScaling`); an organ stated absent ("status post splenectomy") is removed, its voxels
given to the nearest fat or bowel. Organs without a normal range (stomach, bowel) are left alone.

**The aorta** (`draw_aorta_tube`, the sampler's ``aorta_placement="tube"``): the demo network has
not learnt the aorta as a vessel. Its aorta probability is low everywhere (the plain argmax draws
0-2 slices of it), and the matched-count decoding gives it its expected volume as 5-17 specks
(median 11 on the prompt suite's maps) of 1-5 voxels of 8 mm, their in-plane centres jumping by up
to 20 voxels from slice to slice, where the training map has one tube of 4-9 voxels a slice (about
20 mm across). Upsampled, such specks are ~13 mm wide, their one-voxel-eroded interior is mostly the
darker rim the image generator gives every structure, and the CT misses every phase's published
aorta HU (2 of 16 phase pairs on sampled maps, docs/results/phase_check.txt). The aorta is therefore
redrawn as one tube of a normal adult calibre (`AORTA_DIAMETER_MM`) along the course and over the
extent the network's specks indicate (down to a few cm below the kidneys), grown into unlabelled
tissue only; an aorta already drawn as a vessel is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from guidegen.data.ops import DIAMETER_RANGES_MM, OrganScaling, ScalingParams, TumourInsertion, TumourShape, soft_ids
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, TUMOUR_HOSTS
from guidegen.text.agreement import DIAMETER_TOLERANCE, finding_volume, organ_agreement, tumour_agreement
from guidegen.text.attributes import KIDNEY_UNSPECIFIED, OrganFinding, Tumour
from guidegen.text.measure import (
    REFERENCE_RANGES,
    SMALL_MILD_RATIO,
    SMALL_MODERATE_RATIO,
    ReferenceRange,
    colon_segment_of,
    grade_volume,
    liver_lobe_of,
    measure_labels,
)
from guidegen.text.sides import KIDNEYS, kidneys_swapped

__all__ = [
    "AORTA_BELOW_KIDNEYS_MM",
    "AORTA_DIAMETER_MM",
    "AORTA_MAX_DRIFT",
    "HOST_TUMOUR_RATIO",
    "apply_stated_organs",
    "draw_aorta_tube",
    "fill_from_nearest",
    "grow_host",
    "name_kidneys_by_side",
    "place_stated_tumours",
    "remove_tumours",
    "stated_volume_band",
]
#: Lesions drawn for "multiple" when no number is stated.
MULTIPLE_COUNT = (2, 4)
#: Secondary lesions of a group get this fraction range of the stated (largest) diameter.
SECONDARY_FRACTION = (0.5, 0.9)

#: A tumour's host is grown to at least this many times the volume of the tumours it must hold
#: (spheres of the stated diameters), so that host tissue surrounds them.
HOST_TUMOUR_RATIO = 5.0
#: Rounds of scaling towards a stated volume (growth can be blocked by neighbouring organs).
SCALING_ROUNDS = 3
#: Organs scaled with their top held (`ScalingParams.fixed_top`) as the diaphragm holds it: they grow downwards.
UNDER_THE_DIAPHRAGM: tuple[str, ...] = ("liver", "spleen")

#: Normal outer diameter of the adult abdominal aorta, mm: about 2 cm (suprarenal 2.0-2.5 cm,
#: infrarenal 1.5-2.1 cm, smaller in women; 3 cm is an aneurysm). One value per map is drawn here.
AORTA_DIAMETER_MM = (17.0, 23.0)
#: Largest in-plane drift of the aorta's course per unit of height (mm / mm) that a drawn tube may take.
AORTA_MAX_DRIFT = 0.25
#: Lowest end of a drawn aorta below the kidneys' lowest voxel, mm: the aorta divides at about L4,
#: a few cm below the lower renal poles (16 mm in the training map); the network's specks reach
#: into the pelvis.
AORTA_BELOW_KIDNEYS_MM = 50.0

_TUMOUR = ID["tumour"]
_SCALING = OrganScaling()


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


def site_of(host: str):
    if host == "colon":
        return lambda labels, points: [s or "unknown" for s in colon_segment_of(labels, points)]
    if host == "liver":
        return lambda labels, points: [s or "unknown" for s in liver_lobe_of(labels, points)]
    return None


def _present(labels: Volume) -> set[str]:
    """Tumour hosts drawn in ``labels``, kidneys named by the side they lie on (`_label_of`)."""
    counts = np.bincount(labels.array.ravel(), minlength=256)
    present = {h for h in TUMOUR_HOSTS if counts[ID[h]] > 0}
    if kidneys_swapped(labels):
        present = {_OTHER_KIDNEY.get(h, h) for h in present}
    return present


_OTHER_KIDNEY = {KIDNEYS[0]: KIDNEYS[1], KIDNEYS[1]: KIDNEYS[0]}


def name_kidneys_by_side(labels: Volume) -> tuple[Volume, bool]:
    """The kidney labels exchanged when they lie on the wrong sides of the patient (the network drew
    the "left kidney" on the patient's right: 1 of 10 maps of the default model, docs/results/sides.txt).
    Only names change, not anatomy. Returns the map and whether they were exchanged."""
    if not kidneys_swapped(labels):
        return labels, False
    array = labels.array.copy()
    right, left = labels.array == ID["kidney_right"], labels.array == ID["kidney_left"]
    array[right], array[left] = ID["kidney_left"], ID["kidney_right"]
    return labels.with_array(array), True


def _label_of(labels: Volume, organ: str) -> str:
    """The class drawn where ``organ`` lies: the other kidney's label when the map's kidney labels lie
    on the wrong sides of the patient (`guidegen.text.sides.kidneys_swapped`), so that a tumour or
    size stated for the right kidney goes to the kidney on the patient's right, as measured."""
    if organ in _OTHER_KIDNEY and kidneys_swapped(labels):
        return _OTHER_KIDNEY[organ]
    return organ


def _draw_group(
    labels: Volume,
    group: Tumour,
    rng: np.random.Generator,
    shapes: Sequence[TumourShape] | None,
    keep_size: frozenset[str] = frozenset(),
) -> tuple[Volume, dict[str, Any]]:
    """Insert one stated tumour group; returns the map and a record (with ``"error"`` on failure)."""
    if group.organ not in (None, KIDNEY_UNSPECIFIED, *TUMOUR_HOSTS):
        return labels, {
            "organ": group.organ,
            "error": f"tumours of the {group.organ} are not placed (hosts: {', '.join(TUMOUR_HOSTS)})",
        }
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
    label = _label_of(labels, host)  # the class to draw into: differs from host on a side-swapped map
    count = group.count if group.count is not None else int(rng.integers(MULTIPLE_COUNT[0], MULTIPLE_COUNT[1] + 1))
    low, high = DIAMETER_RANGES_MM[host]
    largest = float(group.diameter_mm) if group.diameter_mm is not None else float(rng.uniform(low, high))
    record: dict[str, Any] = {"organ": host, "segment": group.segment, "diameters_mm": []}
    if label != host:
        record["drawn_in_label"] = label
    if host not in keep_size:
        # Secondary lesions are 50-90 % of the largest diameter: count them at about half its volume.
        needed = HOST_TUMOUR_RATIO * _sphere_ml(largest) * (1 + 0.5 * (count - 1))
        ref = REFERENCE_RANGES.get(host)
        if ref is not None and ref.low_ml is not None:
            needed = max(needed, ref.low_ml)
        labels, grown = grow_host(labels, label, needed)
        if grown is not None:
            record["host_grown_ml"] = grown
    insertion = TumourInsertion(shapes=shapes, hosts=(label,), site_of=site_of(host))
    for k in range(count):
        diameter = largest if k == 0 else largest * float(rng.uniform(*SECONDARY_FRACTION))
        try:
            params = insertion.make_params(
                rng, labels, host=label, segment=group.segment, diameter_mm=diameter, count=1
            )
        except ValueError as exc:  # host used up by earlier lesions, no voxel in the segment
            record["error"] = str(exc)
            break
        before = labels.array == _TUMOUR
        labels, _ = insertion.apply(labels, params)
        if host != "colon":  # colon tumours sit in the bowel wall, beside fat and lumen
            labels = _wrap_in_host(labels, (labels.array == _TUMOUR) & ~before, label)
        record["diameters_mm"].append(round(diameter, 1))
    return labels, record


def place_stated_tumours(
    labels: Volume,
    stated: tuple[Tumour, ...] | None,
    rng: np.random.Generator,
    attempts: int = 6,
    shapes: Sequence[TumourShape] | None = None,
    tolerance: float = DIAMETER_TOLERANCE,
    keep_size: Sequence[str] = (),
    keep_existing: bool = False,
) -> tuple[Volume, dict[str, Any]]:
    """Give ``labels`` exactly the tumours ``stated`` (``parse_prompt(...).tumours``).

    Args:
        labels: a sampled label map (GuideGen ids, every class annotated).
        stated: ``None`` (prompt silent: ``labels`` returned unchanged), ``()`` ("no tumour": tumour
            voxels removed) or the stated tumour groups.
        rng: random generator (sites, shapes, orientations, unstated sizes and counts).
        attempts: whole draws tried until every stated tumour field holds; else the best draw.
        shapes: tumour shape bank; ``None``: the bundled real tumours (`default_tumour_shapes`).
        tolerance: relative diameter tolerance of the check (as the adherence check's).
        keep_size: organs never grown to hold a tumour (those whose size the prompt states).
        keep_existing: add the stated tumours to those already in ``labels`` (editing a real scan,
            `guidegen edit`) instead of replacing them; the agreement then measures the new ones only.

    Returns:
        (labels, record): the new map and a JSON-ready record: ``mode``, ``attempts`` used,
        ``agreement`` (field → holds, `tumour_agreement` on the final map), ``groups`` (host,
        segment, diameters placed; ``error`` where a group could not be placed).
    """
    if stated is None:
        return labels, {"mode": "insert", "stated": False}
    base = labels if keep_existing and stated else remove_tumours(labels)
    if not stated:
        return base, {
            "mode": "insert",
            "stated": True,
            "attempts": 0,
            "agreement": tumour_agreement(stated, measure_labels(base).attributes.tumours, tolerance),
        }
    best: tuple[int, Volume, dict[str, Any]] | None = None
    for attempt in range(1, attempts + 1):
        out, groups = base, []
        for group in stated:
            out, record = _draw_group(out, group, rng, shapes, frozenset(keep_size))
            groups.append(record)
        measured = _new_tumours_only(out, base) if keep_existing else out
        agreement = tumour_agreement(stated, measure_labels(measured).attributes.tumours, tolerance)
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


def _new_tumours_only(labels: Volume, before: Volume) -> Volume:
    """``labels`` with the tumour voxels it already had in ``before`` given to their surroundings."""
    old = (before.array == _TUMOUR) & (labels.array == _TUMOUR)
    if not old.any():
        return labels
    return labels.with_array(fill_from_nearest(labels.array, old))


def _wrap_in_host(labels: Volume, lesion: np.ndarray, host: str) -> Volume:
    """Fat and bowel voxels touching a new lesion become its host organ, when the host makes up
    less than half of what surrounds it.

    Why: on the demo's 8 mm grid a 3 cm tumour is four voxels across; placed in a thin organ (the
    pancreas) it replaces the organ across its whole width and mostly touches fat and the organ's
    neighbours (stomach, vessels), so neither a reader nor the report could tell where it arose. A
    solid-organ tumour grows inside its organ, so a rim of that organ is put where the lesion
    touches fat or bowel (other organs, vessels and bone are never overwritten).
    """
    if not lesion.any():
        return labels
    shell = ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3), bool)) & ~lesion
    around = labels.array[shell]
    if np.count_nonzero(around == ID[host]) >= 0.5 * around.size:
        return labels
    array = labels.array.copy()
    array[shell & np.isin(labels.array, soft_ids(labels.array))] = ID[host]
    return labels.with_array(array)


def _sphere_ml(diameter_mm: float) -> float:
    return float(np.pi / 6.0 * diameter_mm**3 / 1000.0)


def _volume_ml(labels: Volume, organ: str) -> float:
    return float(np.count_nonzero(labels.array == ID[organ])) * labels.voxel_volume_ml


def _scale_to(labels: Volume, organ: str, target_ml: float, measure=None) -> Volume:
    """``organ`` scaled towards ``target_ml`` (`OrganScaling`, a few rounds: growth can be blocked) about its
    centroid or, `UNDER_THE_DIAPHRAGM`, its top; ``measure(labels)``: the volume to match (default: its voxels)."""
    measure = measure or (lambda v: _volume_ml(v, organ))
    for _ in range(SCALING_ROUNDS):
        volume = measure(labels)
        if volume <= 0 or abs(volume - target_ml) <= 0.05 * target_ml:
            break
        factor = float(np.clip(target_ml / volume, 0.1, 10.0))
        scaled, _ = _SCALING.apply(labels, ScalingParams(organ, factor, fixed_top=organ in UNDER_THE_DIAPHRAGM))
        if np.array_equal(scaled.array, labels.array):
            break  # blocked all round
        labels = _one_piece(scaled, organ)
    return labels


def _one_piece(labels: Volume, organ: str) -> Volume:
    """``organ`` reduced to its largest 26-connected piece. Growth only takes over fat and bowel, so
    an organ grown around a vessel or a neighbour can leave detached specks on the far side; they
    go to the nearest fat or bowel."""
    mask = labels.array == ID[organ]
    pieces, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return labels
    largest = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
    stray = mask & (pieces != largest)
    return labels.with_array(_fill_soft(labels.array, stray))


def grow_host(labels: Volume, host: str, needed_ml: float) -> tuple[Volume, list[float] | None]:
    """``host`` grown to about ``needed_ml`` when it is smaller (else unchanged).

    Returns:
        (labels, ``[before_ml, after_ml]`` or ``None`` when nothing was grown).
    """
    before = _volume_ml(labels, host)
    if before == 0 or before >= needed_ml:
        return labels, None
    out = _scale_to(labels, host, needed_ml)
    meta = {k: v for k, v in out.meta.items() if k != "augmentations"}
    return out.with_array(out.array, meta=meta), [round(before, 1), round(_volume_ml(out, host), 1)]


def stated_volume_band(organ: str, finding: OrganFinding) -> tuple[float, float] | None:
    """Volume range (mL) that makes ``organ`` show the stated size grade, or ``None`` when the organ
    has no normal range (hollow organs) or nothing about its size is stated."""
    ref: ReferenceRange | None = REFERENCE_RANGES.get(organ)
    if ref is None or finding.state not in ("enlarged", "small", "normal"):
        return None
    if finding.state == "enlarged":
        ratios = {
            None: (1.0, ref.moderate_ratio),
            "mild": (1.0, ref.moderate_ratio),
            "moderate": (ref.moderate_ratio, ref.marked_ratio),
            "marked": (ref.marked_ratio, 1.3 * ref.marked_ratio),
        }[finding.severity]
        return ref.high_ml * ratios[0], ref.high_ml * ratios[1]
    if finding.state == "small":
        if ref.low_ml is None:
            return None
        ratios = {
            None: (SMALL_MODERATE_RATIO, 1.0),
            "mild": (SMALL_MILD_RATIO, 1.0),
            "moderate": (SMALL_MODERATE_RATIO, SMALL_MILD_RATIO),
            "marked": (0.6 * SMALL_MODERATE_RATIO, SMALL_MODERATE_RATIO),
        }[finding.severity]
        return ref.low_ml * ratios[0], ref.low_ml * ratios[1]
    return (ref.low_ml if ref.low_ml is not None else 0.2 * ref.high_ml), ref.high_ml


def _fill_soft(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` voxels given the class of the nearest fat / bowel voxel (`SOFT_CLASSES`; background
    only where the map has no body outline), as an organ's bed looks once the organ is gone."""
    source = np.isin(array, soft_ids(array)) & ~mask
    if not source.any():
        return fill_from_nearest(array, mask)
    out = array.copy()
    _, index = ndimage.distance_transform_edt(~source, return_indices=True)
    out[mask] = array[tuple(i[mask] for i in index)]
    return out


def apply_stated_organs(
    labels: Volume, stated: Mapping[str, OrganFinding], rng: np.random.Generator, guard: float = 0.0
) -> tuple[Volume, dict[str, Any]]:
    """Give the organs a prompt states a size for (``parse_prompt(...).organs``) that size.

    An organ whose sampled volume already shows the stated grade (any but "marked" when the prompt
    gives none; with ``guard`` > 0, that fraction inside the grade's band: the upsampled map measures
    a few % smaller) is left as drawn. Otherwise it is
    scaled to a volume drawn in the middle half of `stated_volume_band` (an organ the network did
    not draw cannot be scaled: reported); an organ stated absent is removed (`_fill_soft`).

    Returns:
        (labels, record): record ``organ → {"stated", "before_ml", "after_ml", "changed", "holds"}``
        (``"error"`` where nothing could be done), checked with `organ_agreement` on the final map
        (``holds`` is ``None`` for organs without a size criterion, e.g. the stomach).
    """
    record: dict[str, Any] = {}
    original = labels
    measured = measure_labels(labels).attributes.organs
    for organ, finding in stated.items():
        if finding.state is None:
            continue
        entry: dict[str, Any] = {
            "stated": finding.state if finding.severity is None else f"{finding.severity} {finding.state}",
            "before_ml": finding_volume(measured.get(organ)),
            "changed": False,
        }
        record[organ] = entry
        band = stated_volume_band(organ, finding) if guard else None
        inside = band is None or band[0] * (1 + guard) <= (entry["before_ml"] or 0.0) <= band[1] * (1 - guard)
        # An unqualified "enlarged" / "small" is not a marked one: "enlarged spleen" drew a 1.5 L spleen.
        drawn = measured.get(organ)
        marked = finding.state in ("enlarged", "small") and finding.severity is None and drawn is not None
        marked = marked and grade_volume(organ, entry["before_ml"] or 0.0, drawn.partial)[1] == "marked"
        if inside and not marked and all(organ_agreement(organ, finding, drawn).values()):
            continue
        label = _label_of(labels, organ)
        if finding.state == "absent":
            labels = labels.with_array(_fill_soft(labels.array, labels.array == ID[label]))
            entry["changed"] = True
        else:
            band = stated_volume_band(organ, finding)
            if band is None:
                entry["error"] = f"no normal volume range for the {organ}: its size is left to the network"
                continue
            if not entry["before_ml"]:
                entry["error"] = f"the sampled map has no {organ} to resize"
                continue
            target = band[0] + (band[1] - band[0]) * float(rng.uniform(0.25, 0.75))

            def whole(v: Volume, organ: str = organ) -> float:  # the graded volume counts hosted tumour
                return finding_volume(measure_labels(v).attributes.organs.get(organ)) or 0.0

            labels = _scale_to(labels, label, target, whole)
            entry["changed"] = True
        measured = measure_labels(labels).attributes.organs
    for organ, entry in record.items():
        entry["after_ml"] = finding_volume(measured.get(organ))
        fields = organ_agreement(organ, stated[organ], measured.get(organ))
        entry["holds"] = all(fields.values()) if fields else None  # None: no size criterion (hollow organs)
    if not any(entry["changed"] for entry in record.values()):
        return original, record
    meta = {k: v for k, v in labels.meta.items() if k != "augmentations"}
    return labels.with_array(labels.array, meta=meta), record


def _grow_disc(seed: tuple[int, int], free: np.ndarray, target: int, spacing: tuple[float, float]) -> np.ndarray:
    """A compact, 4-connected set of ``target`` ``free`` pixels grown from ``seed`` (fewer if hemmed in).

    Each step adds the free neighbour nearest the centre of what has grown so far; a fixed centre
    would grow a cross of one-pixel arms, which shape-based upsampling thins again.
    """
    disc = np.zeros(free.shape, bool)
    disc[seed] = True
    ii, jj = np.indices(free.shape)
    for _ in range(target - 1):
        frontier = ndimage.binary_dilation(disc) & free & ~disc
        if not frontier.any():
            break
        centre = np.array(ndimage.center_of_mass(disc))
        distance = np.hypot((ii - centre[0]) * spacing[0], (jj - centre[1]) * spacing[1])
        disc[np.unravel_index(int(np.argmin(np.where(frontier, distance, np.inf))), free.shape)] = True
    return disc


def _robust_line(z: np.ndarray, values: np.ndarray, weights: np.ndarray, max_slope: float) -> tuple[float, float]:
    """(slope, intercept) of ``values`` against ``z``: a Theil-Sen slope clipped to ±``max_slope``
    and the weighted median intercept.

    Robust to the network's stray specks: half of the points may lie anywhere without moving it.
    """
    if len(z) > 1:
        dz = z[None, :] - z[:, None]
        dv = values[None, :] - values[:, None]
        pairs = dz > 0
        slope = float(np.median(dv[pairs] / dz[pairs]))
    else:
        slope = 0.0
    slope = float(np.clip(slope, -max_slope, max_slope))
    residual = values - slope * z
    order = np.argsort(residual)
    cumulative = np.cumsum(weights[order])
    intercept = float(residual[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    return slope, intercept


def draw_aorta_tube(
    labels: Volume, rng: np.random.Generator, diameter_mm: tuple[float, float] = AORTA_DIAMETER_MM
) -> tuple[Volume, dict[str, Any]]:
    """Replace the aorta a network drew (scattered, thin) by one tube of normal calibre along it.

    The tube keeps what the network decides: the aorta's cranio-caudal extent (the 5th to 95th
    percentile of its voxels' slices, ending at most `AORTA_BELOW_KIDNEYS_MM` below the kidneys
    when the map has them) and its position (a straight course fitted robustly,
    `_robust_line`, to the in-plane centres of the drawn voxels slice by slice). It sets what the
    network does not draw: one straight piece (the abdominal aorta runs nearly parallel to the body
    axis: its course may drift at most `AORTA_MAX_DRIFT` mm per mm of height; the training map's
    drifts 0.22), with a diameter drawn uniformly in ``diameter_mm`` for the map. On each
    slice a disc of that area (`_grow_disc`) grows from the free voxel nearest the course (among
    those touching the disc below, where there are any: the tube stays one piece) into
    ``body`` voxels (background where the map has no body outline) and the network's own aorta
    voxels; organs, bone, other vessels and tumour are never taken, so a slice hemmed in by them
    stays narrower (and one with no free voxel within a diameter of the course has none). Aorta
    voxels the tube does not reuse go to the nearest fat or bowel (`_fill_soft`). An aorta that is
    already a vessel (90 % of it one piece, its median cross-section at least the band's smallest)
    is kept as drawn. ``labels`` is a map on the sampler's grid (RAS: the slice index grows upwards).

    Returns:
        (labels, record): record ``{"diameter_mm", "slices", "network_mm2", "tube_mm2", "moved_voxels"}``
        (median cross-sections per slice), ``{"kept", "network_mm2"}`` for a kept aorta, or
        ``{"error"}`` when the network drew no aorta (both return ``labels`` unchanged).
    """
    aorta = ID["aorta"]
    array = labels.array
    mask = array == aorta
    if mask.sum() < 3:
        return labels, {"error": "the network drew no aorta: nothing to follow"}
    diameter = float(rng.uniform(*diameter_mm))
    spacing = tuple(float(s) for s in labels.spacing)
    pixel_mm2 = spacing[0] * spacing[1]

    def median_mm2(m: np.ndarray) -> float:
        per = m.sum(axis=(0, 1))
        return round(float(np.median(per[per > 0])) * pixel_mm2, 1) if per.any() else 0.0

    network_mm2 = median_mm2(mask)
    pieces = np.bincount(ndimage.label(mask, structure=np.ones((3, 3, 3)))[0].ravel())[1:]
    if pieces.max() >= 0.9 * mask.sum() and network_mm2 >= np.pi * diameter_mm[0] ** 2 / 4.0:
        # Already a vessel (one piece, at least the band's calibre), as in a real map: keep it.
        return labels, {"kept": True, "network_mm2": network_mm2}
    target = max(1, int(round(np.pi * diameter**2 / 4.0 / pixel_mm2)))
    zs_voxels = np.nonzero(mask)[2]
    z_lo, z_hi = (int(round(q)) for q in np.percentile(zs_voxels, [5, 95]))
    kidneys = np.nonzero(np.isin(array, [ID["kidney_left"], ID["kidney_right"]]).any(axis=(0, 1)))[0]
    if len(kidneys):
        z_lo = max(z_lo, int(kidneys.min()) - int(round(AORTA_BELOW_KIDNEYS_MM / spacing[2])))
    nz = array.shape[2]
    counts = mask.sum(axis=(0, 1))
    present = counts > 0
    centres = np.zeros((nz, 2))
    for z in np.nonzero(present)[0]:
        centres[z] = ndimage.center_of_mass(mask[..., z])
    z_present = np.nonzero(present)[0].astype(float)
    course = np.zeros((nz, 2))
    for k in range(2):
        max_slope = AORTA_MAX_DRIFT * spacing[2] / spacing[k]  # voxels per slice
        slope, intercept = _robust_line(z_present, centres[present, k], counts[present].astype(float), max_slope)
        course[:, k] = intercept + slope * np.arange(nz)
    free_class = array == ID["body"] if np.any(array == ID["body"]) else array == ID["background"]
    out = array.copy()
    tube = np.zeros(array.shape, bool)
    ii, jj = np.indices(array.shape[:2])
    previous = None
    for z in range(z_lo, z_hi + 1):
        free = free_class[..., z] | mask[..., z]
        if not free.any():
            continue
        distance = np.hypot((ii - course[z, 0]) * spacing[0], (jj - course[z, 1]) * spacing[1])
        seed = np.unravel_index(int(np.argmin(np.where(free, distance, np.inf))), free.shape)
        if distance[seed] > diameter:  # no room near the course on this slice (inside an organ)
            previous = None
            continue
        # Seed where the disc touches the one below when it can (bone or an organ bulging onto the
        # course would otherwise push neighbouring discs apart and cut the tube), else as above.
        if previous is not None:
            touching = free & ndimage.binary_dilation(previous, structure=np.ones((3, 3), bool))
            near = np.unravel_index(int(np.argmin(np.where(touching, distance, np.inf))), free.shape)
            if touching.any() and distance[near] <= diameter:
                seed = near
        tube[..., z] = _grow_disc((int(seed[0]), int(seed[1])), free, target, spacing[:2])
        previous = tube[..., z]
    stray = mask & ~tube
    out[tube] = aorta
    out = _fill_soft(out, stray)
    record = {
        "diameter_mm": round(diameter, 1),
        "slices": int(tube.any(axis=(0, 1)).sum()),
        "network_mm2": network_mm2,
        "tube_mm2": median_mm2(tube),
        "moved_voxels": int(stray.sum()),
    }
    return labels.with_array(out), record
