"""Tumour and unenhanced-aorta HU for bring-your-own-mask CT: levels the network does not learn.

Why the network gets these wrong (diagnosed for issue 28; ``docs/results/byom_native.txt``):

* **Tumours.** The only real tumour CT the shipped image generator trained on is one LiTS liver
  (``lits-117-crop``, portal venous: tumour 62 HU, liver 122 HU inside the masks eroded by 3 mm).
  Its phase remap (`guidegen.images.train`, ``p_phase_remap``) re-renders a training slice in
  another phase by moving the structures of `guidegen.data.phase.TYPICAL_HU` (aorta, IVC, liver,
  spleen, kidneys) to that phase's typical level and leaves everything else, tumour included, at
  the scan's own HU; the per-pixel phase prior has no tumour entry either. So the network never
  saw a tumour in any phase but one, and draws every liver tumour at about the same level in every
  contrast phase (~50 HU on the held-out map, 20–40 HU below its own liver).
* **Unenhanced aorta.** The non-contrast training aortas are mostly contrast-enhanced aortas
  remapped to ~40 HU by a constant shift; the enhanced aorta's partial-volume rim (hundreds of HU
  above the fat around it) then becomes a rim far darker than fat-blood partial volume, and the
  network, whose structure-level loss sees the whole aorta's mean, draws a dark rim around a
  core that is too bright (57–73 HU where unenhanced blood is 30–50 HU).

Retraining would fix both at the source, and would change what `guidegen generate` draws; here
the CT that `generate_ct` returns on the user's grid is corrected, and only there:

* each tumour (a connected component) whose host organ is liver or colon is shifted as a whole
  (its own inner pattern kept) so that its interior mean is `tumour_hu` (host, phase): an
  enhancement model ``U + f · E(phase)``. U, the unenhanced attenuation of colorectal carcinoma,
  is 42.6 HU (Oto et al., Eur Radiol 2003;13:1657–1663; 21 carcinomas, 90.7 HU after contrast);
  for liver tumours E is the liver's enhancement over its unenhanced level (`TYPICAL_HU`) and f
  the fraction of it the real LiTS tumour shows: (61.7 − 42.6) / (121.9 − 55) = 0.29; for colon
  tumours f·E(portal venous) is Oto's 48 HU, other phases in proportion to the liver's curve (an
  assumption: no bundled colon CT). Other hosts have no data here: their tumours keep the
  network's level unless it is below `SOLID_TUMOUR_FLOOR_HU` (soft tissue), where they are raised to it.
* the aorta of an unenhanced CT is flattened to `UNENHANCED_AORTA_HU` (the mean of the bundled
  real unenhanced aortas not used for evaluation, TotalSegmentator ``totalseg-example-a`` 43.4 HU
  and dataset subject s0009 37.8 HU): its voxels take that level plus their own fine detail
  (the CT minus its 1 mm in-plane average over the aorta). Blood is homogeneous; the network's
  rim-to-core profile spans the whole vessel (a dark rim, a core 50+ HU brighter), so anything
  coarser than the grain is the artefact, and it is removed, not shifted.

* the portal vein takes its phase's typical level (`guidegen.data.phase.VESSEL_TYPICAL_HU`) the
  same way: the shipped generator never saw it enhance and draws it at about 70-80 HU in every phase;
* muscle that a model without a muscle class drew as body takes `MUSCLE_HU` the same way.
* **bone** takes the HU of real bone at the same depth below its surface (`BONE_PROFILES`) plus
  its own fine detail. Real bone is a bright cortex (280-480 HU in the outer 3 mm) around darker
  marrow (100-330 HU deeper in); the network, trained on mean squared error in model units
  (`guidegen.images.hu`: above 300 HU a unit spans four times the HU of soft tissue), blurs the two
  into one smooth level of 150-190 HU (docs/results/bone_profile.txt).
* liver, spleen, kidneys and (in the unenhanced phase) the pancreas whose level is outside the
  published range for the phase (`guidegen.data.phase.PUBLISHED_RANGE_HU`) are shifted, each as a
  whole, just inside it; organs in range keep the network's level. The shipped generator draws some
  organs out of range (on real maps an unenhanced spleen at 7-37 HU and pancreas at 59-79 HU, on the
  held-out map a portal-venous spleen at 147 HU: docs/results/organ_ranges.txt, phase_check.txt),
  and no organ's level outside that range is right for a scan of that phase. The IVC of an
  unenhanced CT takes unenhanced blood's level, as the aorta (the network drew it 7-20 HU brighter).

These levels then come from data and literature, not from the network; the benchmark reports the
network's own levels next to them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from guidegen.data.body import BODY_THRESHOLD_HU
from guidegen.data.phase import PHASES, PUBLISHED_RANGE_HU, TYPICAL_HU, VESSEL_TYPICAL_HU, estimate_phase
from guidegen.images.grain import FINE_TREND_MM, detrend, inplane_distance, interior, slice_axis, to_slices_last
from guidegen.io.volume import HU_MAX, HU_MIN
from guidegen.labels.vocabulary import ID, NAMES, UNKNOWN

__all__ = [
    "BONE_PROFILES",
    "RANGE_INSET_HU",
    "RANGE_ORGANS",
    "SOLID_TUMOUR_FLOOR_HU",
    "UNENHANCED_AORTA_HU",
    "bone_depth",
    "bone_profile_hu",
    "calibrate_levels",
    "relative_tumour_hu",
    "scan_phase",
    "set_bone_profile",
    "tumour_host",
    "tumour_hu",
    "tumour_level",
]

#: Unenhanced colorectal carcinoma (HU) and its enhancement after contrast (Oto et al. 2003).
CARCINOMA_UNENHANCED_HU = 42.6
COLON_CARCINOMA_ENHANCEMENT_HU = 90.7 - 42.6
#: Fraction of the liver's enhancement a liver tumour shows (real LiTS 117, portal venous, interiors).
LITS_TUMOUR_HU, LITS_LIVER_HU = 61.7, 121.9
LIVER_TUMOUR_FRACTION = (LITS_TUMOUR_HU - CARCINOMA_UNENHANCED_HU) / (
    LITS_LIVER_HU - TYPICAL_HU["non_contrast"]["liver"]
)
#: Unenhanced blood (HU): bundled real unenhanced aortas (totalseg-example-a 43.4, s0009 37.8).
UNENHANCED_AORTA_HU = (43.4 + 37.8) / 2
#: Skeletal muscle as TotalSegmentator labels it (psoas, back and gluteal muscles, intramuscular fat
#: included), HU 3 mm inside the mask: the bundled real scans s0009 23.0 and totalseg-example-a 23.8
#: (non-contrast), totalseg-example-b 26.5 (portal venous). Muscle barely enhances (3 HU here, less
#: than between patients), so one level for every phase. Set only where a model without a muscle
#: class drew it as "body" (`guidegen.labels.vocabulary.DRAWN_AS` has no look-alike for it), which
#: came out at −110 to −140 HU (docs/results/drawn_as.txt). Teaching values for pure muscle are
#: higher (35–60 HU); these masks, in older patients, are what the bundled data measure.
MUSCLE_HU = (23.0 + 23.8 + 26.5) / 3
#: Real bone's mean HU by in-plane depth of the voxel centre below the bone's surface (`bone_depth`),
#: on grids of two in-plane voxel sizes: (voxel size mm, depths mm, HU). On a coarser grid a border
#: voxel averages more of the thin bright cortex with the tissue outside and the marrow inside, so
#: the profile depends on the grid; `set_bone_profile` interpolates between the two by voxel size.
#: Pooled with equal weight from the bundled real CTs with labelled bone (TotalSegmentator s0009,
#: totalseg-example-a (3 mm only) and -b), each resampled to the grid (`benchmarks/bone_profile.py
#: --fit`, which also checks the profile on each scan left out of it). Bone barely enhances (marrow by
#: 10-20 HU), so one profile for every phase; it varies far more between patients (age: the
#: 85-year-old's marrow is 100 HU darker than the others').
BONE_PROFILES: tuple[tuple[float, tuple[float, ...], tuple[float, ...]], ...] = (
    (1.5, (0.75, 1.37, 2.37, 3.72, 5.23, 7.1, 9.66, 14.06), (333.1, 437.3, 384.1, 341.6, 237.1, 125.5, 123.4, 149.8)),
    (3.0, (1.5, 2.74, 4.76, 7.38, 10.37, 14.93), (306.0, 344.3, 253.6, 145.9, 145.0, 209.3)),
)
#: Organs whose level `calibrate_levels` keeps inside the phase's published range, and the range's key
#: in `guidegen.data.phase.PUBLISHED_RANGE_HU`.
RANGE_ORGANS = {
    "liver": "liver",
    "spleen": "spleen",
    "kidney_left": "kidneys",
    "kidney_right": "kidneys",
    "pancreas": "pancreas",
}
#: How far inside its range (HU) an organ outside it is put: the range's bound would leave the organ's
#: mean at the bound's mercy of how its interior is measured.
RANGE_INSET_HU = 3.0
#: Hosts with a tumour level.
TUMOUR_HOSTS = ("liver", "colon")
#: Lowest interior mean (HU) of a tumour in a host without a level: a solid tumour is soft tissue,
#: and contrast only raises its attenuation, so it is not drawn below the unenhanced carcinoma level
#: (the network drew kidney, pancreas and stomach tumours at −70 to +4 HU, fat or water).
SOLID_TUMOUR_FLOOR_HU = CARCINOMA_UNENHANCED_HU
#: Interior depth (mm) of a tumour whose mean is set; smaller lesions use all their voxels.
TUMOUR_DEPTH_MM = 2.0


def tumour_level(hu: np.ndarray, component: np.ndarray, spacing) -> float:
    """A tumour's level: its mean HU `TUMOUR_DEPTH_MM` inside its border (all its voxels when fewer
    than 20 lie that deep: a small lesion)."""
    inner = interior(component, spacing, TUMOUR_DEPTH_MM)
    return float(hu[inner if inner.sum() >= 20 else component].mean())


def _liver_enhancement(phase: str) -> float:
    return TYPICAL_HU[phase]["liver"] - TYPICAL_HU["non_contrast"]["liver"]


def tumour_hu(host: str, phase: str) -> float:
    """Target interior mean (HU) of a tumour in ``host`` ("liver" or "colon") in ``phase``."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if host == "liver":
        return CARCINOMA_UNENHANCED_HU + LIVER_TUMOUR_FRACTION * _liver_enhancement(phase)
    if host == "colon":
        share = _liver_enhancement(phase) / _liver_enhancement("portal_venous")
        return CARCINOMA_UNENHANCED_HU + COLON_CARCINOMA_ENHANCEMENT_HU * share
    raise ValueError(f"no tumour level for host {host!r}; hosts: {', '.join(TUMOUR_HOSTS)}")


def relative_tumour_hu(host: str, phase: str, host_hu: float | None = None) -> float | None:
    """Target interior mean (HU) of a new tumour in a *real* scan's ``host`` organ, or ``None`` without data.

    Used when editing a real CT (`guidegen.images.inpaint`). A liver tumour follows the scan's own
    liver: ``U + f·(host_hu − unenhanced liver)``, the enhancement model of `tumour_hu` with the
    measured liver level in place of the phase's typical one (so a scan whose liver enhances less
    than typical gets a tumour that enhances less too; the real LiTS tumour gives back its own
    61.7 HU from its liver's 121.9 HU). A colon tumour uses `tumour_hu` (no colon wall level can be
    measured on the labels). Other hosts: ``None`` (no real tumour CT of theirs bundled).
    """
    if host not in TUMOUR_HOSTS or phase not in PHASES:
        return None
    if host == "liver" and host_hu is not None:
        return float(CARCINOMA_UNENHANCED_HU + LIVER_TUMOUR_FRACTION * (host_hu - TYPICAL_HU["non_contrast"]["liver"]))
    return tumour_hu(host, phase)


def scan_phase(hu: np.ndarray, labels: np.ndarray) -> str | None:
    """The contrast phase of a real CT estimated from its labelled structures' mean HU
    (`guidegen.data.phase.estimate_phase`), or ``None`` when that cannot tell."""
    return _phase_of(hu, labels)


def tumour_host(labels: np.ndarray, component: np.ndarray) -> str | None:
    """The labelled class that borders a tumour component most (one voxel around it), ignoring
    background, body, unknown and tumour; ``None`` when it touches none."""
    ring = ndimage.binary_dilation(component) & ~component
    ids = labels[ring]
    ids = ids[(ids != 0) & (ids != UNKNOWN) & (ids != ID["body"]) & (ids != ID["tumour"])]
    if ids.size == 0:
        return None
    values, counts = np.unique(ids, return_counts=True)
    return NAMES[int(values[np.argmax(counts)])]


def _phase_of(hu: np.ndarray, labels: np.ndarray) -> str | None:
    means, counts = {}, {}
    for name in (
        "aorta",
        "inferior_vena_cava",
        "portal_vein",
        "liver",
        "spleen",
        "kidney_left",
        "kidney_right",
        "urinary_bladder",
    ):
        mask = labels == ID[name]
        counts[name] = int(mask.sum())
        if counts[name]:
            means[name] = float(hu[mask].mean())
    return estimate_phase(means, counts).phase


def calibrate_levels(
    hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, phase: str | None, muscle: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """Set tumour, unenhanced-aorta and -IVC, portal-vein and bone levels and keep liver, spleen,
    kidneys and an unenhanced pancreas in their phase's range (module docstring) in a CT on its
    label map's grid, and set the level of muscle a model drew as body.

    Args:
        hu: (X, Y, Z) HU (float), any axis order.
        labels: (X, Y, Z) GuideGen ids on the same grid.
        affine: the grid's affine (voxel sizes, slice axis).
        phase: the requested contrast phase; ``None``: estimated from the CT
            (`guidegen.data.phase.estimate_phase`), nothing done if that cannot tell.
        muscle: (X, Y, Z) bool, muscle the model drew as body (its voxels take `MUSCLE_HU` plus
            their own fine detail, in every phase); ``None``: none.

    Returns:
        (float32 HU, a JSON-able record: phase used, each tumour's host and levels, the aorta's,
        the portal vein's, the muscle's, the bone's, and the organs moved into range).
    """
    axis = slice_axis(affine)
    spacing_all = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    out, spacing = to_slices_last(np.array(hu, dtype=np.float32), spacing_all, axis)
    lab, _ = to_slices_last(np.asarray(labels), spacing_all, axis)
    used = phase if phase is not None else _phase_of(out, lab)
    record: dict = {
        "phase": used,
        "phase_estimated": phase is None,
        "tumours": [],
        "aorta": None,
        "inferior_vena_cava": None,
        "portal_vein": None,
        "muscle": None,
        "bone": None,
        "organs": {},
    }
    if muscle is not None and muscle.any():
        drawn, _ = to_slices_last(np.asarray(muscle, dtype=bool), spacing_all, axis)
        record["muscle"] = _set_level(out, drawn, spacing, MUSCLE_HU)
    bone = lab == ID["bone"]
    if bone.any():
        record["bone"] = set_bone_profile(out, bone, spacing)
    if used is None:
        record["skipped"] = "contrast phase unknown"
        return np.moveaxis(out, -1, axis), record
    # Face-, edge- and corner-neighbours, as the report counts tumours (guidegen.text.measure): a
    # voxel touching the tumour only at an edge is part of it, not a tumour of its own.
    components, n = ndimage.label(lab == ID["tumour"], structure=np.ones((3, 3, 3), bool))
    for index in range(1, n + 1):
        comp = components == index
        host = tumour_host(lab, comp)
        entry: dict = {"voxels": int(comp.sum()), "host": host}
        before = tumour_level(out, comp, spacing)
        if host in TUMOUR_HOSTS:
            target = tumour_hu(host, used)
            out[comp] += target - before
            entry.update(before_hu=round(before, 1), target_hu=round(target, 1))
        elif before < SOLID_TUMOUR_FLOOR_HU:
            out[comp] += SOLID_TUMOUR_FLOOR_HU - before
            entry.update(
                before_hu=round(before, 1), target_hu=round(SOLID_TUMOUR_FLOOR_HU, 1), rule="soft-tissue floor"
            )
        else:
            entry.update(before_hu=round(before, 1), left="no tumour level for this host; above the soft-tissue floor")
        record["tumours"].append(entry)
    aorta = lab == ID["aorta"]
    if used == "non_contrast" and aorta.any():
        record["aorta"] = _set_level(out, aorta, spacing, UNENHANCED_AORTA_HU)
    ivc = lab == ID["inferior_vena_cava"]
    if used == "non_contrast" and ivc.any():
        # Unenhanced blood is the same in every vessel; the network draws the IVC 7-20 HU brighter
        # than real ones (docs/results/organ_ranges.txt).
        record["inferior_vena_cava"] = _set_level(out, ivc, spacing, UNENHANCED_AORTA_HU)
    record["organs"] = _keep_in_range(out, lab, spacing, used)
    portal = lab == ID["portal_vein"]
    if portal.any():
        # The shipped generator never saw a portal vein enhance (the phase remap of its training
        # did not move it) and draws it at 68-83 HU in every phase (docs/results/drawn_as.txt):
        # blood, so the phase's typical level, as the aorta's.
        record["portal_vein"] = _set_level(out, portal, spacing, VESSEL_TYPICAL_HU[used]["portal_vein"])
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return np.moveaxis(out, -1, axis), record


def bone_depth(mask: np.ndarray, spacing) -> np.ndarray:
    """In-plane depth (mm) of each voxel centre of ``mask`` (X, Y, Z; slices last) below the mask's
    border in its slice: the distance to the nearest voxel outside, less half the smaller in-plane
    voxel size (the border lies between the two centres), so a border voxel of a 1.5 mm grid is
    0.75 mm deep and one of a 3 mm grid 1.5 mm; 0 outside (`guidegen.images.grain.inplane_distance`)."""
    half = min(float(spacing[0]), float(spacing[1])) / 2
    return np.where(mask, inplane_distance(mask, spacing) - half, 0.0).astype(np.float32)


def bone_profile_hu(depth: np.ndarray, spacing, profiles=BONE_PROFILES) -> np.ndarray:
    """Real bone's HU at ``depth`` (mm, `bone_depth`) on a grid of ``spacing`` (its smaller in-plane
    voxel size counts): each profile linear between its depths and flat beyond, the profiles linear
    in voxel size between theirs and the nearest one outside them."""
    size = min(float(spacing[0]), float(spacing[1]))
    sizes = np.array([p[0] for p in profiles])
    values = np.stack([np.interp(depth, p[1], p[2]) for p in profiles])
    if len(profiles) == 1:
        return values[0]
    j = int(np.clip(np.searchsorted(sizes, size), 1, len(sizes) - 1))
    w = float(np.clip((size - sizes[j - 1]) / (sizes[j] - sizes[j - 1]), 0.0, 1.0))
    return (1.0 - w) * values[j - 1] + w * values[j]


def set_bone_profile(out: np.ndarray, mask: np.ndarray, spacing, profiles=BONE_PROFILES) -> dict:
    """The ``mask`` voxels of ``out`` (slices last) take real bone's HU at their depth
    (`bone_profile_hu`) plus their own fine detail (`FINE_TREND_MM`), in place. Voxels the CT has
    as air (below `BODY_THRESHOLD_HU`: outside the model's field of view, where `generate_ct` leaves
    air) stay as they are."""
    drawn = mask & (out > BODY_THRESHOLD_HU)
    if not drawn.any():
        return {"voxels": 0}
    fine = detrend(out, drawn, spacing, FINE_TREND_MM)
    before = float(out[drawn].mean())
    out[drawn] = bone_profile_hu(bone_depth(mask, spacing)[drawn], spacing, profiles) + fine[drawn]
    record = {"voxels": int(drawn.sum()), "before_hu": round(before, 1), "after_hu": round(float(out[drawn].mean()), 1)}
    if drawn.sum() < mask.sum():
        record["left_as_air"] = int(mask.sum() - drawn.sum())
    return record


def _keep_in_range(out: np.ndarray, lab: np.ndarray, spacing, phase: str) -> dict:
    """Shift each organ of `RANGE_ORGANS` whose interior mean (3 mm in from its border in-plane; all
    its voxels when fewer than 100 lie that deep) is outside the phase's published range, as a whole
    (its own pattern kept), to `RANGE_INSET_HU` inside the nearer bound; in place. Organs in range are
    left as the network drew them. Returns, per organ moved, its level before and after."""
    moved = {}
    for name, key in RANGE_ORGANS.items():
        organ = lab == ID[name]
        if key not in PUBLISHED_RANGE_HU[phase] or np.count_nonzero(organ) < 100:
            continue
        inner = interior(organ, spacing)
        level = float(out[inner if np.count_nonzero(inner) >= 100 else organ].mean())
        low, high = PUBLISHED_RANGE_HU[phase][key]
        if low <= level <= high:
            continue
        target = low + RANGE_INSET_HU if level < low else high - RANGE_INSET_HU
        out[organ] += target - level
        moved[name] = {"before_hu": round(level, 1), "target_hu": round(target, 1), "range_hu": [low, high]}
    return moved


def _set_level(out: np.ndarray, mask: np.ndarray, spacing, target: float) -> dict:
    """The ``mask`` voxels of ``out`` (slices last) take ``target`` plus their own fine detail (the CT
    minus its in-plane average over the mask, `FINE_TREND_MM`), in place: a homogeneous tissue's
    coarser profile is the network's artefact, removed, not shifted."""
    fine = detrend(out, mask, spacing, FINE_TREND_MM)
    before = float(out[mask].mean())
    out[mask] = target + fine[mask]
    return {"before_hu": round(before, 1), "target_hu": round(target, 1)}
