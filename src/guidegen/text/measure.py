"""Measure a GuideGen label map into an `Attributes` record: organ volumes and size grades, tumours
(host organ, colon segment / liver lobe, longest diameter, count) and the field of view.

Public abdominal CT data sets have no reports, so GuideGen's training text is written from these
measurements (`guidegen.text.report`). Everything here works in world millimetres from the volume's
affine, so anisotropic voxels and any orientation are handled; position heuristics assume RAS+ world
coordinates as `guidegen.io.volume` defines them (+x towards the patient's right, +y anterior,
+z superior).

Unknown is never reported as absent: a class that was not annotated gives no organ finding (and,
for the tumour class, ``tumours=None``); an annotated organ with no voxels is ``state="absent"``
(removed, or outside the field of view); an organ that touches the edge of the volume (or voxels of
unknown class) is *partially imaged*: its volume is a lower bound, so it is never called small.

Kidney sides come from positions, not label names (`guidegen.text.sides`): when a map's
``kidney_right`` label lies at the patient's left of its ``kidney_left`` label, the findings and
tumour hosts of "right kidney" are those of the kidney lying on the patient's right, and
`Measurements.kidneys_swapped` says so. A kidney tumour is on the side of the midline it lies on
(where a midline can be found: the aorta, or the body outline), so a tumour in a "left kidney" drawn
on the patient's right is a right-sided renal tumour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from guidegen.errors import InputError
from guidegen.grids.geometry import longest_diameter_mm
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, ORGANS, UNKNOWN
from guidegen.text.attributes import Attributes, FieldOfView, OrganFinding, Severity, Tumour
from guidegen.text.sides import KIDNEYS, kidneys_swapped, midline_x, world_side


@dataclass(frozen=True)
class ReferenceRange:
    """Normal adult volume range of an organ and how far outside it each severity starts.

    Attributes:
        low_ml: below this the organ is small; ``None`` = never graded small.
        high_ml: above this the organ is enlarged.
        moderate_ratio: enlarged organs with ``volume / high_ml`` at or above this are "moderate".
        marked_ratio: … at or above this are "marked" (below ``moderate_ratio``: "mild").
    """

    low_ml: float | None
    high_ml: float
    moderate_ratio: float
    marked_ratio: float


#: Normal adult volumes, mL, for the solid organs (plus the gallbladder) that reports grade.
#: Volumes are of the segmented organ on CT and vary with body size, sex and age; these ranges
#: are deliberately generous so that only clear deviations are called.
#: Sources:
#: * liver: CT volumetry mean about 1,500 mL, rarely outside 1,000-2,300 mL in adults (Heymsfield
#:   et al., Ann Intern Med 1979;90:185; Urata et al., Hepatology 1995;21:1317 "standard liver
#:   volume" ≈ 706 × BSA + 2.4 mL, i.e. ~1,150-1,650 mL for BSA 1.6-2.3 m²).
#: * spleen: normal CT volume 107-314 mL, mean 215 mL (Prassopoulos et al., Eur Radiol
#:   1997;7:246); 350 mL is used as the upper limit, and ~550 mL is the volume often quoted for
#:   clear splenomegaly (Bezerra et al., AJR 2005;184:1510), hence "moderate" from 1.6 × 350 mL.
#: * kidneys: about 100-250 mL each (Emamian et al., AJR 1993;160:83, sonography, mean ~140 mL;
#:   Cheong et al., CJASN 2007;2:38, MRI, ~200 mL).
#: * pancreas: about 70 mL in mid-adult life, falling to ~50 mL in old age, SD ~20 mL (Saisho et
#:   al., Clin Anat 2007;20:933).
#: * gallbladder: fasting volume mostly 15-50 mL in ultrasound studies; a contracted gallbladder
#:   is physiological after a meal, so it is only graded when distended (> 100 mL, our convention).
#: Severity bands (ratios) are GuideGen's convention, not a published grading.
REFERENCE_RANGES: dict[str, ReferenceRange] = {
    "liver": ReferenceRange(1000.0, 2300.0, 1.3, 1.6),
    "spleen": ReferenceRange(70.0, 350.0, 1.6, 3.0),
    "kidney_right": ReferenceRange(100.0, 250.0, 1.3, 1.6),
    "kidney_left": ReferenceRange(100.0, 250.0, 1.3, 1.6),
    "pancreas": ReferenceRange(35.0, 120.0, 1.4, 2.0),
    "gallbladder": ReferenceRange(None, 100.0, 1.5, 2.5),
}
#: Small organs: ``volume / low_ml`` at or above the first value is "mild", above the second
#: "moderate", else "marked".
SMALL_MILD_RATIO, SMALL_MODERATE_RATIO = 0.75, 0.5

#: Tumours whose longest diameter is below this are ignored (segmentation specks; radiologists call
#: sub-5 mm lesions "too small to characterise"), mm.
MIN_TUMOUR_MM = 5.0
#: The host organ must make up at least this share of the voxels around a tumour, otherwise the host
#: is unknown (e.g. the true host was not annotated and another organ merely touches the tumour).
MIN_HOST_CONTACT = 0.10
#: Contact shell thickness around a tumour used to find its host, voxels.
HOST_SHELL_VOXELS = 2


@dataclass(frozen=True)
class Lesion:
    """One connected tumour component.

    Attributes:
        host: host organ name or ``None`` when unknown.
        segment: colon segment / liver lobe or ``None``.
        diameter_mm: longest diameter, mm.
        volume_ml: volume, mL.
        centroid_mm: centre of mass, world RAS+ mm.
        host_contact: share of the contact shell that is the host organ (0-1).
    """

    host: str | None
    segment: str | None
    diameter_mm: float
    volume_ml: float
    centroid_mm: tuple[float, float, float]
    host_contact: float


@dataclass(frozen=True)
class Measurements:
    """Everything `measure_labels` found.

    Attributes:
        attributes: the structured record (sex, age and phase are ``None``: a label map does not say).
        lesions: every tumour component kept (largest first); ``None`` when the tumour class was
            not annotated.
        annotated: the classes treated as annotated.
        partial_organs: organs that touch the volume's edge or voxels of unknown class.
        kidneys_swapped: the kidney labels lie on the opposite sides of the patient to their names
            (`guidegen.text.sides.kidneys_swapped`); the kidney findings and tumour hosts above
            already follow the world sides. Only judged when both kidneys are annotated.
    """

    attributes: Attributes
    lesions: tuple[Lesion, ...] | None
    annotated: frozenset[str]
    partial_organs: frozenset[str]
    kidneys_swapped: bool = False


def measure_labels(
    labels: Volume,
    annotated: Iterable[str] | None = None,
    min_tumour_mm: float = MIN_TUMOUR_MM,
    tumour_host: str | None = None,
) -> Measurements:
    """Measure organs, tumours and field of view in a GuideGen label map.

    Args:
        labels: label map in GuideGen vocabulary ids (`guidegen.labels.vocabulary`); any orientation.
        annotated: names of the classes that were annotated. ``None``: ``labels.meta["annotated"]``
            when present, otherwise every vocabulary class (a complete GuideGen label map).
        min_tumour_mm: tumour components with a shorter longest diameter are ignored, mm.
        tumour_host: host organ to assume for tumours whose host the map cannot show (its class
            not annotated, or too little contact), for data sets that define it (every MSD Colon
            tumour is a colon primary). ``None`` (default): such hosts stay unknown. A measured host
            always wins; the segment stays unknown without the host's own mask.

    Returns:
        `Measurements`; its ``attributes`` hold the organ findings (volumes in mL), the tumour groups
        (one `Tumour` per host organ and segment, with the count and the largest diameter in mm)
        and the field of view.

    Raises:
        InputError: ids outside the vocabulary (a map that still needs remapping), negative or
            non-integer ids, unknown names in ``annotated`` or a ``tumour_host`` that is not an organ.
    """
    source = labels.meta.get("source")
    if tumour_host is not None and tumour_host not in ORGANS:
        raise InputError(source, f"tumour_host {tumour_host!r} is not an organ; valid: {', '.join(ORGANS)}")
    array = np.asarray(labels.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise InputError(source, "label map has non-integer values")
        array = array.astype(np.int64)
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise InputError(source, "label map has negative ids")
    annotated_set = _annotated(annotated if annotated is not None else labels.meta.get("annotated"), source)
    counts = _class_counts(array)
    bad = [i for i in np.nonzero(counts)[0] if i >= len(NAMES) and i != UNKNOWN]
    if bad:
        raise InputError(
            source,
            f"label ids {', '.join(map(str, bad[:8]))} are not GuideGen classes (ids 0-{len(NAMES) - 1}, "
            f"{UNKNOWN} = unknown); remap the label map to the GuideGen vocabulary first",
        )
    voxel_ml = labels.voxel_volume_ml
    touching = _touching_edge(array, counts)
    bottom, top = _axial_faces(array, labels.affine)
    # Which kidney label is the patient's right one: by position, not by name.
    swapped = set(KIDNEYS) <= annotated_set and kidneys_swapped(labels, array)
    label_of = {"kidney_right": "kidney_left", "kidney_left": "kidney_right"} if swapped else {}

    tumour_id = ID["tumour"]
    lesions: tuple[Lesion, ...] | None = None
    tumours: tuple[Tumour, ...] | None = None
    if "tumour" in annotated_set:
        box = _bounding_box(array == tumour_id) if counts[tumour_id] else None
        lesion_list = _lesions(array, labels, annotated_set, box, min_tumour_mm)
        if swapped:
            lesion_list = [replace(les, host=label_of.get(les.host or "", les.host)) for les in lesion_list]
        if tumour_host is not None:
            lesion_list = [les if les.host is not None else replace(les, host=tumour_host) for les in lesion_list]
        hosted_ml: dict[str, float] = {}  # tumour volume counted into the organ label that holds it
        for lesion in lesion_list:
            if lesion.host is not None:
                hosted_ml[lesion.host] = hosted_ml.get(lesion.host, 0.0) + lesion.volume_ml
        lesion_list = _kidney_tumour_sides(lesion_list, labels, array)
        lesions = tuple(sorted(lesion_list, key=lambda les: -les.diameter_mm))
        tumours = _group(lesions)
    else:
        hosted_ml = {}

    organs: dict[str, OrganFinding] = {}
    partial: set[str] = set()
    for name in ORGANS:
        if name not in annotated_set:
            continue  # unknown, not absent
        class_index = ID[label_of.get(name, name)]
        if counts[class_index] == 0:
            organs[name] = OrganFinding(state="absent", volume_ml=0.0, partial=False)
            continue
        # Tumour voxels replace organ voxels in the label map; the organ's size includes them.
        volume = float(counts[class_index]) * voxel_ml + hosted_ml.get(name, 0.0)
        is_partial = class_index in touching
        if is_partial:
            partial.add(name)
        state, severity = grade_volume(name, volume, is_partial)
        organs[name] = OrganFinding(state=state, severity=severity, volume_ml=round(volume, 1), partial=is_partial)

    fov = _field_of_view(annotated_set, counts, bottom, top)
    attributes = Attributes(tumours=tumours, organs=organs, field_of_view=fov)
    return Measurements(
        attributes=attributes,
        lesions=lesions,
        annotated=frozenset(annotated_set),
        partial_organs=frozenset(partial),
        kidneys_swapped=swapped,
    )


def _kidney_tumour_sides(lesions: list[Lesion], labels: Volume, array: np.ndarray) -> list[Lesion]:
    """A kidney tumour's side is the side of the midline it lies on (`guidegen.text.sides`), when that
    can be told: a "left kidney" drawn right of the midline hosts a right-sided renal tumour."""
    if not any(les.host in KIDNEYS for les in lesions):
        return lesions
    midline = midline_x(labels, array)
    out = []
    for les in lesions:
        side = world_side(les.centroid_mm[0], midline) if les.host in KIDNEYS else None
        out.append(replace(les, host=f"kidney_{side}") if side is not None else les)
    return out


def grade_volume(organ: str, volume_ml: float, partial: bool = False) -> tuple[str | None, Severity | None]:
    """Size grade of an organ from its volume.

    Args:
        organ: vocabulary organ name.
        volume_ml: measured volume, mL (a lower bound when ``partial``).
        partial: the organ is partially imaged: it can still be proven enlarged, but not small or
            normal (the unseen part could be of any size).

    Returns:
        ``(state, severity)``: state ``"enlarged"``, ``"normal"``, ``"small"`` or ``None`` (organ not
        graded: hollow organs, whose volume depends on filling, or partial views), severity
        ``"mild"``/``"moderate"``/``"marked"`` or ``None``.
    """
    ref = REFERENCE_RANGES.get(organ)
    if ref is None:
        return None, None
    if volume_ml > ref.high_ml:
        ratio = volume_ml / ref.high_ml
        severity: Severity = (
            "mild" if ratio < ref.moderate_ratio else "moderate" if ratio < ref.marked_ratio else "marked"
        )
        return "enlarged", severity
    if partial:
        return None, None
    if ref.low_ml is not None and volume_ml < ref.low_ml:
        ratio = volume_ml / ref.low_ml
        severity = "mild" if ratio >= SMALL_MILD_RATIO else "moderate" if ratio >= SMALL_MODERATE_RATIO else "marked"
        return "small", severity
    return "normal", None


# --------------------------------------------------------------------------------------------------
# Helpers


def _annotated(annotated: Iterable[str] | None, source: str | None) -> set[str]:
    if annotated is None:
        return set(NAMES[1:])
    if isinstance(annotated, str):
        annotated = [annotated]  # a single name, not its characters
    names = {str(a) for a in annotated}
    unknown = sorted(names - set(NAMES))
    if unknown:
        raise InputError(source, f"unknown annotated class(es) {', '.join(unknown)}; valid: {', '.join(NAMES)}")
    return names - {"background"}


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel (mask must not be empty)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _class_counts(array: np.ndarray) -> np.ndarray:
    """Voxel count per id (length ≥ 256)."""
    # order="K": nibabel arrays are Fortran-ordered, so this is a view, not a copy. Chunks of
    # explicitly cast ids keep memory bounded and are ~3x faster than bincount on uint8 directly.
    flat = array.ravel(order="K")
    counts = np.zeros(UNKNOWN + 1, dtype=np.int64)
    step = 1 << 22
    for start in range(0, flat.size, step):
        part = np.bincount(flat[start : start + step].astype(np.intp), minlength=UNKNOWN + 1)
        if len(part) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(part) - len(counts), dtype=np.int64)])
        counts[: len(part)] += part
    return counts


def _touching_edge(array: np.ndarray, counts: np.ndarray) -> set[int]:
    """Ids that touch any face of the volume or a voxel of unknown class (partially imaged)."""
    faces = (array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1])
    ids: set[int] = set()
    for face in faces:
        ids.update(int(i) for i in np.unique(face))
    if counts[UNKNOWN]:
        # The unknown region could hide more of any organ next to it.
        near_unknown = ndimage.binary_dilation(array == UNKNOWN)
        ids.update(int(i) for i in np.unique(array[near_unknown]))
    ids.discard(0)
    ids.discard(UNKNOWN)
    return ids


def _axial_faces(array: np.ndarray, affine: np.ndarray) -> tuple[set[int], set[int]]:
    """Ids on the most inferior and the most superior slab of the volume (any orientation)."""
    # The array axis most aligned with world z (superior) and whether its index grows upwards.
    axis = int(np.argmax(np.abs(affine[2, :3])))
    upwards = affine[2, axis] > 0
    first_index: list[int | slice] = [slice(None)] * 3
    last_index: list[int | slice] = [slice(None)] * 3
    first_index[axis], last_index[axis] = 0, -1
    first = set(int(i) for i in np.unique(array[tuple(first_index)]))
    last = set(int(i) for i in np.unique(array[tuple(last_index)]))
    bottom, top = (first, last) if upwards else (last, first)
    return bottom, top


def _field_of_view(annotated: set[str], counts: np.ndarray, bottom: set[int], top: set[int]) -> FieldOfView | None:
    """Body region covered, from which landmark organs are present and whether they are cut.

    Landmarks: liver/spleen (upper abdomen), kidneys (their lower poles mark the lower abdomen),
    urinary bladder (pelvis). Returns ``None`` when the landmarks needed were not annotated.
    """

    def present(name: str) -> bool:
        return name in annotated and counts[ID[name]] > 0

    def cut_both(name: str) -> bool:
        return present(name) and ID[name] in bottom and ID[name] in top

    upper_known = "liver" in annotated or "spleen" in annotated
    pelvis_known = "urinary_bladder" in annotated
    upper = present("liver") or present("spleen")
    pelvis = present("urinary_bladder")
    # A scan that cuts through the liver (or, without a liver, the spleen) at both ends is a slab.
    slab = cut_both("liver") or (not present("liver") and cut_both("spleen"))
    if slab and not pelvis:
        return "partial"
    if not (upper_known and pelvis_known):
        return None
    if upper and pelvis:
        return "abdomen_pelvis"
    if pelvis:
        return "pelvis"
    if upper:
        kidneys = [k for k in ("kidney_right", "kidney_left") if k in annotated]
        if len(kidneys) < 2:
            return "abdomen"  # cannot tell where the scan stops below the liver
        seen = [k for k in kidneys if present(k)]
        if seen and not any(ID[k] in bottom for k in seen):
            return "abdomen"
        return "upper_abdomen"
    if any(present(n) for n in ORGANS):
        return "partial"  # a mid-abdominal slab with neither upper-abdominal organs nor the bladder
    return None


def _lesions(
    array: np.ndarray, labels: Volume, annotated: set[str], box: tuple[slice, ...] | None, min_tumour_mm: float
) -> list[Lesion]:
    if box is None:
        return []
    tumour_id = ID["tumour"]
    margin = HOST_SHELL_VOXELS + 1
    # Work in the tumour class's bounding box (plus a margin for the host shell), not the volume.
    outer = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, array.shape))
    crop = array[outer]
    offset = np.array([s.start for s in outer])
    components, n = ndimage.label(crop == tumour_id, structure=np.ones((3, 3, 3), dtype=bool))
    host_ids = np.array([ID[o] for o in ORGANS if o in annotated], dtype=np.int64)
    colon = _ColonFrame.build(array, labels) if "colon" in annotated else None
    liver = _LiverFrame.build(array, labels) if "liver" in annotated else None
    voxel_ml = labels.voxel_volume_ml
    found: list[Lesion] = []
    for index, sub in enumerate(ndimage.find_objects(components), start=1):
        if sub is None:
            continue
        local = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(sub, crop.shape))
        mask = components[local] == index
        corner = offset + np.array([s.start for s in local])
        points = np.argwhere(mask) + corner
        # The farthest pair lies on the surface: interior voxels only slow the hull down.
        surface = mask & ~ndimage.binary_erosion(mask)
        diameter = longest_diameter_mm(np.argwhere(surface) + corner, labels.affine)
        if diameter < min_tumour_mm:
            continue
        shell = ndimage.binary_dilation(mask, iterations=HOST_SHELL_VOXELS, structure=np.ones((3, 3, 3), bool)) & ~mask
        neighbours = crop[local][shell].astype(np.int64)
        host, contact = None, 0.0
        if neighbours.size and host_ids.size:
            tally = np.bincount(neighbours, minlength=UNKNOWN + 1)[host_ids]
            best = int(np.argmax(tally))
            contact = float(tally[best]) / neighbours.size
            if tally[best] > 0 and contact >= MIN_HOST_CONTACT:
                host = NAMES[int(host_ids[best])]
        centroid = labels.world_coordinates(points.mean(axis=0))
        segment = None
        if host == "colon" and colon is not None:
            segment = colon.segment(centroid)
        elif host == "liver" and liver is not None:
            segment = liver.lobe(centroid)
        found.append(
            Lesion(
                host=host,
                segment=segment,
                diameter_mm=round(diameter, 1),
                volume_ml=round(len(points) * voxel_ml, 3),
                centroid_mm=tuple(round(float(c), 1) for c in centroid),  # type: ignore[arg-type]
                host_contact=round(contact, 3),
            )
        )
    return found


def _group(lesions: tuple[Lesion, ...]) -> tuple[Tumour, ...]:
    """One `Tumour` per (host, segment): the count and the largest diameter; largest group first."""
    groups: dict[tuple[str | None, str | None], list[Lesion]] = {}
    for lesion in lesions:
        groups.setdefault((lesion.host, lesion.segment), []).append(lesion)
    tumours = [
        Tumour(organ=host, segment=segment, diameter_mm=max(les.diameter_mm for les in group), count=len(group))
        for (host, segment), group in groups.items()
    ]
    return tuple(sorted(tumours, key=lambda t: -(t.diameter_mm or 0.0)))


class _ColonFrame:
    """Colon geometry used to name the segment a colon tumour lies in.

    Heuristic, in world RAS+ mm, normalised to the colon's own extent (robust 1st-99th percentiles):
    ``u`` = left-right position, -1 at the colon's leftmost point, +1 at its rightmost (patient's
    right), 0 at the midpoint (≈ midline, since the colon frames the abdomen); heights are world z.

    * The *right column* (u > 1/3) is the caecum and ascending colon: its lowest point (2nd
      percentile) is the caecal pole, which sits at the pelvic inlet and serves as the "pelvic
      level"; its highest point (98th percentile) is the hepatic flexure. The lowest quarter of the
      right column's height is the caecum.
    * Below the pelvic level: central (|u| < 0.4) and in the lower half of the pelvic colon →
      rectum; otherwise sigmoid (a right-sided pelvic position → caecum).
    * Above the pelvic level: right → caecum / ascending as above; left (u < -1/3) → descending,
      except below the caecum-top level (left iliac fossa) → sigmoid; central → transverse, except
      below the caecum-top level → sigmoid (a sigmoid loop reaching the midline).
    * A colon spanning less than 100 mm left-right or 80 mm in height (a slab or a crop) gives no
      segment: there is not enough of the frame to tell.

    Hepatic/splenic flexure tumours fall in ascending/transverse/descending depending on the side;
    a pelvic-low transverse colon or an abdominal sigmoid loop is misnamed (known limitation).
    """

    LATERAL = 1.0 / 3.0
    CENTRAL = 0.4

    def __init__(self, x_mid: float, half_width: float, z_low: float, pelvic: float, caecum_top: float):
        self.x_mid, self.half_width = x_mid, half_width
        self.z_low, self.pelvic, self.caecum_top = z_low, pelvic, caecum_top

    @classmethod
    def build(cls, array: np.ndarray, labels: Volume) -> _ColonFrame | None:
        index = np.argwhere(array == ID["colon"])
        if len(index) < 20:
            return None
        if len(index) > 200_000:  # percentiles need no more; keeps big masks fast
            index = index[np.random.default_rng(0).choice(len(index), 200_000, replace=False)]
        world = labels.world_coordinates(index)
        x, z = world[:, 0], world[:, 2]
        x_lo, x_hi = np.percentile(x, [1, 99])
        z_lo, z_hi = np.percentile(z, [1, 99])
        if x_hi - x_lo < 100.0 or z_hi - z_lo < 80.0:
            return None
        x_mid, half = (x_lo + x_hi) / 2, (x_hi - x_lo) / 2
        right = z[(x - x_mid) / half > cls.LATERAL]
        if len(right) >= 20:
            rz0, rz1 = np.percentile(right, [2, 98])
        else:  # no right colon in view: rough proportions of a typical colon frame
            rz0, rz1 = z_lo + 0.35 * (z_hi - z_lo), z_hi
        return cls(float(x_mid), float(half), float(z_lo), float(rz0), float(rz0 + 0.25 * (rz1 - rz0)))

    def segment(self, centroid: np.ndarray) -> str:
        u = (float(centroid[0]) - self.x_mid) / self.half_width
        z = float(centroid[2])
        if z < self.pelvic:
            if abs(u) < self.CENTRAL and z < self.z_low + 0.5 * (self.pelvic - self.z_low):
                return "rectum"
            return "caecum" if u > self.LATERAL else "sigmoid"
        if u > self.LATERAL:
            return "caecum" if z < self.caecum_top else "ascending"
        if z < self.caecum_top:
            return "sigmoid"
        return "descending" if u < -self.LATERAL else "transverse"


class _LiverFrame:
    """Liver lobe of a point from its left-right position within the liver.

    The left lobe (Couinaud II-IV) holds roughly a third of the liver volume and lies to the
    patient's left of Cantlie's line, so a point left of the 30th percentile of the liver's x is
    called "left lobe" and one right of the 45th percentile "right lobe"; in between (near the
    oblique Cantlie plane, where a vertical cut is unreliable) the lobe is not stated. A liver cut
    by the volume's left or right edge gives no lobe (its left-right percentiles would be biased);
    one cut at the dome, the lower tip or front/back, as abdominal scans and the sampler's maps
    often cut it, keeps them: readers name the lobes of such livers, and the percentiles along x
    barely move when a slab above or below is missing.
    """

    def __init__(self, left_of: float, right_of: float):
        self.left_of, self.right_of = left_of, right_of

    @classmethod
    def build(cls, array: np.ndarray, labels: Volume) -> _LiverFrame | None:
        liver = array == ID["liver"]
        if liver.sum() < 20:
            return None
        # Liver on a face crossed by the left-right axis: the liver is cut there and its x
        # percentiles are biased.
        axis = int(np.argmax(np.abs(labels.affine[0, :3])))
        if np.take(liver, 0, axis=axis).any() or np.take(liver, -1, axis=axis).any():
            return None
        index = np.argwhere(liver)
        if len(index) > 200_000:
            index = index[np.random.default_rng(0).choice(len(index), 200_000, replace=False)]
        x = labels.world_coordinates(index)[:, 0]
        q30, q45 = np.percentile(x, [30, 45])
        return cls(float(q30), float(q45))

    def lobe(self, centroid: np.ndarray) -> str | None:
        x = float(centroid[0])
        if x < self.left_of:
            return "left lobe"
        if x > self.right_of:
            return "right lobe"
        return None


def colon_segment_of(labels: Volume, points_mm: np.ndarray) -> list[str | None]:
    """The colon segment (`COLON_SEGMENTS`) that each world point (N, 3) RAS+ mm lies in.

    Uses the same colon frame as the reports (see `_ColonFrame`), so a tumour placed where this
    says "sigmoid" is reported as sigmoid. All ``None`` when the map has too little colon to tell.
    """
    frame = _ColonFrame.build(labels.array, labels)
    points_mm = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
    if frame is None:
        return [None] * len(points_mm)
    return [frame.segment(p) for p in points_mm]


def liver_lobe_of(labels: Volume, points_mm: np.ndarray) -> list[str | None]:
    """The liver lobe (``"left lobe"`` / ``"right lobe"``) that each world point (N, 3) lies in.

    Uses the same liver frame as the reports (see `_LiverFrame`), so a tumour centred where this
    says "right lobe" is reported in the right lobe. ``None`` near Cantlie's line, and everywhere
    when the liver is missing or cut by the volume's left or right edge.
    """
    frame = _LiverFrame.build(labels.array, labels)
    points_mm = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
    if frame is None:
        return [None] * len(points_mm)
    return [frame.lobe(p) for p in points_mm]
