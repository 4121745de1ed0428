"""Write an English radiology-style report from an `Attributes` record.

Public abdominal CT data sets come without reports, so GuideGen's training text is written from
label-map measurements (`report_from_labels`). The report has EXAMINATION / PATIENT / FINDINGS /
IMPRESSION sections and states exactly the known fields of the record: unknown fields are left out,
never guessed. Wording varies with ``seed`` (synonyms, sentence templates, cm or mm, header names)
so that a text encoder does not learn one fixed phrasing; a given seed always gives the same text,
and ``seed=None`` gives the canonical (first) wording.

Every template is one the prompt parser (`guidegen.text.parse`) reads back, which the round-trip
tests check: ``parse_prompt(write_report(a, seed))`` recovers the stated fields of ``a``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import BY_NAME
from guidegen.text.attributes import Attributes, OrganFinding, Tumour
from guidegen.text.measure import measure_labels

_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
_COLON_SITES = {
    "caecum": ("caecum", "cecum"),
    "ascending": ("ascending colon",),
    "transverse": ("transverse colon",),
    "descending": ("descending colon",),
    "sigmoid": ("sigmoid colon",),
    "rectum": ("rectum",),
}
_PHASES = {
    "non_contrast": ("without intravenous contrast", "non-contrast study", "unenhanced acquisition"),
    "arterial": ("arterial phase", "late arterial phase", "arterial phase after intravenous contrast"),
    "portal_venous": ("portal venous phase", "portal venous phase after intravenous contrast", "venous phase"),
    "delayed": ("delayed phase", "delayed (excretory) phase"),
}
_EXAMS = {
    None: ("CT",),
    "abdomen": ("CT of the abdomen", "abdominal CT", "CT abdomen"),
    "abdomen_pelvis": ("CT of the abdomen and pelvis", "abdominopelvic CT", "CT abdomen and pelvis"),
    "upper_abdomen": ("CT of the upper abdomen", "upper abdominal CT"),
    "pelvis": ("CT of the pelvis", "pelvic CT"),
    "partial": ("CT with a limited field of view", "CT, limited field of view"),
}
_ENLARGED_ADVERB = {"mild": ("mildly", "slightly"), "moderate": ("moderately",), "marked": ("markedly", "massively")}
_SMALL_ADVERB = {"mild": ("slightly", "mildly"), "moderate": ("moderately",), "marked": ("markedly", "severely")}
_SEVERITY_ADJECTIVE = {"mild": ("mild",), "moderate": ("moderate",), "marked": ("marked", "severe")}
_MEGALY = {"spleen": "splenomegaly", "liver": "hepatomegaly"}
_NOUNS = (("mass", "masses"), ("tumour", "tumours"), ("lesion", "lesions"), ("tumor", "tumors"))


class _Picker:
    """Seeded choice among wordings; without a seed, always the first (canonical) wording."""

    def __init__(self, seed: int | None):
        self.rng = None if seed is None else random.Random(seed)

    def __call__(self, options: Sequence[str]) -> str:
        return options[0] if self.rng is None else self.rng.choice(list(options))

    def index(self, n: int) -> int:
        return 0 if self.rng is None else self.rng.randrange(n)


def write_report(attrs: Attributes, seed: int | None = None) -> str:
    """Write a radiology-style report stating the known fields of ``attrs``.

    Args:
        attrs: the record to describe.
        seed: picks among synonyms and sentence templates; ``None`` gives the canonical wording.
            The same seed and record always give the same text.

    Returns:
        The report: header lines (EXAMINATION, PATIENT), FINDINGS and IMPRESSION, separated by
        newlines. Volumes are in mL, tumour diameters in cm (one decimal) or mm (whole numbers).
    """
    pick = _Picker(seed)
    lines = [_exam_line(attrs, pick)]
    patient = _patient_phrase(attrs, pick)
    if patient is not None:
        lines.append(f"{pick(('PATIENT', 'CLINICAL DETAILS'))}: {_capital(patient)}.")
    findings = _tumour_findings(attrs.tumours, pick) + _organ_findings(attrs.organs, pick)
    if not findings:
        findings = ["No organ findings are available."]
    joiner = pick((" ", "\n"))
    lines.append("FINDINGS:" + joiner + joiner.join(findings))
    lines.append(f"{pick(('IMPRESSION', 'CONCLUSION'))}: " + " ".join(_impression(attrs, pick)))
    return "\n".join(lines)


def report_from_labels(
    labels: Volume,
    annotated: Iterable[str] | None = None,
    seed: int | None = None,
    *,
    tumour_host: str | None = None,
) -> tuple[str, Attributes]:
    """Measure a GuideGen label map and write its report.

    Args:
        labels: label map in GuideGen vocabulary ids.
        annotated: annotated class names (see `guidegen.text.measure.measure_labels`).
        seed: wording seed (see `write_report`).
        tumour_host: host assumed for tumours whose host the map cannot show (see
            `guidegen.text.measure.measure_labels`).

    Returns:
        ``(report, attributes)``: the text and the record it states.

    Raises:
        InputError: label ids outside the GuideGen vocabulary or unknown annotated names.
    """
    attrs = measure_labels(labels, annotated, tumour_host=tumour_host).attributes
    return write_report(attrs, seed), attrs


# --------------------------------------------------------------------------------------------------
# Header


def _exam_line(attrs: Attributes, pick: _Picker) -> str:
    exam = pick(_EXAMS[attrs.field_of_view])
    if attrs.phase is not None:
        exam += ", " + pick(_PHASES[attrs.phase])
    return f"{pick(('EXAMINATION', 'EXAM', 'TECHNIQUE'))}: {exam}."


def _patient_phrase(attrs: Attributes, pick: _Picker) -> str | None:
    sex, age = attrs.sex, attrs.age
    if sex is None and age is None:
        return None
    noun = {"male": ("man", "male"), "female": ("woman", "female")}
    if sex is not None and age is not None:
        person, adjective = noun[sex]
        letter = "M" if sex == "male" else "F"
        return pick(
            (
                f"{age}-year-old {person}",
                f"{adjective}, {age} years old",
                f"{adjective} patient, aged {age}",
                f"{age}-year-old {adjective}",
                f"{age}{letter}",
            )
        )
    if age is not None:
        return pick((f"{age}-year-old patient", f"patient aged {age}", f"{age} years old"))
    return pick((f"{sex} patient", f"sex: {sex}", noun[sex][0]))  # type: ignore[index]


# --------------------------------------------------------------------------------------------------
# Tumours


def _site(tumour: Tumour, pick: _Picker) -> str | None:
    organ, segment = tumour.organ, tumour.segment
    if organ is None:
        return None
    if organ == "colon":
        return pick(_COLON_SITES[segment]) if segment else pick(("colon", "large bowel"))
    if organ == "liver" and segment:
        side = segment.split()[0]
        return pick((f"{side} lobe of the liver", f"{side} hepatic lobe"))
    if organ == "kidney":
        return "kidney"
    return BY_NAME[organ].display


def _size(mm: float, pick: _Picker) -> str:
    # One decimal in cm or whole mm: both resolve to within 0.5 mm of the measured value.
    # Sub-centimetre lesions are given in mm, as radiologists do ("8 mm", not "0.8 cm").
    if mm >= 9.95 and pick(("cm", "mm")) == "cm":
        return f"{mm / 10:.1f} cm"
    return f"{mm:.0f} mm"


def _count_phrase(count: int | None, pick: _Picker) -> str:
    if count is None:
        return pick(("multiple", "several", "numerous"))
    if count in _COUNT_WORDS:
        return pick((_COUNT_WORDS[count], str(count)))
    return str(count)


def _tumour_sentence(tumour: Tumour, pick: _Picker) -> str:
    site = _site(tumour, pick)
    singular, plural = _NOUNS[pick.index(len(_NOUNS))]
    size = None if tumour.diameter_mm is None else _size(tumour.diameter_mm, pick)
    if tumour.count == 1:
        sized = f"{size} {singular}" if size else singular
        a_sized = _article(sized)
        if site is None:
            return pick(
                (
                    f"There is {a_sized} of indeterminate organ of origin.",
                    f"{_capital(a_sized)} is present, its organ of origin cannot be determined.",
                )
            )
        templates = [
            f"There is {a_sized} in the {site}.",
            f"The {site} contains {a_sized}.",
            f"{_capital(site)}: {sized}.",
        ]
        if size:
            templates.append(f"A {singular} measuring {size} is present in the {site}.")
        return pick(templates)
    count = _count_phrase(tumour.count, pick)
    largest = f", the largest measuring {size}" if size else ""
    if site is None:
        return f"{_capital(count)} {plural} of indeterminate organ of origin{largest}."
    return pick(
        (
            f"{_capital(count)} {plural} in the {site}{largest}.",
            f"There are {count} {plural} in the {site}{largest}.",
            f"{_capital(site)}: {count} {plural}{largest}.",
        )
    )


def _tumour_findings(tumours: tuple[Tumour, ...] | None, pick: _Picker) -> list[str]:
    if tumours is None:
        return []  # unknown: say nothing rather than "no tumour"
    if not tumours:
        return [pick(("No tumour is identified.", "No focal mass lesion is seen.", "No evidence of malignancy."))]
    return [_tumour_sentence(t, pick) for t in tumours]


def _tumour_impression(tumour: Tumour, pick: _Picker) -> str:
    # The site may be worded differently from the findings ("caecum" / "cecum"): readers, and the
    # parser, match the two mentions by organ and segment.
    site = _site(tumour, pick)
    singular, plural = _NOUNS[pick.index(len(_NOUNS))]
    size = "" if tumour.diameter_mm is None else f", {_size(tumour.diameter_mm, pick)}"
    place = "of indeterminate organ of origin" if site is None else f"in the {site}"
    if tumour.count == 1:
        return f"{_capital(singular)} {place}{size}."
    largest = f", the largest {size[2:]}" if size else ""
    return f"{_capital(_count_phrase(tumour.count, pick))} {plural} {place}{largest}."


# --------------------------------------------------------------------------------------------------
# Organs


def _volume(finding: OrganFinding, pick: _Picker) -> str | None:
    if finding.volume_ml is None:
        return None
    value = finding.volume_ml
    number = f"{value:.0f}" if value >= 10 else f"{value:.1f}"
    if value >= 1000 and pick(("plain", "grouped")) == "grouped":
        number = f"{value:,.0f}"
    text = f"{number} {pick(('mL', 'ml', 'cc'))}"
    return f"at least {text}" if finding.partial else text


def _organ_sentences(name: str, finding: OrganFinding, pick: _Picker) -> list[str]:
    display = BY_NAME[name].display
    volume = _volume(finding, pick)
    bracket = f" ({volume})" if volume else ""
    state, severity = finding.state, finding.severity
    sentences: list[str] = []
    if state == "enlarged":
        adverb = pick(_ENLARGED_ADVERB[severity]) + " " if severity else ""
        adjective = pick(_SEVERITY_ADJECTIVE[severity]) + " " if severity else ""
        templates = [
            f"The {display} is {adverb}enlarged{bracket}.",
            f"{_capital(display)}: {adjective}enlargement{bracket}.",
        ]
        if name in _MEGALY:
            templates.append(f"{_capital(adjective + _MEGALY[name])}{bracket}.")
        sentences.append(pick(templates))
    elif state == "normal":
        sentences.append(
            pick(
                (
                    f"The {display} is normal in size{bracket}.",
                    f"{_capital(display)}: normal size{bracket}.",
                    f"Normal-sized {display}{bracket}.",
                )
            )
        )
    elif state == "small":
        adverb = pick(_SMALL_ADVERB[severity]) + " " if severity else ""
        adjective = pick(_SEVERITY_ADJECTIVE[severity]) + " " if severity else ""
        sentences.append(
            pick(
                (
                    f"The {display} is {adverb}small{bracket}.",
                    f"{_capital(adjective + 'atrophy')} of the {display}{bracket}.",
                    f"{_capital(display)}: {adverb}small{bracket}.",
                )
            )
        )
    elif state == "absent":
        sentences.append(
            pick(
                (
                    f"The {display} is not seen.",
                    f"{_capital(display)}: not visualised.",
                    f"The {display} is absent from the imaged volume.",
                )
            )
        )
        return sentences  # a volume or partial view of an absent organ says nothing more
    elif finding.partial:
        sentences.append(
            pick(
                (
                    f"The {display} is only partially imaged{bracket}.",
                    f"{_capital(display)}: partially included in the field of view"
                    + (f", {volume}." if volume else "."),
                )
            )
        )
        return sentences
    elif volume:
        sentences.append(
            pick(
                (
                    f"The {display} measures {volume}.",
                    f"{_capital(display)} volume: {volume}.",
                    f"{_capital(display)}: {volume}.",
                )
            )
        )
    if finding.partial and state is not None:
        sentences.append(f"The {display} is only partially imaged.")
    return sentences


def _organ_findings(organs: Mapping[str, OrganFinding], pick: _Picker) -> list[str]:
    out: list[str] = []
    for name, finding in organs.items():
        out.extend(_organ_sentences(name, finding, pick))
    return out


def _organ_impression(name: str, finding: OrganFinding, pick: _Picker) -> str | None:
    display = BY_NAME[name].display
    severity = finding.severity
    if finding.state == "enlarged":
        adjective = pick(_SEVERITY_ADJECTIVE[severity]) + " " if severity else ""
        adverb = pick(_ENLARGED_ADVERB[severity]) + " " if severity else ""
        templates = [f"{adjective}enlargement of the {display}.", f"{adverb}enlarged {display}."]
        if name in _MEGALY:
            templates.insert(0, f"{adjective}{_MEGALY[name]}.")
        return _capital(pick(templates))
    if finding.state == "small":
        adjective = pick(_SEVERITY_ADJECTIVE[severity]) + " " if severity else ""
        adverb = pick(_SMALL_ADVERB[severity]) + " " if severity else ""
        return _capital(pick((f"{adjective}atrophy of the {display}.", f"{adverb}small {display}.")))
    return None


def _impression(attrs: Attributes, pick: _Picker) -> list[str]:
    items: list[str] = []
    if attrs.tumours is not None:
        if attrs.tumours:
            items.extend(_tumour_impression(t, pick) for t in attrs.tumours)
        else:
            items.append(pick(("No tumour identified.", "No evidence of malignancy.")))
    for name, finding in attrs.organs.items():
        item = _organ_impression(name, finding, pick)
        if item is not None:
            items.append(item)
    if items:
        return items
    known = attrs.tumours is not None or any(f.state is not None for f in attrs.organs.values())
    # "No abnormality" only when something was assessed; otherwise the record says nothing.
    return [pick(("No significant abnormality.", "Unremarkable study."))] if known else ["No findings to report."]


def _article(phrase: str) -> str:
    """``phrase`` with "a" or "an": "an 8 mm mass", "an 11.5 cm mass", "a 4 cm mass", "an oval …"."""
    first = phrase.split()[0]
    integer = first.split(".")[0]
    if integer.isdigit():
        vowel_sound = (
            integer.startswith("8")
            or integer in ("11", "18")
            or (len(integer) in (5, 6) and integer[:2] in ("11", "18"))
        )
    else:
        vowel_sound = first[:1] in "aeio"
    return ("an " if vowel_sound else "a ") + phrase


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def write_prompt(attrs: Attributes, seed: int | None = None) -> str:
    """A terse, prompt-like description ("68-year-old man, 4.0 cm sigmoid colon tumour, mild splenomegaly").

    The mask sampler is trained on both full reports and these short texts, so that the short
    prompts users type are in its training distribution. Built from the same phrases as the
    report's impression, so `parse_prompt` reads it back the same way.
    """
    pick = _Picker(seed)
    parts: list[str] = []
    patient = _patient_phrase(attrs, pick)
    if patient is not None:
        parts.append(patient)
    if attrs.phase is not None:
        parts.append(pick(_PHASES[attrs.phase]))
    for item in _impression(attrs, pick):
        if item == "No findings to report.":
            continue
        item = item.rstrip(".")
        parts.append(item[:1].lower() + item[1:] if not item[:2].isupper() else item)
    return ", ".join(parts) if parts else pick(("abdominal CT", "CT of the abdomen", "abdomen"))
