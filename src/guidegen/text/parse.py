"""Parse a free-text prompt ("68-year-old man, 4 cm sigmoid colon cancer, mild splenomegaly") into
an `Attributes` record.

A tolerant rule-based parser: Unicode normalisation, regular expressions and synonym tables, no
learned model. It reads everything GuideGen's report writer (`guidegen.text.report`) states, so
``parse_prompt(write_report(a))`` recovers the stated fields of ``a``, and the usual ways people
phrase the same things in a prompt. The terms it knows are in `guidegen.text.parse_lexicon`;
cutting a sentence into spans and finding the terms in each is `guidegen.text.parse_spans`; this
module normalises the text and relates what the spans hold (the steps below).

How it reads a prompt:

1. Normalise: NFKC, drop format/control characters and combining marks, ``æ``→``ae``, ``×``→``x``,
   Unicode dashes → ``-``, case-fold, collapse white space.
2. Sex, age, contrast phase and field of view are searched in the whole text (first mention wins).
3. The text is cut into sentences (``. ; ! ?`` and line breaks, not decimal points) and each sentence
   into *spans* at commas and at the connectors "with", "and", "plus", "from" … . A span holding a
   tumour word ("cancer", "mass", "HCC" …) is one tumour mention; its host organ is the organ word
   nearest to the tumour word in the span, its size the longest of the sizes in it (or in a
   following size-only span: "…, the largest measuring 3 cm"), its count the count word before the
   tumour word ("two", "3", "multiple"; a plural noun alone means "more than one").
4. Organ states ("splenomegaly", "enlarged", "atrophic", "normal in size", "not seen", "partially
   imaged") attach to the nearest organ word in their span, or to a run of organ-only spans before
   it ("the liver, spleen and kidneys are normal"); volumes in mL to the nearest organ.
5. Mentions of the same tumour in different sentences (findings, then impression) are merged; in
   one sentence, repeated mentions of one site are counted as separate tumours.

Decisions (documented because a prompt can be ambiguous):

* "with contrast" / "contrast-enhanced" without a named phase → ``"portal_venous"``, the phase of
  routine abdominal contrast CT (~70 s); "nephrographic" → ``"portal_venous"`` (similar timing);
  "excretory" / "urographic" → ``"delayed"``; "CT angiography" → ``"arterial"``.
* Negations ("no tumour", "without tumor", "tumour-free", "no evidence of malignancy") give
  ``tumours=()`` only when no tumour is stated positively elsewhere; "to rule out malignancy" states
  nothing. "No splenomegaly" / "spleen not enlarged" → spleen ``"normal"``.
* "renal mass" without a side → host ``"kidney"``; a kidney *state* without a side is dropped (it
  cannot be put on either kidney); "kidneys" → both. A side set off by commas after the tumour and
  its size gives the side ("small renal tumour, 2.5 cm, right kidney", "…, left side"), unless a
  state follows it ("…, right kidney, enlarged" describes the kidney).
* Hepatic / splenic flexure → ascending / descending colon (the record has no flexure segments).
* "small" is only an organ state when it describes the organ, not a tumour ("small liver lesion").
* A later organ-less definite reference ("the mass measures 4 cm") refers to the previous tumour.
* An organ-less mention set off by a comma right after a mention without a size describes it:
  "liver metastases, two lesions up to 25 mm" → two liver tumours, the largest 25 mm ("another …"
  stays a separate tumour).

Known limitations: one tumour mentioned once with and once without its segment is read as two
groups; "hepatic and splenic lesions" attaches the lesions to the spleen only; no coreference
beyond the rule above; English only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from guidegen.errors import InputError
from guidegen.labels.vocabulary import ORGANS
from guidegen.text.attributes import MAX_AGE, Attributes, OrganFinding, Tumour
from guidegen.text.parse_lexicon import (
    AGE_RE,
    CONTRAST_RE,
    COUNT_RE,
    COUNT_WORDS,
    DEFINITE_BEFORE,
    FOV_PARTIAL_RE,
    FOV_RE,
    KEEP_CONNECTORS,
    NEGATION_AFTER,
    NEGATION_BEFORE,
    NEW_TUMOUR,
    PHASE_RE,
    PHASE_TABLE,
    PLACE_START,
    SENTENCE_RE,
    SEX_RE,
    SIDE_ONLY,
    TUMOUR_FREE_AFTER,
    UNCERTAIN,
)
from guidegen.text.parse_spans import Hit, Span, analyse_span, nearest, split_spans

#: Longer prompts are refused (every rule is linear-time, this only bounds memory and latency).
MAX_PARSE_CHARS = 1_000_000

# --------------------------------------------------------------------------------------------------
# Normalisation

_TRANSLATE = str.maketrans(
    {
        "æ": "ae",
        "Æ": "ae",
        "œ": "oe",
        "Œ": "oe",
        "×": "x",
        "✕": "x",
        "⨯": "x",
        "‐": "-",
        "‑": "-",
        "‒": "-",
        "–": "-",
        "—": "-",
        "―": "-",
        "−": "-",
        "‘": "'",
        "’": "'",
        "“": '"',
        "”": '"',
        "µ": "u",
        "\t": " ",
        "\r": "\n",
        "\u2028": "\n",
        "\u2029": "\n",
    }
)
_DROP_CATEGORIES = {"Mn", "Me", "Cf", "Cs", "Co", "Cn"}


def normalise(text: str) -> str:
    """NFKC, strip marks and invisible characters, unify dashes, case-fold, collapse spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    text = unicodedata.normalize("NFKD", text)
    chars = []
    for ch in text:
        if ch == "\n":
            chars.append(ch)
            continue
        category = unicodedata.category(ch)
        if category in _DROP_CATEGORIES:
            continue  # combining marks, bidi/zero-width controls, surrogates, private use
        chars.append(" " if category.startswith("C") or category.startswith("Z") else ch)
    text = "".join(chars).casefold()
    text = re.sub(r"[^\S\n]+", " ", text)
    return re.sub(r" ?\n[\s]*", "\n", text).strip()


# --------------------------------------------------------------------------------------------------
# Public API


def parse_prompt(text: str) -> Attributes:
    """Parse a free-text prompt into an `Attributes` record.

    Args:
        text: prompt or report in English, any length up to `MAX_PARSE_CHARS` characters.

    Returns:
        The attributes the text states; everything it does not state is ``None`` (or, for organs,
        left out of ``organs``).

    Raises:
        InputError: empty / whitespace-only text, text that is not a string, or a text over
            `MAX_PARSE_CHARS` characters.
    """
    if not isinstance(text, str):
        raise InputError(None, f"prompt must be text, got {type(text).__name__}")
    if len(text) > MAX_PARSE_CHARS:
        raise InputError(None, f"prompt is too long ({len(text):,} characters, limit {MAX_PARSE_CHARS:,})")
    norm = normalise(text)
    if not norm:
        raise InputError(None, "empty prompt")
    sex = _parse_sex(norm)
    age = _parse_age(norm)
    phase = _parse_phase(norm)
    fov = _parse_fov(norm)
    reader = _Reader()
    for sentence in SENTENCE_RE.split(norm):
        if sentence.strip():
            reader.read_sentence(sentence.strip())
    return Attributes(
        sex=sex,
        age=age,
        phase=phase,
        tumours=reader.tumours(),
        organs=reader.organ_findings(),
        field_of_view=fov,
    )


# --------------------------------------------------------------------------------------------------
# Whole-text fields


def _parse_sex(text: str) -> str | None:
    match = SEX_RE.search(text)
    if match is None:
        return None
    return "male" if any(match.group(g) for g in ("male", "male2", "male3", "male4", "male5", "male6")) else "female"


def _parse_age(text: str) -> int | None:
    for match in AGE_RE.finditer(text):
        value = next(v for v in match.groupdict().values() if v is not None)
        age = int(value)
        if 0 <= age <= MAX_AGE:
            return age
    return None


def _parse_phase(text: str) -> str | None:
    match = PHASE_RE.search(text)
    if match is not None:
        return PHASE_TABLE[int(match.lastgroup[1:])][1]  # type: ignore[index]
    if CONTRAST_RE.search(text):
        return "portal_venous"  # routine abdominal contrast CT is acquired in the portal venous phase
    return None


def _parse_fov(text: str) -> str | None:
    if FOV_PARTIAL_RE.search(text):
        return "partial"
    match = FOV_RE.search(text)
    if match is None:
        return None
    groups = {k.rstrip("0123456789") for k, v in match.groupdict().items() if v is not None}
    if "ap" in groups:
        return "abdomen_pelvis"
    if "upper" in groups:
        return "upper_abdomen"
    if "abdomen" in groups:
        return "abdomen"
    return "pelvis"


@dataclass
class _Mention:
    organ: str | None
    segment: str | None
    diameter_mm: float | None
    count: int | None


@dataclass
class _OrganNote:
    state: str | None = None
    severity: str | None = None
    volume_ml: float | None = None
    partial: bool | None = None


class _Reader:
    """Accumulates tumour mentions and organ notes over the sentences of one text."""

    def __init__(self) -> None:
        self.mentions: list[_Mention] = []
        self.negated = False
        self.notes: dict[str, _OrganNote] = {}

    # Tumours --------------------------------------------------------------------------------------

    def read_sentence(self, sentence: str) -> None:
        spans = split_spans(sentence)
        for span in spans:
            analyse_span(span)
        sentence_mentions: list[_Mention] = []
        last = -2  # span of the last mention
        for position, span in enumerate(spans):
            if not span.tumours:
                continue
            mention = self._mention(spans, position)
            if mention is None:
                continue
            previous = sentence_mentions[-1] if sentence_mentions else None
            if (
                previous is not None
                and last == position - 1
                and span.connector == ","
                and mention.organ is None
                and previous.organ is not None
                and previous.diameter_mm is None
                and not NEW_TUMOUR.search(span.text)
            ):
                # "liver metastases, two lesions up to 25 mm": an organ-less apposition right after a
                # mention without a size describes that mention's tumours.
                previous.diameter_mm = mention.diameter_mm
                previous.count = mention.count if previous.count is None else previous.count
            else:
                sentence_mentions.append(mention)
            last = position
        self._add_sentence_mentions(sentence_mentions)
        self._read_states(spans)

    def _mention(self, spans: list[Span], position: int) -> _Mention | None:
        span = spans[position]
        text = span.text
        first = span.tumours[0]
        before = text[: first.start]
        after = text[span.tumours[-1].end :]
        if UNCERTAIN.search(text):
            return None
        if (
            span.connector in KEEP_CONNECTORS
            or NEGATION_BEFORE.search(before)
            or NEGATION_AFTER.search(after)
            or any(TUMOUR_FREE_AFTER.match(text, t.end) for t in span.tumours)
        ):
            self.negated = True
            return None
        organ, segment = self._host(span, spans, position)
        sizes = [s.value for s in span.sizes]
        # Following size-only spans: "…, the largest measuring 3.1 cm".
        for later_position in range(position + 1, len(spans)):
            later = spans[later_position]
            if later.tumours or later.states or (later.organs and not PLACE_START.search(later.text)):
                break
            sizes.extend(s.value for s in later.sizes)
        count = self._count(span, first)
        diameter = max(sizes) if sizes else None  # type: ignore[type-var]
        if (
            organ is None
            and count == 1
            and DEFINITE_BEFORE.search(before.rstrip())
            and not NEW_TUMOUR.search(before)
            and self.mentions
        ):
            # "The mass measures 4 cm": the tumour already described.
            previous = self.mentions[-1]
            if diameter is not None:
                previous.diameter_mm = max(previous.diameter_mm or 0.0, diameter)
            return None
        return _Mention(organ, segment, diameter, count)  # type: ignore[arg-type]

    def _host(self, span: Span, spans: list[Span], position: int) -> tuple[str | None, str | None]:
        implied = next((t.value for t in span.tumours if t.value is not None), None)
        organs = span.organs
        if not organs:
            # An organ-only place phrase just before ("in the liver, there are …", "liver with …",
            # "liver: …") or just after ("a mass, in the sigmoid colon").
            previous = spans[position - 1] if position > 0 else None
            following = spans[position + 1] if position + 1 < len(spans) else None
            if (
                previous is not None
                and previous.organ_only
                and (span.connector in ("with", ":") or PLACE_START.search(previous.text))
            ):
                best = previous.organs[-1]
            elif following is not None and following.organ_only and PLACE_START.search(following.text):
                best = following.organs[0]
            else:
                apposition = self._apposition(spans, position)
                if apposition is not None and apposition.organ_only and len(apposition.organs) == 1:
                    # "tumour 3 cm, right kidney": the site set off after the size.
                    candidate = apposition.organs[0]
                    if implied is None or _compatible(str(candidate.value), str(implied)):
                        return str(candidate.value), candidate.extra  # type: ignore[return-value]
                if implied == "kidney":
                    return self._apposition_side(spans, position) or str(implied), None
                return (str(implied) if implied else None), None
        else:
            best = min(organs, key=lambda o: nearest(span.tumours, o)[0])  # type: ignore[index]
            if implied is not None:
                compatible = [o for o in organs if _compatible(str(o.value), str(implied))]
                if compatible:
                    best = min(compatible, key=lambda o: nearest(span.tumours, o)[0])  # type: ignore[index]
                else:
                    return str(implied), None
        organ, segment = str(best.value), best.extra
        if organ == "kidney":
            sides = set(re.findall(r"\b(right|left)\b", span.text))
            if len(sides) == 1:
                organ = f"kidney_{sides.pop()}"
        if organ == "kidney":
            organ = self._apposition_side(spans, position) or organ
        return organ, segment  # type: ignore[return-value]

    @staticmethod
    def _apposition(spans: list[Span], position: int) -> Span | None:
        """The comma-set-off phrase after a tumour mention and its size-only spans, when it says only
        where the tumour is: "small renal tumour, 2.5 cm, right kidney" → "right kidney". Not when a
        state follows without an organ ("…, right kidney, enlarged": the phrase is the state's subject).
        """
        index = position + 1
        while (
            index < len(spans)
            and spans[index].sizes
            and not (spans[index].organs or spans[index].tumours or spans[index].states or spans[index].volumes)
        ):
            index += 1  # "2.5 cm"
        if index >= len(spans) or spans[index].connector != ",":
            return None
        candidate = spans[index]
        after = spans[index + 1] if index + 1 < len(spans) else None
        if after is not None and after.states and not after.organs and not after.tumours:
            return None
        return candidate

    def _apposition_side(self, spans: list[Span], position: int) -> str | None:
        """A side for an unsided renal tumour from its apposition ("…, right kidney", "…, left side")."""
        following = self._apposition(spans, position)
        if following is None:
            return None
        if following.organ_only:
            sided = {str(o.value) for o in following.organs} & {"kidney_right", "kidney_left"}
            names = {str(o.value) for o in following.organs}
            if len(sided) == 1 and names <= sided | {"kidney"}:
                return sided.pop()
            return None
        match = SIDE_ONLY.match(following.text)
        return f"kidney_{match.group(1)}" if match else None

    @staticmethod
    def _count(span: Span, first: Hit) -> int | None:
        text = span.text
        last: tuple[int, int | None] | None = None
        for match in COUNT_RE.finditer(text, 0, first.start):
            probe = Hit(match.start(), match.end())
            if any(
                near is not None and near[1].start < probe.end and probe.start < near[1].end
                for near in (nearest(span.sizes, probe), nearest(span.volumes, probe))
            ):
                continue  # a number that is part of a size or volume
            if match.group("digits") is not None:
                tail = text[match.end() : match.end() + 12]
                if re.match(r" ?-? ?(?:years?|yrs?|yo|y/o|-year|%|x\b|by\b|cm|mm|ml|cc|m\b|f\b)", tail):
                    continue
                value: int | None = int(match.group("digits"))
                if value == 0:
                    continue
            else:
                value = COUNT_WORDS[match.group("word")]
            last = (match.start(), value)
        plural = any(_is_plural(str(t.extra)) for t in span.tumours)
        if last is not None:
            return last[1]
        return None if plural else 1

    def _add_sentence_mentions(self, mentions: list[_Mention]) -> None:
        # Within one sentence, several mentions of one site are separate tumours.
        merged: dict[tuple[str | None, str | None], _Mention] = {}
        for m in mentions:
            key = (m.organ, m.segment)
            if key in merged:
                old = merged[key]
                old.count = None if old.count is None or m.count is None else old.count + m.count
                old.diameter_mm = _max_or_none(old.diameter_mm, m.diameter_mm)
            else:
                merged[key] = m
        self.mentions.extend(merged.values())

    def tumours(self) -> tuple[Tumour, ...] | None:
        groups: dict[tuple[str | None, str | None], _Mention] = {}
        order: list[tuple[str | None, str | None]] = []
        for m in self.mentions:
            keys = [(m.organ, m.segment)]
            if m.organ == "kidneys":
                keys = [("kidney_right", None), ("kidney_left", None)]
                m = _Mention(None, None, m.diameter_mm, 1 if m.count == 2 else None)
            for key in keys:
                if key not in groups:
                    groups[key] = _Mention(key[0], key[1], m.diameter_mm, m.count)
                    order.append(key)
                    continue
                # The same site in another sentence (findings, then impression): one group.
                old = groups[key]
                old.diameter_mm = _max_or_none(old.diameter_mm, m.diameter_mm)
                old.count = _merge_counts(old.count, m.count)
        if not order:
            return () if self.negated else None
        out = []
        for key in order:
            m = groups[key]
            segment = m.segment if m.organ in ("colon", "liver") else None
            out.append(Tumour(organ=m.organ, segment=segment, diameter_mm=m.diameter_mm, count=m.count))
        return tuple(out)

    # Organ states ---------------------------------------------------------------------------------

    def _read_states(self, spans: list[Span]) -> None:
        pending: list[Hit] = []  # organ-only spans waiting for a state ("the liver, spleen and …")
        recent: list[str] = []  # organs the sentence is currently about ("Liver: enlarged, 2800 mL")
        for span in spans:
            if span.organ_only:
                pending.extend(span.organs)
                recent = [n for hit in span.organs for n in self._organ_names(hit, span.text)]
                continue
            touched: list[str] = []
            bare: bool | None = None
            for state in span.states:
                organs = self._state_organs(span, state, pending)
                if not organs and not span.organs and recent:
                    bare = _bare_state(span) if bare is None else bare
                    if bare:
                        organs = list(recent)  # "spleen volume 520 mL, enlarged"
                severity = None
                if state.value in ("enlarged", "small"):
                    near = nearest(span.severities, state)
                    if near is not None and near[0] <= 30:
                        severity = str(near[1].value)
                for organ in organs:
                    self._note(organ, state=str(state.value), severity=severity)
                    touched.append(organ)
            fallback = touched if touched else recent
            for volume in span.volumes:
                for organ in self._nearest_organs(span, volume, fallback):
                    self._note(organ, volume_ml=float(volume.value))  # type: ignore[arg-type]
            for partial in span.partials:
                for organ in self._nearest_organs(span, partial, fallback):
                    self._note(organ, partial=True)
            if touched:
                recent = list(dict.fromkeys(touched))
            elif span.tumours:
                recent = []
            elif span.organs:
                recent = [n for hit in span.organs for n in self._organ_names(hit, span.text)]
            pending = []

    def _state_organs(self, span: Span, state: Hit, pending: list[Hit]) -> list[str]:
        implied = tuple(state.extra or ())
        if implied:
            names = list(implied)
            if names == ["kidney"]:
                names = self._sided_kidney(span.text)
            return names
        organs = span.free_organs
        if organs:
            best = nearest(organs, state)[1]  # type: ignore[index]
            chosen = [best]
            # One state word after several organs of a run: "the liver, spleen and kidneys are normal".
            if pending and len(span.states) == 1:
                chosen = [*pending, best]
        else:
            chosen = list(pending)
        return [name for hit in chosen for name in self._organ_names(hit, span.text)]

    def _nearest_organs(self, span: Span, hit: Hit, fallback: list[str]) -> list[str]:
        """Organ(s) a volume or "partially imaged" belongs to: nearest organ word in the span, else
        the organs its state words imply, else the one organ the sentence was just about."""
        candidates = span.free_organs
        if candidates:
            best = nearest(candidates, hit)[1]  # type: ignore[index]
            return self._organ_names(best, span.text)
        implied = [name for s in span.states for name in (s.extra or ()) if name != "kidney"]
        if implied:
            return implied[:1] if len(set(implied)) == 1 else []  # hepatosplenomegaly: whose volume?
        unique = list(dict.fromkeys(fallback))
        return unique if len(unique) == 1 else []

    def _organ_names(self, hit: Hit, text: str) -> list[str]:
        name = str(hit.value)
        if name == "kidneys":
            return ["kidney_right", "kidney_left"]
        if name == "kidney":
            return self._sided_kidney(text)
        return [name]

    @staticmethod
    def _sided_kidney(text: str) -> list[str]:
        sides = set(re.findall(r"\b(right|left)\b", text))
        if "bilateral" in text or "both" in text or len(sides) == 2:
            return ["kidney_right", "kidney_left"]
        return [f"kidney_{sides.pop()}"] if len(sides) == 1 else []  # side unknown: drop

    def _note(self, organ: str, **values: object) -> None:
        note = self.notes.setdefault(organ, _OrganNote())
        for key, value in values.items():
            if value is None:
                continue
            if key == "severity" and getattr(note, "severity") is None:
                # A severity belongs with the state it came with (or fills in a later mention).
                note.severity = str(value)
            elif getattr(note, key) is None:
                setattr(note, key, value)

    def organ_findings(self) -> dict[str, OrganFinding]:
        findings = {}
        for organ, note in self.notes.items():
            if organ not in ORGANS:
                continue
            severity = note.severity if note.state in ("enlarged", "small") else None
            findings[organ] = OrganFinding(
                state=note.state,  # type: ignore[arg-type]
                severity=severity,  # type: ignore[arg-type]
                volume_ml=note.volume_ml,
                partial=note.partial,
            )
        return findings


_FILLER = frozenset("is are was were appears appear seems looks it also but and otherwise in size both".split())


def _bare_state(span: Span) -> bool:
    """A span holding only state words (and fillers): it can only be about the sentence's organ."""
    pieces, position = [], 0
    for hit in sorted(span.states + span.severities, key=lambda h: h.start):
        pieces.append(span.text[position : hit.start])
        position = max(position, hit.end)
    pieces.append(span.text[position:])
    return set(re.findall(r"[a-z]+", " ".join(pieces))) <= _FILLER


def _compatible(organ: str, implied: str) -> bool:
    return organ == implied or (implied == "kidney" and organ.startswith("kidney"))


def _is_plural(word: str) -> bool:
    if word.startswith("metastatic"):
        return True  # "metastatic disease": an unstated number
    last = word.split()[-1]
    return last.endswith("s") and not last.endswith(("ss", "sis", "ous")) or last in ("malignancies", "neoplasia")


def _max_or_none(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _merge_counts(a: int | None, b: int | None) -> int | None:
    """Counts of one site stated twice: the larger number; "multiple" yields to a number ≥ 2."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        known = a if a is not None else b
        return known if known is not None and known >= 2 else None
    return max(a, b)
