"""Contrast phase of a CT scan from the mean HU of its labelled structures.

Public CT datasets rarely state their contrast phase, but the same organ differs by 70–280 HU
between phases, so the CT generator is conditioned on it. `estimate_phase` reads the phase off the
mean attenuation inside the labels of a prepared case (``case.json`` → ``mean_hu``).

Reference values (contrast-enhanced abdominal CT, single-bolus iodinated contrast):

=================  ============  ==========  ========  =========  =============================
phase              aorta (HU)    liver (HU)  spleen    kidneys    other
=================  ============  ==========  ========  =========  =============================
non-contrast       30–50         45–65       40–50     25–40      IVC / portal vein like aorta
arterial (35–40 s) > 250         < ~90       patchy    cortex ↑   IVC below renal veins unenh.
portal venous      150–200       100–130     110–130   100–200    portal vein ≈ aorta, IVC ↑
(70–80 s)
delayed (≥ 3 min)  100–150       90–110      ≈ liver   pelvis ↑   aorta ≈ IVC ≈ liver; urine ↑
=================  ============  ==========  ========  =========  =============================

Sources: Bae KT, "Intravenous contrast medium administration and scan timing at CT:
considerations and approaches", Radiology 2010;256:32–61 (aortic and hepatic enhancement curves,
> 250 HU aortic target of arterial-phase protocols); Heiken JP et al., "Dynamic incremental CT:
effect of volume and concentration of contrast material and patient weight on hepatic
enhancement", Radiology 1995;195:353–357 (adequate portal-venous hepatic enhancement ≥ 50 HU over
baseline); Boll DT & Merkle EM, "Diffuse liver disease: strategies for hepatic CT and MR imaging",
RadioGraphics 2009;29:1591–1614 (unenhanced liver ~55–65 HU, some 8–10 HU above the spleen);
Yuh BI & Cohan RH, "Different phases of renal enhancement: role in detecting and characterizing
renal masses during helical CT", AJR 1999;173:747–755 (corticomedullary, nephrographic and
excretory phases). The cut-offs below are this module's choices, placed in the gaps between those
ranges with some margin, and checked on the scans bundled in ``data/real`` (see
``tests/data/test_phase.py``).

The aorta is the primary marker (its enhancement is large and follows the bolus directly); the
liver separates arterial (liver not yet enhanced) from portal-venous (liver enhanced) phases; IVC,
portal vein, spleen, kidneys and bladder confirm or, without an aorta, give a low-confidence
fallback. Mean HU over only a few voxels is dominated by partial volume at the label border, so each
structure needs a minimum voxel count to be used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from guidegen.terms import PHASES

Confidence = Literal["high", "medium", "low"]

#: Typical mean HU of each structure in each phase: the centres of the ranges in the table above
#: (non-contrast and portal-venous liver and aorta as cited; arterial spleen and kidney cortex,
#: the IVC and the delayed phase are approximate teaching values). Used to render a real scan in
#: another phase for training (`guidegen.images.config.ImageGeneratorConfig.p_phase_remap`).
TYPICAL_HU: dict[str, dict[str, float]] = {
    "non_contrast": {
        "aorta": 40.0,
        "inferior_vena_cava": 40.0,
        "liver": 55.0,
        "spleen": 45.0,
        "kidney_left": 32.0,
        "kidney_right": 32.0,
    },
    "arterial": {
        "aorta": 300.0,
        "inferior_vena_cava": 70.0,
        "liver": 75.0,
        "spleen": 120.0,
        "kidney_left": 180.0,
        "kidney_right": 180.0,
    },
    "portal_venous": {
        "aorta": 175.0,
        "inferior_vena_cava": 130.0,
        "liver": 115.0,
        "spleen": 120.0,
        "kidney_left": 160.0,
        "kidney_right": 160.0,
    },
    "delayed": {
        "aorta": 125.0,
        "inferior_vena_cava": 115.0,
        "liver": 100.0,
        "spleen": 100.0,
        "kidney_left": 130.0,
        "kidney_right": 130.0,
    },
}

#: Typical mean HU of the other blood-filled structures (ImageGeneratorConfig.enhancing_structures
#: "core_and_vessels"). Portal vein, after the table above: like the aorta unenhanced, ≈ the aorta in
#: the portal-venous phase, still filling in the arterial phase. Other arteries (iliac, renal …)
#: follow the aorta, other veins (iliac, renal, hepatic …) the IVC. "heart" is TotalSegmentator's
#: whole heart, chambers and myocardium together: unenhanced blood and myocardium are both ~40 HU; with
#: contrast the blood pool follows the aorta (the right heart leads, the left follows in the
#: arterial phase) while myocardium enhances to ~100 HU, so the whole-heart mean sits below the
#: aorta's (Bae 2010's enhancement curves; teaching values, approximate, like TYPICAL_HU's delayed
#: phase).
VESSEL_TYPICAL_HU: dict[str, dict[str, float]] = {
    "non_contrast": {"portal_vein": 40.0, "heart": 40.0, "other_artery": 40.0, "other_vein": 40.0},
    "arterial": {"portal_vein": 90.0, "heart": 200.0, "other_artery": 300.0, "other_vein": 70.0},
    "portal_venous": {"portal_vein": 175.0, "heart": 140.0, "other_artery": 175.0, "other_vein": 130.0},
    "delayed": {"portal_vein": 120.0, "heart": 110.0, "other_artery": 125.0, "other_vein": 115.0},
}

#: Mean-HU range of each structure in each phase ("kidneys" is either kidney): the cited values of
#: the table above (non-contrast aorta and liver, arterial and portal-venous aorta, portal-venous
#: liver), the others approximate teaching values. What `benchmarks/phase_check.py` counts as in
#: range, and where `guidegen.images.levels.calibrate_levels` keeps a generated organ's level. The
#: arterial aorta has no upper bound (> 250 HU is the protocols' target). The pancreas has a range
#: in the unenhanced phase only (40-50 HU in teaching texts, widened to 30-55 for the fat that
#: comes with age); its enhancement depends on the timing more than the table's phases tell.
PUBLISHED_RANGE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "non_contrast": {
        "aorta": (30.0, 50.0),
        "liver": (45.0, 65.0),
        "spleen": (35.0, 55.0),
        "kidneys": (25.0, 45.0),
        "pancreas": (30.0, 55.0),
    },
    "arterial": {"aorta": (250.0, math.inf), "liver": (60.0, 90.0), "spleen": (90.0, 160.0), "kidneys": (150.0, 250.0)},
    "portal_venous": {
        "aorta": (150.0, 200.0),
        "liver": (100.0, 130.0),
        "spleen": (100.0, 140.0),
        "kidneys": (140.0, 200.0),
    },
    "delayed": {"aorta": (100.0, 150.0), "liver": (80.0, 110.0), "spleen": (90.0, 120.0), "kidneys": (100.0, 180.0)},
}

#: Structure sets a model's phase prior and phase remap may cover (`typical_hu`).
ENHANCING_SETS: tuple[str, ...] = ("core", "core_and_vessels")


def typical_hu(structures: str = "core") -> dict[str, dict[str, float]]:
    """Phase → structure → typical mean HU for one of `ENHANCING_SETS`: "core" is `TYPICAL_HU`
    (aorta, IVC, liver, spleen, kidneys; older models), "core_and_vessels" adds `VESSEL_TYPICAL_HU`."""
    if structures not in ENHANCING_SETS:
        raise ValueError(f"enhancing structures must be one of {', '.join(ENHANCING_SETS)}, got {structures!r}")
    if structures == "core":
        return TYPICAL_HU
    return {phase: {**TYPICAL_HU[phase], **VESSEL_TYPICAL_HU[phase]} for phase in TYPICAL_HU}


#: Minimum voxel count for a structure's mean HU to be used. Noise is not the issue (20 voxels of
#: ~15 HU noise give a mean within ~±3 HU, far inside the 40+ HU margins below); fragments are: a
#: vessel cut by the field of view or a speck of mislabelled voxels is mostly partial volume with
#: its neighbours. Vessels are thin, so 20 voxels suffice (0.54 ml on the default 3 mm grid, ~1 cm
#: of aorta); organs need 100 (2.7 ml at 3 mm). Counts, not millilitres, because partial volume
#: depends on how many voxels a structure spans, whatever their size: an aorta only two voxels
#: wide (12 mm grid) is mostly rim. On very coarse grids (≥ ~12 mm) the means still shrink towards
#: the surrounding fat, so estimates there are rougher than on the 3 mm grid they were checked on.
MIN_VOXELS: dict[str, int] = {
    "aorta": 20,
    "inferior_vena_cava": 20,
    "portal_vein": 20,
    "liver": 100,
    "spleen": 100,
    "kidney_right": 100,
    "kidney_left": 100,
    "urinary_bladder": 100,
}

# Unenhanced blood is 30–50 HU (higher with a high haematocrit); below 90 HU the aorta holds no
# meaningful contrast. Every contrast phase puts the aorta well above this (≥ ~100 HU even in
# the usual 3–5 min delayed scan; see AORTA_WASHOUT_MIN for later ones).
AORTA_UNENHANCED_MAX = 90.0
# Arterial-phase protocols aim at > 250 HU in the aorta (Bae 2010); portal-venous aortas sit at
# 150–200 HU.
AORTA_ARTERIAL_MIN = 250.0
# The liver receives ~75 % of its blood through the portal vein, so in the arterial phase it is
# barely enhanced (< ~90 HU), in the portal-venous phase it is ≥ 50 HU above its unenhanced 45–65 HU.
LIVER_ARTERIAL_MAX = 90.0
LIVER_PORTAL_TYPICAL_MIN = 100.0
# Aorta − liver gradient: ≥ 150 HU only while the bolus is still arterial (PV phase: ~50–100 HU).
ARTERIAL_GRADIENT_MIN = 150.0
# Equilibrium / delayed phase: blood and liver converge (gradient ≤ ~30 HU) at moderate levels.
DELAYED_GRADIENT_MAX = 30.0
DELAYED_AORTA_MAX = 180.0
# Enhancement floors of the fallback markers (unenhanced: liver 45–65, spleen 40–50, kidneys
# 25–40, IVC / portal vein 30–50 HU). Liver ≥ 90 and spleen ≥ 110 are reached only with contrast
# (an unenhanced liver exceeds ~75 HU only with iron overload, amiodarone or glycogen storage
# disease, hence "low" confidence on the liver alone).
LIVER_ENHANCED_MIN = 90.0
SPLEEN_ENHANCED_MIN = 110.0
KIDNEY_ENHANCED_MIN = 100.0
VEIN_ENHANCED_MIN = 100.0
# Unenhanced ceilings used as confirmation (and, for spleen and kidneys, as a fallback: neither
# has the steatosis that lets a contrast-enhanced liver look unenhanced).
LIVER_UNENHANCED_MAX = 75.0
SPLEEN_UNENHANCED_MAX = 65.0
KIDNEY_UNENHANCED_MAX = 60.0
VEIN_UNENHANCED_MAX = 90.0
# Blood at 70–90 HU next to enhanced organs: contrast washing out (late delayed), not unenhanced.
AORTA_WASHOUT_MIN = 70.0
# Arterial phase without a liver: the infrarenal IVC still carries unenhanced blood from the legs.
ARTERIAL_IVC_GRADIENT_MIN = 120.0
# Urine is 0–20 HU; ≥ 100 HU in the bladder means excreted contrast (minutes after injection).
BLADDER_EXCRETED_MIN = 100.0


@dataclass(frozen=True)
class PhaseEstimate:
    """A contrast-phase estimate and why.

    Attributes:
        phase: one of `guidegen.terms.PHASES` ("non_contrast", "arterial",
            "portal_venous", "delayed"), or ``None`` when the labelled structures cannot tell.
        confidence: "high" (two independent markers agree), "medium" (one clear marker, or markers
            that fit the phase less typically) or "low" (fallback on parenchyma alone, or none).
        evidence: JSON-able record: ``used`` (structure → mean HU), ``ignored`` (structure →
            reason, e.g. too few voxels), derived quantities in HU (``aorta_minus_liver`` …) and
            ``rule`` (the rule that fired, in words).
        fallback: ``None`` when the aorta decided; otherwise what was done with too little labelled
            (e.g. "no usable aorta: contrast in spleen (…); reported as portal_venous …"; "no CT"
            for label-only prepared cases).
    """

    phase: str | None
    confidence: Confidence
    evidence: dict = field(default_factory=dict)
    fallback: str | None = None

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES} or None, got {self.phase!r}")
        if self.confidence not in ("high", "medium", "low"):
            raise ValueError(f"confidence must be high, medium or low, got {self.confidence!r}")

    def to_dict(self) -> dict:
        """JSON-able form (as stored in a prepared case's ``case.json`` → ``phase_estimate``)."""
        return {
            "phase": self.phase,
            "confidence": self.confidence,
            "evidence": self.evidence,
            "fallback": self.fallback,
        }


def _usable(
    mean_hu: Mapping[str, float], voxel_counts: Mapping[str, int] | None
) -> tuple[dict[str, float], dict[str, str]]:
    used: dict[str, float] = {}
    ignored: dict[str, str] = {}
    for name, minimum in MIN_VOXELS.items():
        if name not in mean_hu or mean_hu[name] is None:
            continue
        if voxel_counts is not None:
            n = int(voxel_counts.get(name, 0))
            if n < minimum:
                ignored[name] = f"{n} voxels < {minimum}"
                continue
        used[name] = round(float(mean_hu[name]), 1)
    return used, ignored


def _kidneys(used: Mapping[str, float], voxel_counts: Mapping[str, int] | None) -> float | None:
    """Mean HU of both kidneys, weighted by voxel count when known (HU)."""
    sides = [k for k in ("kidney_right", "kidney_left") if k in used]
    if not sides:
        return None
    weights = [float(voxel_counts[k]) if voxel_counts else 1.0 for k in sides]
    return round(sum(used[k] * w for k, w in zip(sides, weights)) / sum(weights), 1)


def estimate_phase(mean_hu: Mapping[str, float] | None, voxel_counts: Mapping[str, int] | None = None) -> PhaseEstimate:
    """Estimate the contrast phase from the mean HU inside labelled structures.

    Rules, in order (A aorta, L liver, S spleen, K kidneys, V IVC, P portal vein, B bladder, HU):

    1. A < 90: blood unenhanced. ``non_contrast`` unless the parenchyma is enhanced (L ≥ 90,
       S ≥ 110, K ≥ 100); a dense liver alone beside an unenhanced spleen or kidneys is intrinsic
       (iron, amiodarone) and still ``non_contrast`` (medium). Otherwise ``delayed`` (low) if
       B ≥ 100 or A ≥ 70 (contrast washed out of the blood), else ``None`` (contradictory labels).
    2. Contrast in the aorta, liver not yet enhanced: L < 90 and (A ≥ 250 or A − L ≥ 150) →
       ``arterial``. Without a liver: A ≥ 250 → ``arterial`` (medium when the IVC is ≥ 120 HU
       darker, as infrarenal IVC is unenhanced in the arterial phase; else low).
    3. Equilibrium: A < 180, |A − L| ≤ 30 and, if labelled, |A − V| ≤ 30 → ``delayed``
       (high with excreted contrast in the bladder, B ≥ 100).
    4. Otherwise ``portal_venous`` (high when L ≥ 100 with A < 250; medium otherwise; low on the
       aorta alone).
    5. No usable aorta (fallback): any enhanced marker (L ≥ 90, S ≥ 110, K ≥ 100, V or P ≥ 100) →
       ``portal_venous``, low (the arterial phase cannot be told apart without the aorta); spleen
       ≤ 65 / kidneys ≤ 60 with nothing enhanced → ``non_contrast``, low; else ``None``.

    Args:
        mean_hu: GuideGen class name → mean HU inside its label (e.g. ``case.json`` → ``mean_hu``).
            Other classes (body, bone, tumour, …) are ignored.
        voxel_counts: class name → voxel count of its label; structures below `MIN_VOXELS` are
            ignored. ``None``: every given mean is trusted.

    Returns:
        The estimate with its evidence (JSON-able).
    """
    used, ignored = _usable(mean_hu or {}, voxel_counts)
    a = used.get("aorta")
    liver = used.get("liver")
    spleen = used.get("spleen")
    ivc = used.get("inferior_vena_cava")
    portal = used.get("portal_vein")
    bladder = used.get("urinary_bladder")
    kidneys = _kidneys(used, voxel_counts)
    evidence: dict = {"used": used}
    if ignored:
        evidence["ignored"] = ignored
    if voxel_counts is None:
        evidence["voxel_counts"] = "not given: every mean trusted"
    if kidneys is not None:
        evidence["kidneys"] = kidneys
    if a is not None and liver is not None:
        evidence["aorta_minus_liver"] = round(a - liver, 1)
    if a is not None and ivc is not None:
        evidence["aorta_minus_ivc"] = round(a - ivc, 1)

    def result(phase: str | None, confidence: Confidence, rule: str, fallback: str | None = None) -> PhaseEstimate:
        return PhaseEstimate(phase, confidence, {**evidence, "rule": rule}, fallback)

    # Parenchyma / veins that show contrast, and those that show none (confirmations).
    enhanced = [
        name
        for name, value, floor in (
            ("liver", liver, LIVER_ENHANCED_MIN),
            ("spleen", spleen, SPLEEN_ENHANCED_MIN),
            ("kidneys", kidneys, KIDNEY_ENHANCED_MIN),
            ("inferior_vena_cava", ivc, VEIN_ENHANCED_MIN),
            ("portal_vein", portal, VEIN_ENHANCED_MIN),
        )
        if value is not None and value >= floor
    ]
    unenhanced = [
        name
        for name, value, ceiling in (
            ("liver", liver, LIVER_UNENHANCED_MAX),
            ("spleen", spleen, SPLEEN_UNENHANCED_MAX),
            ("kidneys", kidneys, KIDNEY_UNENHANCED_MAX),
            ("inferior_vena_cava", ivc, VEIN_UNENHANCED_MAX),
            ("portal_vein", portal, VEIN_UNENHANCED_MAX),
        )
        if value is not None and value <= ceiling
    ]
    excreted = bladder is not None and bladder >= BLADDER_EXCRETED_MIN

    if a is not None:
        if a < AORTA_UNENHANCED_MAX:
            parenchyma = [n for n in enhanced if n in ("liver", "spleen", "kidneys")]
            reliable = [n for n in unenhanced if n in ("spleen", "kidneys")]
            if not parenchyma:
                confidence: Confidence = "high" if unenhanced else "medium"
                return result(
                    "non_contrast",
                    confidence,
                    f"aorta < {AORTA_UNENHANCED_MAX:g} HU (unenhanced blood)"
                    + (f", confirmed by unenhanced {', '.join(unenhanced)}" if unenhanced else ", aorta only"),
                )
            if parenchyma == ["liver"] and reliable:
                # A dense liver next to unenhanced blood, spleen or kidneys is the liver's own
                # attenuation (iron overload, amiodarone), not contrast.
                return result(
                    "non_contrast",
                    "medium",
                    f"aorta < {AORTA_UNENHANCED_MAX:g} HU with unenhanced "
                    f"{', '.join(reliable)}; dense liver taken as intrinsic (iron, amiodarone)",
                )
            if excreted or a >= AORTA_WASHOUT_MIN:
                # Blood has washed out while organs still hold contrast (or it is being excreted):
                # a late delayed scan; weak evidence, so low.
                return result(
                    "delayed",
                    "low",
                    f"aorta < {AORTA_UNENHANCED_MAX:g} HU but enhanced "
                    f"{', '.join(parenchyma)}" + (", contrast in the bladder" if excreted else ""),
                )
            return result(
                None,
                "low",
                f"contradictory: aorta < {AORTA_UNENHANCED_MAX:g} HU with enhanced "
                f"{', '.join(parenchyma)} (check the labels)",
            )

        if liver is not None and liver < LIVER_ARTERIAL_MAX:
            bright = a >= AORTA_ARTERIAL_MIN
            steep = a - liver >= ARTERIAL_GRADIENT_MIN
            if bright or steep:
                return result(
                    "arterial",
                    "high" if bright and steep else "medium",
                    f"liver < {LIVER_ARTERIAL_MAX:g} HU (not yet enhanced) with "
                    + " and ".join(
                        s
                        for s, ok in (
                            (f"aorta >= {AORTA_ARTERIAL_MIN:g} HU", bright),
                            (f"aorta - liver >= {ARTERIAL_GRADIENT_MIN:g} HU", steep),
                        )
                        if ok
                    ),
                )
        if liver is None and a >= AORTA_ARTERIAL_MIN:
            ivc_dark = ivc is not None and a - ivc >= ARTERIAL_IVC_GRADIENT_MIN
            return result(
                "arterial",
                "medium" if ivc_dark else "low",
                f"aorta >= {AORTA_ARTERIAL_MIN:g} HU, no usable liver"
                + (f", IVC >= {ARTERIAL_IVC_GRADIENT_MIN:g} HU darker (unenhanced venous return)" if ivc_dark else ""),
            )

        if (
            liver is not None
            and a < DELAYED_AORTA_MAX
            and abs(a - liver) <= DELAYED_GRADIENT_MAX
            and (ivc is None or abs(a - ivc) <= DELAYED_GRADIENT_MAX)
        ):
            return result(
                "delayed",
                "high" if excreted else "medium",
                f"aorta < {DELAYED_AORTA_MAX:g} HU within {DELAYED_GRADIENT_MAX:g} HU of the liver"
                + (" and IVC" if ivc is not None else "")
                + " (equilibrium)"
                + (", contrast in the bladder" if excreted else ""),
            )

        if liver is not None:
            # Textbook portal-venous: liver >= 100 HU with the aorta back below arterial levels.
            # A liver of 90-100 HU, or an aorta still >= 250 HU, fits less well (weak bolus, early
            # portal inflow): medium.
            notes = []
            if liver < LIVER_PORTAL_TYPICAL_MIN:
                notes.append(f"liver below the typical {LIVER_PORTAL_TYPICAL_MIN:g} HU")
            if a >= AORTA_ARTERIAL_MIN:
                notes.append(f"aorta still >= {AORTA_ARTERIAL_MIN:g} HU")
            return result(
                "portal_venous",
                "medium" if notes else "high",
                "contrast in the aorta with an enhanced liver, neither arterial nor equilibrium"
                + (f" ({'; '.join(notes)})" if notes else ""),
            )
        return result(
            "portal_venous",
            "low",
            f"aorta {AORTA_UNENHANCED_MAX:g} to {AORTA_ARTERIAL_MIN:g} HU, no usable liver to confirm",
        )

    # Fallbacks without a usable aorta: contrast can be seen, but not when in the bolus it was.
    if enhanced:
        return result(
            "portal_venous",
            "low",
            f"no usable aorta; enhanced {', '.join(enhanced)}",
            fallback=f"no usable aorta: contrast in {' and '.join(enhanced)} (liver >= "
            f"{LIVER_ENHANCED_MIN:g}, spleen >= {SPLEEN_ENHANCED_MIN:g}, kidneys >= {KIDNEY_ENHANCED_MIN:g}, "
            f"veins >= {VEIN_ENHANCED_MIN:g} HU); reported as portal_venous (the commonest "
            "contrast phase; arterial not excluded)",
        )
    reliable = [n for n in unenhanced if n in ("spleen", "kidneys")]
    if reliable:
        return result(
            "non_contrast",
            "low",
            f"no usable aorta; unenhanced {', '.join(unenhanced)}",
            fallback=f"no usable aorta: {' and '.join(reliable)} unenhanced (spleen <= "
            f"{SPLEEN_UNENHANCED_MAX:g}, kidneys <= {KIDNEY_UNENHANCED_MAX:g} HU); reported as non_contrast",
        )
    if used:
        return result(
            None,
            "low",
            f"no usable aorta; {', '.join(used)} in the indeterminate range",
            fallback=f"undecided: {', '.join(used)} fit more than one phase without the aorta (a "
            f"liver below {LIVER_ENHANCED_MIN:g} HU may be unenhanced, arterial or fatty; a spleen of "
            f"{SPLEEN_UNENHANCED_MAX:g}-{SPLEEN_ENHANCED_MIN:g} HU arterial or venous)",
        )
    return result(
        None,
        "low",
        "nothing usable",
        fallback="no aorta, IVC, portal vein, liver, spleen, kidneys or bladder with enough voxels",
    )
