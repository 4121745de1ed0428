"""Whether the tumours and organ sizes a prompt states are what a label map shows.

One definition, used both by the mask sampler's placement stage (`guidegen.masks.placement`, which
checks what it placed or resized) and by the adherence check
(`guidegen.evaluation.masks.adherence_check`, which scores samples): the two must never disagree
about what "a 4 cm sigmoid tumour" or "mild splenomegaly" means.

Sides are the patient's, in world coordinates: the measured records come from
`guidegen.text.measure.measure_labels`, which names a kidney (and the tumours it hosts) by the side
it lies on, not by its label, so a tumour in a "left kidney" label drawn on the patient's right
does not hold for "left kidney tumour".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from guidegen.text.attributes import KIDNEY_UNSPECIFIED, OrganFinding, Tumour
from guidegen.text.measure import REFERENCE_RANGES, grade_volume

__all__ = [
    "DIAMETER_TOLERANCE",
    "ORGAN_VOLUME_TOLERANCE",
    "finding_volume",
    "organ_agreement",
    "tumour_agreement",
    "within",
]

#: A stated longest tumour diameter holds when the measured one is within ±30 % of it.
DIAMETER_TOLERANCE = 0.30
#: A stated organ volume (mL) holds when the measured one is within ±30 % of it.
ORGAN_VOLUME_TOLERANCE = 0.30

_KIDNEYS = ("kidney_right", "kidney_left")


def within(value: float, target: float, tolerance: float) -> bool:
    """``value`` lies within ±``tolerance`` (relative) of ``target``."""
    return abs(value - target) <= tolerance * target


def _host_matches(stated: str | None, measured: str | None) -> bool:
    if stated is None:
        return True
    if stated == KIDNEY_UNSPECIFIED:
        return measured in _KIDNEYS
    return measured == stated


def _group_fields(number: int, tumour: Tumour, measured: Sequence[Tumour], tolerance: float) -> dict[str, bool]:
    key = f"tumour{number}"
    hosted = [t for t in measured if _host_matches(tumour.organ, t.organ)]
    fields: dict[str, bool] = {}
    if tumour.organ is not None:
        fields[f"{key}.organ"] = bool(hosted)
    if tumour.segment is not None:
        fields[f"{key}.segment"] = any(t.segment == tumour.segment for t in hosted)
    if tumour.diameter_mm is not None:
        diameters = [t.diameter_mm for t in hosted if t.diameter_mm is not None]
        largest = max(diameters, default=None)
        fields[f"{key}.diameter_mm"] = largest is not None and within(largest, tumour.diameter_mm, tolerance)
    # Tumour groups always state a count: 1 for a singular mention, None for "multiple".
    count = sum(t.count if t.count is not None else 2 for t in hosted)
    fields[f"{key}.count"] = count >= 2 if tumour.count is None else count == tumour.count
    return fields


def tumour_agreement(
    stated: tuple[Tumour, ...] | None, measured: tuple[Tumour, ...] | None, tolerance: float = DIAMETER_TOLERANCE
) -> dict[str, bool]:
    """Field → holds, for the tumours a prompt states against those measured in a map.

    Fields: ``"tumours"`` ("no tumour" → none measured; any stated tumour → at least one); per
    stated group ``i`` (1-based), compared with the measured groups of the same host (``"kidney"``
    without a side matches either kidney; a group without a host matches every measured tumour):
    ``tumour{i}.organ`` a tumour in the stated host; ``tumour{i}.segment`` one of them in the stated
    colon segment / liver lobe; ``tumour{i}.diameter_mm`` the largest of them within ±``tolerance``
    of the stated longest diameter; ``tumour{i}.count`` their number equals the stated count (a
    singular mention states one tumour; "multiple" means at least two). Empty when nothing about
    tumours is stated (``stated is None``).
    """
    if stated is None:
        return {}
    fields = {"tumours": measured is not None and (bool(measured) if stated else not measured)}
    for number, tumour in enumerate(stated, start=1):
        fields.update(_group_fields(number, tumour, measured or (), tolerance))
    return fields


def finding_volume(finding: OrganFinding | None) -> float | None:
    """Measured organ volume, mL: ``None`` when the organ is not annotated, 0 when absent."""
    if finding is None:
        return None
    return finding.volume_ml if finding.volume_ml is not None else 0.0


def organ_agreement(
    organ: str,
    stated: OrganFinding,
    measured: OrganFinding | None,
    stats: Mapping[str, Any] | None = None,
    tolerance: float = ORGAN_VOLUME_TOLERANCE,
) -> dict[str, bool]:
    """Field → holds for one organ a prompt states something about (``parse_prompt(...).organs``).

    ``{organ}.state``: "enlarged" → volume above the normal range of
    `guidegen.text.measure.REFERENCE_RANGES`; "small" → below it (a partially imaged organ cannot be
    proven small); "normal" → within it (a partial organ's volume is a lower bound, so only the upper
    bound counts); "absent" → no voxels. Organs without a normal range (hollow organs) use
    ``stats[organ].min_ml`` / ``.max_ml`` (a reference set's volumes) when given, and are not scored
    otherwise. ``{organ}.severity``: the measured grade (`grade_volume`) equals the stated one.
    ``{organ}.volume_ml``: within ±``tolerance`` of a stated volume.
    """
    stats = stats or {}
    fields: dict[str, bool] = {}
    volume = finding_volume(measured)
    partial = bool(measured.partial) if measured is not None else False
    ref = REFERENCE_RANGES.get(organ)
    if stated.state is not None:
        holds: bool | None
        if volume is None:
            holds = False  # the sample does not show the organ at all
        elif stated.state == "absent":
            holds = volume == 0
        elif volume == 0:
            holds = False
        elif ref is not None:
            low = ref.low_ml
            if stated.state == "enlarged":
                holds = volume > ref.high_ml
            elif stated.state == "small":
                holds = low is not None and not partial and volume < low
            else:  # normal
                holds = volume <= ref.high_ml and (low is None or partial or volume >= low)
        elif organ in stats:
            lo, hi = stats[organ].min_ml, stats[organ].max_ml
            if stated.state == "enlarged":
                holds = volume > hi
            elif stated.state == "small":
                holds = not partial and volume < lo
            else:
                holds = lo <= volume <= hi
        else:
            holds = None  # no criterion for this organ's size: not scored
        if holds is not None:
            fields[f"{organ}.state"] = holds
        if stated.severity is not None and ref is not None and holds is not None:
            grade = grade_volume(organ, volume, partial)[1] if volume is not None else None
            fields[f"{organ}.severity"] = grade == stated.severity
    if stated.volume_ml is not None:
        fields[f"{organ}.volume_ml"] = volume is not None and within(volume, stated.volume_ml, tolerance)
    return fields
