"""The structured attribute record shared by label-map measurement, report writing and prompt parsing.

Everything a prompt can say about a scan, and everything a report derived from a label map states,
goes through `Attributes`. The record distinguishes *unknown* from *absent* throughout:

* a field that is ``None`` was not stated (prompt) or could not be determined (label map);
* ``tumours=()`` means "explicitly no tumour", ``tumours=None`` means "nothing known about tumours";
* an organ missing from ``organs`` is unknown; ``OrganFinding(state="absent")`` means the organ was
  looked for and is not in the imaged volume (removed, or outside the field of view).

Records are frozen and JSON round-trippable through `Attributes.to_dict` / `Attributes.from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from guidegen.labels.vocabulary import NAMES, ORGANS
from guidegen.terms import COLON_SEGMENTS, PHASES

Sex = Literal["male", "female"]
Phase = Literal["non_contrast", "arterial", "portal_venous", "delayed"]  # = guidegen.terms.PHASES (a test checks)
OrganState = Literal["enlarged", "normal", "small", "absent"]
Severity = Literal["mild", "moderate", "marked"]
FieldOfView = Literal["abdomen", "abdomen_pelvis", "upper_abdomen", "pelvis", "partial"]

SEXES: tuple[str, ...] = get_args(Sex)
ORGAN_STATES: tuple[str, ...] = get_args(OrganState)
SEVERITIES: tuple[str, ...] = get_args(Severity)
FIELDS_OF_VIEW: tuple[str, ...] = get_args(FieldOfView)

#: Liver lobes (Cantlie's line divides right from left).
LIVER_SEGMENTS: tuple[str, ...] = ("right lobe", "left lobe")
#: Segments allowed per host organ; other hosts take no segment.
SEGMENTS: dict[str, tuple[str, ...]] = {"colon": COLON_SEGMENTS, "liver": LIVER_SEGMENTS}
#: A kidney tumour whose side was not stated ("renal cell carcinoma"); every other host is a
#: vocabulary organ name.
KIDNEY_UNSPECIFIED = "kidney"
TUMOUR_ORGANS: tuple[str, ...] = (*ORGANS, KIDNEY_UNSPECIFIED)

#: Plausible adult age range, years.
MAX_AGE = 120


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)} or None, got {value!r}")


def _check_positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")


@dataclass(frozen=True)
class Tumour:
    """One tumour, or a group of tumours sharing a host organ and segment.

    Attributes:
        organ: host organ, a vocabulary organ name (``"liver"``, ``"colon"``, ``"kidney_left"`` …),
            ``"kidney"`` when only "renal" was stated, or ``None`` when the host is unknown.
        segment: part of the host: a colon segment (`COLON_SEGMENTS`) or a liver lobe
            (`LIVER_SEGMENTS`); ``None`` when not stated / not determined.
        diameter_mm: longest diameter in millimetres (of the largest tumour when ``count > 1``);
            ``None`` when unknown.
        count: number of tumours in the group (≥ 1); ``None`` means "more than one, number not
            stated" ("multiple liver metastases").
    """

    organ: str | None = None
    segment: str | None = None
    diameter_mm: float | None = None
    count: int | None = 1

    def __post_init__(self) -> None:
        _check_choice("Tumour.organ", self.organ, TUMOUR_ORGANS)
        if self.segment is not None:
            allowed = SEGMENTS.get(self.organ or "", ())
            if self.segment not in allowed:
                raise ValueError(
                    f"Tumour.segment {self.segment!r} is not a segment of {self.organ!r}"
                    + (f" (valid: {', '.join(allowed)})" if allowed else "")
                )
        _check_positive("Tumour.diameter_mm", self.diameter_mm)
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise ValueError(f"Tumour.count must be a positive integer or None, got {self.count!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"organ": self.organ, "segment": self.segment, "diameter_mm": self.diameter_mm, "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tumour:
        _check_keys("Tumour", data, {"organ", "segment", "diameter_mm", "count"})
        diameter = data.get("diameter_mm")
        return cls(
            organ=data.get("organ"),
            segment=data.get("segment"),
            diameter_mm=None if diameter is None else float(diameter),
            count=data.get("count", 1),
        )


@dataclass(frozen=True)
class OrganFinding:
    """What is known about one organ.

    Attributes:
        state: ``"enlarged"``, ``"normal"``, ``"small"``, ``"absent"`` (not in the imaged volume:
            removed or outside the field of view), or ``None`` (size not assessable / not stated, e.g.
            a partially imaged organ whose measured volume is within the normal range).
        severity: ``"mild"``, ``"moderate"`` or ``"marked"`` for enlarged/small organs; ``None`` when
            not stated or not applicable.
        volume_ml: volume in millilitres (a lower bound when ``partial``); ``None`` when unknown.
        partial: ``True`` when the organ extends outside the imaged volume, ``False`` when it is
            known to be wholly imaged, ``None`` when unknown.
    """

    state: OrganState | None = None
    severity: Severity | None = None
    volume_ml: float | None = None
    partial: bool | None = None

    def __post_init__(self) -> None:
        _check_choice("OrganFinding.state", self.state, ORGAN_STATES)
        _check_choice("OrganFinding.severity", self.severity, SEVERITIES)
        if self.severity is not None and self.state not in ("enlarged", "small"):
            raise ValueError(
                f"a severity ({self.severity}) only applies to enlarged or small organs, not {self.state!r}"
            )
        _check_positive("OrganFinding.volume_ml", self.volume_ml, allow_zero=True)
        if self.partial is not None and not isinstance(self.partial, bool):
            raise ValueError(f"OrganFinding.partial must be True, False or None, got {self.partial!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "severity": self.severity, "volume_ml": self.volume_ml, "partial": self.partial}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrganFinding:
        _check_keys("OrganFinding", data, {"state", "severity", "volume_ml", "partial"})
        volume = data.get("volume_ml")
        return cls(
            state=data.get("state"),
            severity=data.get("severity"),
            volume_ml=None if volume is None else float(volume),
            partial=data.get("partial"),
        )


@dataclass(frozen=True)
class Attributes:
    """Structured description of one abdominal CT and its label map.

    Attributes:
        sex: ``"male"``, ``"female"`` or ``None`` (unknown).
        age: age in whole years (0–120) or ``None``.
        phase: contrast phase, or ``None`` when unknown.
        tumours: tumour groups; ``()`` = explicitly no tumour, ``None`` = unknown.
        organs: organ vocabulary name → `OrganFinding`; an organ not in the mapping is unknown. Stored
            read-only (a ``MappingProxyType``) so that the record stays immutable; as a consequence
            `Attributes` is not hashable.
        field_of_view: body region covered by the scan, or ``None`` when unknown.
    """

    sex: Sex | None = None
    age: int | None = None
    phase: Phase | None = None
    tumours: tuple[Tumour, ...] | None = None
    organs: Mapping[str, OrganFinding] = field(default_factory=dict)
    field_of_view: FieldOfView | None = None

    def __post_init__(self) -> None:
        _check_choice("Attributes.sex", self.sex, SEXES)
        _check_choice("Attributes.phase", self.phase, PHASES)
        _check_choice("Attributes.field_of_view", self.field_of_view, FIELDS_OF_VIEW)
        if self.age is not None and (
            isinstance(self.age, bool) or not isinstance(self.age, int) or not 0 <= self.age <= MAX_AGE
        ):
            raise ValueError(f"Attributes.age must be an integer 0-{MAX_AGE} or None, got {self.age!r}")
        if self.tumours is not None:
            tumours = tuple(self.tumours)
            for tumour in tumours:
                if not isinstance(tumour, Tumour):
                    raise ValueError(f"Attributes.tumours must hold Tumour records, got {tumour!r}")
            object.__setattr__(self, "tumours", tumours)
        organs: dict[str, OrganFinding] = {}
        for name in sorted(self.organs, key=_organ_order):
            if name not in ORGANS:
                raise ValueError(f"unknown organ {name!r}; valid organs: {', '.join(ORGANS)}")
            finding = self.organs[name]
            if not isinstance(finding, OrganFinding):
                raise ValueError(f"Attributes.organs[{name!r}] must be an OrganFinding, got {finding!r}")
            organs[name] = finding
        # A read-only view of a private copy: the caller's dict cannot change the record later.
        object.__setattr__(self, "organs", MappingProxyType(organs))

    def replace(self, **changes: Any) -> Attributes:
        """A copy with some fields changed (``dataclasses.replace`` that keeps ``organs`` a dict)."""
        values = {
            "sex": self.sex,
            "age": self.age,
            "phase": self.phase,
            "tumours": self.tumours,
            "organs": dict(self.organs),
            "field_of_view": self.field_of_view,
        }
        values.update(changes)
        return Attributes(**values)

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only organs mapping (MappingProxyType) cannot be pickled; records cross process
        # boundaries (training data workers), so pickle through the JSON form.
        return (Attributes.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (only str, int, float, bool, None, list, dict)."""
        return {
            "sex": self.sex,
            "age": self.age,
            "phase": self.phase,
            "tumours": None if self.tumours is None else [t.to_dict() for t in self.tumours],
            "organs": {name: finding.to_dict() for name, finding in self.organs.items()},
            "field_of_view": self.field_of_view,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attributes:
        """Inverse of `to_dict`; raises ``ValueError`` on unknown keys or invalid values."""
        _check_keys("Attributes", data, {"sex", "age", "phase", "tumours", "organs", "field_of_view"})
        tumours = data.get("tumours")
        organs = data.get("organs") or {}
        if not isinstance(organs, Mapping):
            raise ValueError(f"Attributes.organs must be a mapping, got {type(organs).__name__}")
        return cls(
            sex=data.get("sex"),
            age=data.get("age"),
            phase=data.get("phase"),
            tumours=None if tumours is None else tuple(Tumour.from_dict(t) for t in tumours),
            organs={name: OrganFinding.from_dict(f) for name, f in organs.items()},
            field_of_view=data.get("field_of_view"),
        )


#: Solid organs whose volume a report grades against a normal range, without the gallbladder (its
#: volume follows meals): an organ of these a prompt leaves unchanged should be of normal size.
SOLID_ORGANS: tuple[str, ...] = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas")


#: Stated fields of view that need not hold the upper-abdominal organs whole (a scan of the pelvis
#: is meant to miss the liver).
CUTTING_FIELDS: tuple[str, ...] = ("pelvis", "partial")


def changed_organs(prompt: Attributes) -> set[str]:
    """Organs whose size a prompt changes: stated enlarged, small or absent, given a volume or a
    severity, or hosting a stated tumour ("renal" without a side: both kidneys). An organ called
    normal is not changed."""
    changed = {
        name
        for name, finding in prompt.organs.items()
        if finding.state not in (None, "normal") or finding.volume_ml is not None or finding.severity is not None
    }
    for tumour in prompt.tumours or ():
        if tumour.organ == "kidney":
            changed |= {"kidney_right", "kidney_left"}
        elif tumour.organ is not None:
            changed.add(tumour.organ)
    return changed


def _check_keys(kind: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{kind} must be a mapping, got {type(data).__name__}")
    extra = set(data) - allowed
    if extra:
        raise ValueError(f"unknown {kind} field(s): {', '.join(sorted(map(str, extra)))}")


def _organ_order(name: str) -> tuple[int, str]:
    # Vocabulary order (anatomical, as reports list organs); unknown names last, then refused.
    return (NAMES.index(name) if name in NAMES else len(NAMES), str(name))
