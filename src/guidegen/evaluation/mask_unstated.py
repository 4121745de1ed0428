"""The organs a prompt does not mention: normal in size and whole inside the sampled grid.

The adherence check (`guidegen.evaluation.masks.adherence_check`) scores only what a prompt states.
A sampled map for "3 cm tumour in the right kidney" should still show a normal liver, spleen, left
kidney and pancreas, each whole: `unstated_organ_check` scores that (issue 24).

* **normal**: every solid organ of `SOLID_ORGANS` whose size the prompt does not change has a
  volume inside the report's normal range (`guidegen.text.measure.REFERENCE_RANGES`, the ranges
  `guidegen report` grades with; an organ without voxels is not normal). The prompt changes an
  organ when it states it enlarged, small or absent, gives its volume or a severity, or places a
  tumour in it ("renal" without a side: both kidneys). A prompt that calls an organ normal does not
  change it: it is scored.
* **complete**: each organ of `COMPLETE_ORGANS` the prompt does not remove has voxels and touches
  neither the grid's faces nor voxels of unknown class (`measure_labels`' ``partial``). Not scored
  when the prompt states a field of view that cuts them (`CUTTING_FIELDS`: a scan of the pelvis
  is meant to miss the liver).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guidegen.text.attributes import CUTTING_FIELDS, SOLID_ORGANS, Attributes, changed_organs
from guidegen.text.measure import REFERENCE_RANGES

#: Organs that must lie whole inside the grid.
COMPLETE_ORGANS: tuple[str, ...] = ("liver", "spleen", "kidney_right", "kidney_left")


@dataclass(frozen=True)
class UnstatedFinding:
    """One organ of one sample.

    Attributes:
        volume_ml: measured volume (``None`` when the class is not annotated).
        normal: volume inside the normal range; ``None`` when not scored (the prompt changes the
            organ, the organ is not in `SOLID_ORGANS`, or it is not annotated).
        complete: whole inside the grid; ``None`` when not scored.
    """

    volume_ml: float | None
    normal: bool | None
    complete: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"volume_ml": self.volume_ml, "normal": self.normal, "complete": self.complete}


def unstated_organ_check(measured: Attributes, prompt: Attributes) -> dict[str, UnstatedFinding]:
    """Score the organs a prompt leaves unchanged (see the module docstring).

    Args:
        measured: ``measure_labels(sample).attributes``.
        prompt: `parse_prompt` of the sample's prompt.

    Returns:
        Organ → `UnstatedFinding` for every organ of `SOLID_ORGANS` and `COMPLETE_ORGANS`.
    """
    if not isinstance(measured, Attributes) or not isinstance(prompt, Attributes):
        raise ValueError("measured and prompt must be Attributes records")
    changed = changed_organs(prompt)
    removed = {name for name, f in prompt.organs.items() if f.state == "absent"}
    results: dict[str, UnstatedFinding] = {}
    for name in dict.fromkeys((*SOLID_ORGANS, *COMPLETE_ORGANS)):
        finding = measured.organs.get(name)
        volume = None if finding is None else finding.volume_ml
        normal = complete = None
        if volume is not None and name in SOLID_ORGANS and name not in changed:
            ref = REFERENCE_RANGES[name]
            normal = bool(volume > 0 and (ref.low_ml or 0.0) <= volume <= ref.high_ml)
        if (
            volume is not None
            and name in COMPLETE_ORGANS
            and name not in removed
            and prompt.field_of_view not in CUTTING_FIELDS
        ):
            complete = bool(volume > 0 and finding is not None and finding.partial is False)
        results[name] = UnstatedFinding(volume, normal, complete)
    return results


def unstated_summary(checks: Sequence[Mapping[str, UnstatedFinding]]) -> dict[str, Any]:
    """Rates over samples: maps whose every scored organ is normal / complete, and per organ.

    Returns:
        ``{"normal_maps": [passed, scored], "complete_maps": [passed, scored],
        "normal_checks": [passed, scored], "complete_checks": [passed, scored],
        "by_organ": {organ: {"normal": [passed, scored], "complete": [passed, scored]}}}``; a map
        counts when at least one of its organs was scored.
    """
    summary: dict[str, Any] = {"by_organ": {}}
    for kind in ("normal", "complete"):
        maps = [[getattr(f, kind) for f in check.values() if getattr(f, kind) is not None] for check in checks]
        maps = [m for m in maps if m]
        summary[f"{kind}_maps"] = [sum(all(m) for m in maps), len(maps)]
        values = [v for m in maps for v in m]
        summary[f"{kind}_checks"] = [sum(values), len(values)]
    organs = dict.fromkeys(name for check in checks for name in check)
    for name in organs:
        entry = {}
        for kind in ("normal", "complete"):
            values = [getattr(c[name], kind) for c in checks if name in c and getattr(c[name], kind) is not None]
            entry[kind] = [sum(values), len(values)]
        summary["by_organ"][name] = entry
    return summary
