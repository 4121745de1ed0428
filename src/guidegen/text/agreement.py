"""Whether the tumours a prompt states are the tumours a label map shows.

One definition, used both by the mask sampler's tumour placement (`guidegen.masks.placement`, which
checks what it placed) and by the adherence check (`guidegen.evaluation.masks.adherence_check`,
which scores samples): the two must never disagree about what "a 4 cm sigmoid tumour" means.
"""

from __future__ import annotations

from collections.abc import Sequence

from guidegen.text.attributes import KIDNEY_UNSPECIFIED, Tumour

__all__ = ["DIAMETER_TOLERANCE", "tumour_agreement", "within"]

#: A stated longest tumour diameter holds when the measured one is within ±30 % of it.
DIAMETER_TOLERANCE = 0.30

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


def tumour_agreement(stated: tuple[Tumour, ...] | None, measured: tuple[Tumour, ...] | None,
                     tolerance: float = DIAMETER_TOLERANCE) -> dict[str, bool]:
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
