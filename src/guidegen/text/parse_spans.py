"""Spans of a sentence and the words each holds, for the prompt parser (`guidegen.text.parse`).

`split_spans` cuts a sentence into spans at commas and connectors ("with", "and", "from" …);
`analyse_span` finds the organ, tumour, state, size, volume, severity and partial-imaging words
of one span (`guidegen.text.parse_lexicon`) as `Hit`s with their positions, which the parser then
relates to each other by distance (`nearest`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from guidegen.text.parse_lexicon import (
    KEEP_CONNECTORS,
    NO_SPLIT_BEFORE,
    NOT_TUMOUR_AFTER,
    NOT_TUMOUR_BEFORE,
    ORGAN_RE,
    ORGAN_TABLE,
    PARTIAL_RE,
    SEVERITY_RE,
    SIZE_RE,
    SPAN_RE,
    STATE_NEGATION_BEFORE,
    STATE_RE,
    STATE_TABLE,
    TUMOUR_RE,
    TUMOUR_TABLE,
    VOLUME_RE,
)


@dataclass
class Hit:
    """One lexicon match in a span: its character range, what it means (``value``: the organ, the
    state, the size in mm …) and a detail (``extra``: the colon segment, the tumour word …)."""

    start: int
    end: int
    value: object = None
    extra: object = None
    tumour_site: bool = False  # an organ word qualifying a tumour word ("liver lesion")


def _gap(a: Hit, b: Hit) -> int:
    """Characters between two hits (0 when they touch or overlap)."""
    return max(a.start - b.end, b.start - a.end, 0)


def nearest(hits: list[Hit], query: Hit) -> tuple[int, Hit] | None:
    """The hit closest to ``query`` and its gap; ties go to the earlier hit.

    ``hits`` come from one ``finditer`` (sorted, non-overlapping), so only the neighbours of the
    query's position can be nearest: a bisection keeps long prompts linear overall.
    """
    if not hits:
        return None
    index = _bisect(hits, query.start)
    best: tuple[int, Hit] | None = None
    for i in range(max(index - 2, 0), min(index + 2, len(hits))):
        gap = _gap(hits[i], query)
        if best is None or gap < best[0]:
            best = (gap, hits[i])
    return best


def _bisect(hits: list[Hit], position: int) -> int:
    lo, hi = 0, len(hits)
    while lo < hi:
        mid = (lo + hi) // 2
        if hits[mid].start < position:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class Span:
    """A piece of a sentence between connectors (``connector``: the one that opened it) and the
    lexicon hits in it, filled in by `analyse_span`."""

    text: str
    connector: str
    organs: list[Hit] = field(default_factory=list)
    tumours: list[Hit] = field(default_factory=list)
    states: list[Hit] = field(default_factory=list)
    sizes: list[Hit] = field(default_factory=list)
    volumes: list[Hit] = field(default_factory=list)
    severities: list[Hit] = field(default_factory=list)
    partials: list[Hit] = field(default_factory=list)
    free_organs: list[Hit] = field(default_factory=list)  # organ words not qualifying a tumour word

    @property
    def organ_only(self) -> bool:
        return bool(self.organs) and not (self.tumours or self.states or self.sizes or self.volumes or self.partials)


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def split_spans(sentence: str) -> list[Span]:
    """Cut a sentence into spans at commas and connectors (not inside "consistent with …")."""
    spans: list[Span] = []
    start, connector = 0, ""
    for match in SPAN_RE.finditer(sentence):
        piece = sentence[start : match.start()].strip()
        # A short window: a long unsplit run must not be rescanned at every connector.
        if NO_SPLIT_BEFORE.search(sentence[max(start, match.start() - 40) : match.start()].rstrip()):
            continue  # keep "consistent with …", "arising from …" in one span
        spans.append(Span(piece, connector))
        connector = match.group(0).strip()
        start = match.start() if connector in KEEP_CONNECTORS else match.end()
    spans.append(Span(sentence[start:].strip(), connector))
    return [s for s in spans if s.text]


def analyse_span(span: Span) -> None:
    """Fill in the hits of ``span``: organs, sizes, volumes, tumours, states, severities, partials."""
    text = span.text
    for match in ORGAN_RE.finditer(text):
        organ, segment = ORGAN_TABLE[int(match.lastgroup[1:])][1:]  # type: ignore[index]
        span.organs.append(Hit(match.start(), match.end(), organ, segment))
    for match in SIZE_RE.finditer(text):
        size = _size_mm(match)
        if size > 0:  # "0 cm" states no size
            span.sizes.append(Hit(match.start(), match.end(), size))
    for match in VOLUME_RE.finditer(text):
        whole, decimals = match.group(1), match.group(2)
        value = float(whole.replace(",", "")) + (float("0." + decimals) if decimals else 0.0)
        span.volumes.append(Hit(match.start(), match.end(), value))
    for match in TUMOUR_RE.finditer(text):
        if match.group(0) in ("mass", "masses"):
            # Short windows / anchored matches, not whole-prefix searches: linear on long spans.
            if NOT_TUMOUR_BEFORE.search(text, max(match.start() - 6, 0), match.start()) or NOT_TUMOUR_AFTER.match(
                text, match.end()
            ):
                continue
        implied = TUMOUR_TABLE[int(match.lastgroup[1:])][1]  # type: ignore[index]
        span.tumours.append(Hit(match.start(), match.end(), implied, match.group(0)))
    # Organ words used as a tumour's site adjective ("liver lesion") carry no organ state or volume.
    tumour_starts = {t.start for t in span.tumours}
    for organ in span.organs:
        organ.tumour_site = bool(tumour_starts & {organ.end, organ.end + 1, organ.end + 2})
    span.free_organs = [o for o in span.organs if not o.tumour_site]
    taken = span.organs
    for match in STATE_RE.finditer(text):
        hit = Hit(match.start(), match.end())
        near = nearest(taken, hit)
        if near is not None and hit.start < near[1].end and near[1].start < hit.end:
            continue  # "small" of "small bowel"
        state, implied = STATE_TABLE[int(match.lastgroup[1:])][1:]  # type: ignore[index]
        if state == "small" and not _describes_organ(hit, span):
            continue
        if state in ("absent", "small", "enlarged", "normal") and span.tumours and not implied:
            # In a tumour span these words describe the tumour ("no mass is seen", "enlarged mass"),
            # unless they sit right before an organ word that does not itself qualify the tumour.
            if state == "absent" or not _describes_organ(hit, span):
                continue
        # Only a short window before the word: keeps the search linear on very long spans.
        if state in ("enlarged", "small") and STATE_NEGATION_BEFORE.search(text[max(0, hit.start - 40) : hit.start]):
            state = "normal"  # "no splenomegaly", "without enlargement of the liver"
        hit.value, hit.extra = state, implied
        span.states.append(hit)
    for match in SEVERITY_RE.finditer(text):
        span.severities.append(Hit(match.start(), match.end(), match.lastgroup))
    for match in PARTIAL_RE.finditer(text):
        span.partials.append(Hit(match.start(), match.end(), True))


def _describes_organ(hit: Hit, span: Span) -> bool:
    """Whether a state adjective describes an organ rather than a tumour.

    True when an organ word follows it (optionally after a side or "the") and is not itself followed
    by a tumour word ("small left kidney" yes; "small liver lesion" no), or when it is predicative
    ("the kidney is small"), i.e. an organ word precedes it and no tumour word follows it closely.
    """
    index = _bisect(span.organs, hit.end)
    organ = span.organs[index] if index < len(span.organs) else None
    if organ is not None and organ.start - hit.end <= 12:
        return not organ.tumour_site
    following = _bisect(span.tumours, hit.end)
    if following < len(span.tumours) and span.tumours[following].start - hit.end <= 12:
        return False  # "small lesion", "enlarged mass"
    return _bisect(span.organs, hit.start) > 0 or not span.tumours


def _size_mm(match: re.Match[str]) -> float:
    final_unit = match.group(7)
    values = []
    for number_group, unit_group in ((1, 2), (3, 4), (5, 6)):
        number = match.group(number_group)
        if number is None:
            continue
        unit = match.group(unit_group) or final_unit
        values.append(_number(number) * (10.0 if unit.startswith("c") else 1.0))
    return max(values)
