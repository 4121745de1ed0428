"""Parse a free-text prompt ("68-year-old man, 4 cm sigmoid colon cancer, mild splenomegaly") into
an `Attributes` record.

A tolerant rule-based parser: Unicode normalisation, regular expressions and synonym tables, no
learned model. It reads everything GuideGen's report writer (`guidegen.text.report`) states, so
``parse_prompt(write_report(a))`` recovers the stated fields of ``a``, and the usual ways people
phrase the same things in a prompt.

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
  cannot be put on either kidney); "kidneys" → both.
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
from dataclasses import dataclass, field

from guidegen.errors import InputError
from guidegen.labels.vocabulary import ORGANS
from guidegen.text.attributes import MAX_AGE, Attributes, OrganFinding, Tumour

#: Longer prompts are refused (every rule is linear-time, this only bounds memory and latency).
MAX_PROMPT_CHARS = 1_000_000

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
# Lexicon. Every pattern is a plain alternation of literal words with bounded quantifiers, and the
# text's white space is collapsed first, so matching is linear in the prompt length.

_NUM = r"\d{1,4}(?:[.,]\d{1,3})?"
_UNIT_CM = r"(?:cm|centimet(?:er|re)s?)"
_UNIT_MM = r"(?:mm|millimet(?:er|re)s?)"
_SIZE_RE = re.compile(
    rf"(?<![\d.,])({_NUM})(?: ?({_UNIT_CM}|{_UNIT_MM}))?"
    rf"(?: ?(?:x|by|\*) ?({_NUM})(?: ?({_UNIT_CM}|{_UNIT_MM}))?)?"
    rf"(?: ?(?:x|by|\*) ?({_NUM})(?: ?({_UNIT_CM}|{_UNIT_MM}))?)?"
    rf" ?-? ?({_UNIT_CM}|{_UNIT_MM})\b"
)
_VOLUME_RE = re.compile(
    r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d{1,6})(?:[.,](\d{1,3}))? ?"
    r"(?:ml|millilit(?:er|re)s?|cc|cm3|cubic centimet(?:er|re)s?)\b"
)

_ORGAN_TABLE: tuple[tuple[str, str, str | None], ...] = (
    # (pattern, organ, segment); longer phrases first where they start at the same word.
    (r"hepatic flexure", "colon", "ascending"),
    (r"splenic flexure", "colon", "descending"),
    (r"recto-?sigmoid(?: colon| junction)?", "colon", "sigmoid"),
    (r"sigmoid(?: colon)?", "colon", "sigmoid"),
    (r"(?:caecum|cecum|caecal|cecal|ileocaecal|ileocecal)(?: valve| pole)?", "colon", "caecum"),
    (r"ascending colon|right colon|right-sided colon", "colon", "ascending"),
    (r"transverse colon", "colon", "transverse"),
    (r"descending colon|left colon|left-sided colon", "colon", "descending"),
    (r"rectum|rectal|anorectal", "colon", "rectum"),
    (r"colorectal|colonic|colon|large bowel|large intestine", "colon", None),
    (r"right lobe of the liver|right hepatic lobe|right liver lobe|right lobe", "liver", "right lobe"),
    (r"left lobe of the liver|left hepatic lobe|left liver lobe|left lobe", "liver", "left lobe"),
    (r"gall ?bladder", "gallbladder", None),
    (r"urinary bladder|bladder|vesical", "urinary_bladder", None),
    (r"small bowel|small intestine|ileum|ileal|jejunum|jejunal", "small_bowel", None),
    (r"duodenum|duodenal", "duodenum", None),
    (r"stomach|gastric", "stomach", None),
    (r"pancreas|pancreatic", "pancreas", None),
    (r"spleen|splenic", "spleen", None),
    (r"liver|hepatic", "liver", None),
    (r"(?:both|bilateral) (?:kidneys|renal)|kidneys", "kidneys", None),
    (r"right(?:[ -]sided)? (?:kidney|renal)", "kidney_right", None),
    (r"left(?:[ -]sided)? (?:kidney|renal)", "kidney_left", None),
    (r"kidney|renal", "kidney", None),
)
_ORGAN_RE = re.compile(r"\b(?:" + "|".join(f"(?P<o{i}>{p})" for i, (p, _, _) in enumerate(_ORGAN_TABLE)) + r")\b")

_TUMOUR_TABLE: tuple[tuple[str, str | None], ...] = (
    (r"hepatocellular carcinomas?|hepatomas?|hccs?|cholangiocarcinomas?", "liver"),
    (r"renal cell carcinomas?|rccs?|hypernephromas?", "kidney"),
    (r"colorectal cancers?|crcs?", "colon"),
    (
        r"adenocarcinomas?|carcinomas?|cancers?|tumou?rs?|masses|mass|lesions?|neoplasms?|neoplasia|"
        r"malignanc(?:y|ies)|metastas[ie]s|metastatic (?:deposits?|disease|lesions?)|metastatic|mets|"
        r"deposits?|nodules?|sarcomas?|lymphomas?|gists?|neoplastic",
        None,
    ),
)
_TUMOUR_RE = re.compile(r"\b(?:" + "|".join(f"(?P<t{i}>{p})" for i, (p, _) in enumerate(_TUMOUR_TABLE)) + r")\b")
# "body mass index", "mass effect": not tumours.
_NOT_TUMOUR_BEFORE = re.compile(r"\bbody $")
_NOT_TUMOUR_AFTER = re.compile(r" (?:effect|index)\b")  # used with .match(text, pos)
_TUMOUR_FREE_AFTER = re.compile(r" ?-? ?free\b")  # used with .match(text, pos)

_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|nor|denies|excluded)\b"
)
_NEGATION_AFTER = re.compile(
    r"^[ :,-]{0,3}(?:is |are |was |were )?(?:absent|none|excluded|not (?:seen|identified|present|detected|"
    r"visuali[sz]ed|demonstrated)|ruled out)\b"
)
_UNCERTAIN = re.compile(r"\b(?:rule out|to exclude|r/o)\b")
_DEFINITE_BEFORE = re.compile(r"\b(?:the|this|that|these|those|its|said)(?: \w+)?$")
_NEW_TUMOUR = re.compile(r"\b(?:another|further|additional|separate|second|new)\b")

_COUNT_WORDS: dict[str, int | None] = {
    "a": 1, "an": 1, "one": 1, "single": 1, "solitary": 1, "isolated": 1, "unifocal": 1,
    "two": 2, "both": 2, "pair of": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "multiple": None, "several": None, "numerous": None, "innumerable": None, "countless": None,
    "many": None, "various": None, "multifocal": None, "few": None, "a few": None, "some": None,
    "scattered": None, "diffuse": None, "widespread": None,
}  # fmt: skip
_COUNT_RE = re.compile(
    r"\b(?:(?P<word>" + "|".join(sorted((re.escape(w) for w in _COUNT_WORDS), key=len, reverse=True)) + r")"
    r"|(?<![\d.,])(?P<digits>\d{1,3})(?![\d.,]))\b"
)

_STATE_TABLE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (pattern, state, organs it implies); longer phrases first.
    (r"hepatosplenomegaly", "enlarged", ("liver", "spleen")),
    (r"splenomegaly", "enlarged", ("spleen",)),
    (r"hepatomegaly", "enlarged", ("liver",)),
    (r"nephromegaly", "enlarged", ("kidney",)),
    (r"(?:status post |s/p |post-?)?splenectomy|asplenia", "absent", ("spleen",)),
    (r"(?:status post |s/p |post-?)?cholecystectomy", "absent", ("gallbladder",)),
    (r"(?:status post |s/p |post-?)?right nephrectomy", "absent", ("kidney_right",)),
    (r"(?:status post |s/p |post-?)?left nephrectomy", "absent", ("kidney_left",)),
    (r"(?:status post |s/p |post-?)?nephrectomy", "absent", ("kidney",)),
    (r"not enlarged|normal in size|normal[ -]sized?|normal size|within normal limits|unremarkable|normal", "normal", ()),
    (
        r"enlarged|enlargement|increased in size|bulky|distended|distension|distention|hypertroph(?:y|ied|ic)",
        "enlarged",
        (),
    ),
    (
        r"atrophic|atrophy|atrophied|shrunken|reduced in size|decreased in size|contracted|hypoplastic|small",
        "small",
        (),
    ),
    (
        r"not seen|not visuali[sz]ed|not identified|not present|not included|not imaged|absent|"
        r"surgically removed|removed|resected|outside the field of view",
        "absent",
        (),
    ),
)
_STATE_RE = re.compile(r"\b(?:" + "|".join(f"(?P<s{i}>{p})" for i, (p, _, _) in enumerate(_STATE_TABLE)) + r")\b")
_STATE_NEGATION_BEFORE = re.compile(r"\b(?:no|without|not|nor|negative for|absence of)(?: \w+){0,2} ?$")
_SEVERITY_RE = re.compile(
    r"\b(?:(?P<mild>mild|mildly|slight|slightly|minimal|minimally|borderline)|(?P<moderate>moderate|moderately)"
    r"|(?P<marked>marked|markedly|massive|massively|severe|severely|gross|grossly|significant|significantly"
    r"|extreme|extremely|considerable|considerably|pronounced))\b"
)
_PARTIAL_RE = re.compile(
    r"\b(?:partially|partly|incompletely|only partly|only partially) (?:imaged|included|visuali[sz]ed|covered|"
    r"seen|scanned|shown|in the field of view)|cut off|truncated|extends? beyond the (?:field of view|scan)\b"
)

# Spans: split sentences at commas and connectors.
_SENTENCE_RE = re.compile(r"(?<!\d)\.|\.(?!\d)|[!?;\n]")
_SPAN_RE = re.compile(
    r"(?<!\d),|,(?!\d)|:(?! ?\d)|\((?! ?\d)|\)|\b(?:with|without|and|plus|as well as|along with|together with|while|whereas|but|"
    r"from|secondary to|due to|in addition to|besides|also)\b(?! ?\d)"
)
#: Connectors that stay in the span they open (they negate it).
_KEEP_CONNECTORS = {"without"}
#: A span that starts like this is a place phrase that may give a neighbouring tumour its host.
_PLACE_START = re.compile(r"^(?:in|within|of|involving|at|arising (?:in|from)|originating (?:in|from)|located in)\b")
# A connector after these words is part of one phrase ("consistent with", "arising from").
_NO_SPLIT_BEFORE = re.compile(
    r"\b(?:consistent|compatible|keeping|associated|arising|originating|arises|originates|derived|"
    r"separate|distinct|extending|presenting)$"
)

# Sex, age, phase, field of view.
_SEX_RE = re.compile(
    r"\b(?:(?P<male>man|men|male|gentleman|boy)|(?P<female>woman|women|female|lady|girl|mrs))\b"
    r"|\b(?:sex|gender) ?:? ?(?:(?P<male2>m)|(?P<female2>f))\b"
    r"|(?<![\d.,])\d{1,3} ?-?(?:(?P<male3>m)|(?P<female3>f))\b(?! ?[/.]? ?\d)"
    r"|\b(?:yo|y/o|years? old|year-old|yr-old|yrs? old) ?(?:(?P<male4>m)|(?P<female4>f))\b"
    r"|\b(?:(?P<male5>m)|(?P<female5>f)) ?/ ?\d{1,3}\b|(?<![\d.,])\d{1,3} ?/ ?(?:(?P<male6>m)|(?P<female6>f))\b"
)
_AGE_RE = re.compile(
    r"(?<![\d.,])(?P<a1>\d{1,3}) ?-? ?(?:years?|yrs?|y) ?-? ?(?:old|of age)\b"
    r"|(?<![\d.,])(?P<a2>\d{1,3}) ?(?:yo|y/o|y\.o\.?|yr|yrs)(?![a-z])"
    r"|\b(?:aged|age|age of) ?:? ?(?P<a3>\d{1,3})(?![\d.,]\d| ?(?:cm|mm|ml|%))"
    r"|(?<![\d.,])(?P<a4>\d{1,3}) ?(?:years?|yrs?)\b(?! ?(?:ago|after|before|since|later|prior|of follow|history|earlier))"
    r"|(?<![\d.,])(?P<a5>\d{1,3}) ?-?(?:m|f)\b(?! ?[/.]? ?\d)"
    r"|\b(?:m|f) ?/ ?(?P<a6>\d{1,3})\b|(?<![\d.,])(?P<a7>\d{1,3}) ?/ ?(?:m|f)\b"
)
_PHASE_TABLE: tuple[tuple[str, str], ...] = (
    (
        r"non-?contrast|non contrast|non-?enhanced|non enhanced|unenhanced|"
        r"without (?:iv |i\.v\. |intravenous |oral or intravenous )?contrast|no (?:iv |i\.v\. |intravenous )?contrast|"
        r"native (?:phase|ct|scan)|plain (?:ct|scan)|pre-?contrast|precontrast",
        "non_contrast",
    ),
    (
        r"(?:late|early) arterial|(?:hepatic )?arterial(?:-| )(?:phase|ct|scan|study|imaging|acquisition)|"
        r"phase ?:? ?arterial|ct angiogra(?:m|phy)|cta",
        "arterial",
    ),
    (
        r"portal[ -]?venous|porto-?venous|(?:pv|venous) phase|phase ?:? ?(?:portal )?venous|nephrographic",
        "portal_venous",
    ),
    (r"delayed|excretory|urographic|equilibrium phase|late phase|phase ?:? ?delayed", "delayed"),
)
_PHASE_RE = re.compile(r"\b(?:" + "|".join(f"(?P<p{i}>{p})" for i, (p, _) in enumerate(_PHASE_TABLE)) + r")\b")
_CONTRAST_RE = re.compile(
    r"\b(?:contrast[- ]enhanced|with (?:iv |i\.v\. |intravenous )?contrast|post-?contrast|"
    r"(?:iv|i\.v\.|intravenous) contrast|enhanced ct|cect)\b"
)


def _region(tag: str) -> str:
    # Named groups must be unique in one pattern: each use of the region alternation gets a suffix.
    return (
        rf"(?P<ap{tag}>abdomen(?: and | ?/ ?| ?& ?| ?\+ ?|-)pelvis|abdomino-?pelvic)|(?P<upper{tag}>upper abdom(?:en|inal))"
        rf"|(?P<abdomen{tag}>abdomen|abdominal)|(?P<pelvis{tag}>pelvis|pelvic)"
    )


_FOV_PARTIAL_RE = re.compile(
    r"\b(?:(?:limited|partial|restricted|incomplete|reduced) (?:field of view|fov|coverage|scan range|z-coverage)|"
    r"(?:field of view|fov) ?:? ?(?:is )?(?:limited|partial))\b"
)
_FOV_RE = re.compile(
    rf"\b(?:ct|cect|ncct|scan|study|examination|exam|imaging|coverage|field of view|fov)"
    rf"(?: scan)?(?: of)?(?: the)? ?[:-]? ?(?:{_region('1')})\b"
    rf"|\b(?:{_region('2')}) ?(?:ct|cect|scan|study|examination|exam|imaging|coverage)\b"
    r"|\b(?P<ap3>abdomen(?: and | ?/ ?| ?& ?)pelvis|abdomino-?pelvic)\b"
)


# --------------------------------------------------------------------------------------------------
# Public API


def parse_prompt(text: str) -> Attributes:
    """Parse a free-text prompt into an `Attributes` record.

    Args:
        text: prompt or report in English, any length up to `MAX_PROMPT_CHARS` characters.

    Returns:
        The attributes the text states; everything it does not state is ``None`` (or, for organs,
        left out of ``organs``).

    Raises:
        InputError: empty / whitespace-only text, text that is not a string, or a text over
            `MAX_PROMPT_CHARS` characters.
    """
    if not isinstance(text, str):
        raise InputError(None, f"prompt must be text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(None, f"prompt is too long ({len(text):,} characters, limit {MAX_PROMPT_CHARS:,})")
    norm = normalise(text)
    if not norm:
        raise InputError(None, "empty prompt")
    sex = _parse_sex(norm)
    age = _parse_age(norm)
    phase = _parse_phase(norm)
    fov = _parse_fov(norm)
    reader = _Reader()
    for sentence in _SENTENCE_RE.split(norm):
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
    match = _SEX_RE.search(text)
    if match is None:
        return None
    return "male" if any(match.group(g) for g in ("male", "male2", "male3", "male4", "male5", "male6")) else "female"


def _parse_age(text: str) -> int | None:
    for match in _AGE_RE.finditer(text):
        value = next(v for v in match.groupdict().values() if v is not None)
        age = int(value)
        if 0 <= age <= MAX_AGE:
            return age
    return None


def _parse_phase(text: str) -> str | None:
    match = _PHASE_RE.search(text)
    if match is not None:
        return _PHASE_TABLE[int(match.lastgroup[1:])][1]  # type: ignore[index]
    if _CONTRAST_RE.search(text):
        return "portal_venous"  # routine abdominal contrast CT is acquired in the portal venous phase
    return None


def _parse_fov(text: str) -> str | None:
    if _FOV_PARTIAL_RE.search(text):
        return "partial"
    match = _FOV_RE.search(text)
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


# --------------------------------------------------------------------------------------------------
# Sentence reading


@dataclass
class _Hit:
    start: int
    end: int
    value: object = None
    extra: object = None
    tumour_site: bool = False  # an organ word qualifying a tumour word ("liver lesion")


def _gap(a: _Hit, b: _Hit) -> int:
    """Characters between two hits (0 when they touch or overlap)."""
    return max(a.start - b.end, b.start - a.end, 0)


def _nearest(hits: list[_Hit], query: _Hit) -> tuple[int, _Hit] | None:
    """The hit closest to ``query`` and its gap; ties go to the earlier hit.

    ``hits`` come from one ``finditer`` (sorted, non-overlapping), so only the neighbours of the
    query's position can be nearest: a bisection keeps long prompts linear overall.
    """
    if not hits:
        return None
    index = _bisect(hits, query.start)
    best: tuple[int, _Hit] | None = None
    for i in range(max(index - 2, 0), min(index + 2, len(hits))):
        gap = _gap(hits[i], query)
        if best is None or gap < best[0]:
            best = (gap, hits[i])
    return best


def _bisect(hits: list[_Hit], position: int) -> int:
    lo, hi = 0, len(hits)
    while lo < hi:
        mid = (lo + hi) // 2
        if hits[mid].start < position:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class _Span:
    text: str
    connector: str
    organs: list[_Hit] = field(default_factory=list)
    tumours: list[_Hit] = field(default_factory=list)
    states: list[_Hit] = field(default_factory=list)
    sizes: list[_Hit] = field(default_factory=list)
    volumes: list[_Hit] = field(default_factory=list)
    severities: list[_Hit] = field(default_factory=list)
    partials: list[_Hit] = field(default_factory=list)
    free_organs: list[_Hit] = field(default_factory=list)  # organ words not qualifying a tumour word

    @property
    def organ_only(self) -> bool:
        return bool(self.organs) and not (self.tumours or self.states or self.sizes or self.volumes or self.partials)


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


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def _split_spans(sentence: str) -> list[_Span]:
    spans: list[_Span] = []
    start, connector = 0, ""
    for match in _SPAN_RE.finditer(sentence):
        piece = sentence[start : match.start()].strip()
        # A short window: a long unsplit run must not be rescanned at every connector.
        if _NO_SPLIT_BEFORE.search(sentence[max(start, match.start() - 40) : match.start()].rstrip()):
            continue  # keep "consistent with …", "arising from …" in one span
        spans.append(_Span(piece, connector))
        connector = match.group(0).strip()
        start = match.start() if connector in _KEEP_CONNECTORS else match.end()
    spans.append(_Span(sentence[start:].strip(), connector))
    return [s for s in spans if s.text]


def _analyse(span: _Span) -> None:
    text = span.text
    for match in _ORGAN_RE.finditer(text):
        organ, segment = _ORGAN_TABLE[int(match.lastgroup[1:])][1:]  # type: ignore[index]
        span.organs.append(_Hit(match.start(), match.end(), organ, segment))
    for match in _SIZE_RE.finditer(text):
        size = _size_mm(match)
        if size > 0:  # "0 cm" states no size
            span.sizes.append(_Hit(match.start(), match.end(), size))
    for match in _VOLUME_RE.finditer(text):
        whole, decimals = match.group(1), match.group(2)
        value = float(whole.replace(",", "")) + (float("0." + decimals) if decimals else 0.0)
        span.volumes.append(_Hit(match.start(), match.end(), value))
    for match in _TUMOUR_RE.finditer(text):
        if match.group(0) in ("mass", "masses"):
            # Short windows / anchored matches, not whole-prefix searches: linear on long spans.
            if _NOT_TUMOUR_BEFORE.search(text, max(match.start() - 6, 0), match.start()) or _NOT_TUMOUR_AFTER.match(
                text, match.end()
            ):
                continue
        implied = _TUMOUR_TABLE[int(match.lastgroup[1:])][1]  # type: ignore[index]
        span.tumours.append(_Hit(match.start(), match.end(), implied, match.group(0)))
    # Organ words used as a tumour's site adjective ("liver lesion") carry no organ state or volume.
    tumour_starts = {t.start for t in span.tumours}
    for organ in span.organs:
        organ.tumour_site = bool(tumour_starts & {organ.end, organ.end + 1, organ.end + 2})
    span.free_organs = [o for o in span.organs if not o.tumour_site]
    taken = span.organs
    for match in _STATE_RE.finditer(text):
        hit = _Hit(match.start(), match.end())
        near = _nearest(taken, hit)
        if near is not None and hit.start < near[1].end and near[1].start < hit.end:
            continue  # "small" of "small bowel"
        state, implied = _STATE_TABLE[int(match.lastgroup[1:])][1:]  # type: ignore[index]
        if state == "small" and not _describes_organ(hit, span):
            continue
        if state in ("absent", "small", "enlarged", "normal") and span.tumours and not implied:
            # In a tumour span these words describe the tumour ("no mass is seen", "enlarged mass"),
            # unless they sit right before an organ word that does not itself qualify the tumour.
            if state == "absent" or not _describes_organ(hit, span):
                continue
        # Only a short window before the word: keeps the search linear on very long spans.
        if state in ("enlarged", "small") and _STATE_NEGATION_BEFORE.search(text[max(0, hit.start - 40) : hit.start]):
            state = "normal"  # "no splenomegaly", "without enlargement of the liver"
        hit.value, hit.extra = state, implied
        span.states.append(hit)
    for match in _SEVERITY_RE.finditer(text):
        span.severities.append(_Hit(match.start(), match.end(), match.lastgroup))
    for match in _PARTIAL_RE.finditer(text):
        span.partials.append(_Hit(match.start(), match.end(), True))


def _describes_organ(hit: _Hit, span: _Span) -> bool:
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


class _Reader:
    """Accumulates tumour mentions and organ notes over the sentences of one text."""

    def __init__(self) -> None:
        self.mentions: list[_Mention] = []
        self.negated = False
        self.notes: dict[str, _OrganNote] = {}

    # Tumours --------------------------------------------------------------------------------------

    def read_sentence(self, sentence: str) -> None:
        spans = _split_spans(sentence)
        for span in spans:
            _analyse(span)
        sentence_mentions: list[_Mention] = []
        last = -2  # span of the last mention
        for position, span in enumerate(spans):
            if not span.tumours:
                continue
            mention = self._mention(spans, position)
            if mention is None:
                continue
            previous = sentence_mentions[-1] if sentence_mentions else None
            if (previous is not None and last == position - 1 and span.connector == "," and mention.organ is None
                    and previous.organ is not None and previous.diameter_mm is None
                    and not _NEW_TUMOUR.search(span.text)):
                # "liver metastases, two lesions up to 25 mm": an organ-less apposition right after a
                # mention without a size describes that mention's tumours.
                previous.diameter_mm = mention.diameter_mm
                previous.count = mention.count if previous.count is None else previous.count
            else:
                sentence_mentions.append(mention)
            last = position
        self._add_sentence_mentions(sentence_mentions)
        self._read_states(spans)

    def _mention(self, spans: list[_Span], position: int) -> _Mention | None:
        span = spans[position]
        text = span.text
        first = span.tumours[0]
        before = text[: first.start]
        after = text[span.tumours[-1].end :]
        if _UNCERTAIN.search(text):
            return None
        if (
            span.connector in _KEEP_CONNECTORS
            or _NEGATION_BEFORE.search(before)
            or _NEGATION_AFTER.search(after)
            or any(_TUMOUR_FREE_AFTER.match(text, t.end) for t in span.tumours)
        ):
            self.negated = True
            return None
        organ, segment = self._host(span, spans, position)
        sizes = [s.value for s in span.sizes]
        # Following size-only spans: "…, the largest measuring 3.1 cm".
        for later_position in range(position + 1, len(spans)):
            later = spans[later_position]
            if later.tumours or later.states or (later.organs and not _PLACE_START.search(later.text)):
                break
            sizes.extend(s.value for s in later.sizes)
        count = self._count(span, first)
        diameter = max(sizes) if sizes else None  # type: ignore[type-var]
        if (
            organ is None
            and count == 1
            and _DEFINITE_BEFORE.search(before.rstrip())
            and not _NEW_TUMOUR.search(before)
            and self.mentions
        ):
            # "The mass measures 4 cm": the tumour already described.
            previous = self.mentions[-1]
            if diameter is not None:
                previous.diameter_mm = max(previous.diameter_mm or 0.0, diameter)
            return None
        return _Mention(organ, segment, diameter, count)  # type: ignore[arg-type]

    def _host(self, span: _Span, spans: list[_Span], position: int) -> tuple[str | None, str | None]:
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
                and (span.connector in ("with", ":") or _PLACE_START.search(previous.text))
            ):
                best = previous.organs[-1]
            elif following is not None and following.organ_only and _PLACE_START.search(following.text):
                best = following.organs[0]
            else:
                return (str(implied) if implied else None), None
        else:
            best = min(organs, key=lambda o: _nearest(span.tumours, o)[0])  # type: ignore[index]
            if implied is not None:
                compatible = [o for o in organs if _compatible(str(o.value), str(implied))]
                if compatible:
                    best = min(compatible, key=lambda o: _nearest(span.tumours, o)[0])  # type: ignore[index]
                else:
                    return str(implied), None
        organ, segment = str(best.value), best.extra
        if organ == "kidney":
            sides = set(re.findall(r"\b(right|left)\b", span.text))
            if len(sides) == 1:
                organ = f"kidney_{sides.pop()}"
        return organ, segment  # type: ignore[return-value]

    @staticmethod
    def _count(span: _Span, first: _Hit) -> int | None:
        text = span.text
        last: tuple[int, int | None] | None = None
        for match in _COUNT_RE.finditer(text, 0, first.start):
            probe = _Hit(match.start(), match.end())
            if any(
                near is not None and near[1].start < probe.end and probe.start < near[1].end
                for near in (_nearest(span.sizes, probe), _nearest(span.volumes, probe))
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
                value = _COUNT_WORDS[match.group("word")]
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

    def _read_states(self, spans: list[_Span]) -> None:
        pending: list[_Hit] = []  # organ-only spans waiting for a state ("the liver, spleen and …")
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
                    near = _nearest(span.severities, state)
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

    def _state_organs(self, span: _Span, state: _Hit, pending: list[_Hit]) -> list[str]:
        implied = tuple(state.extra or ())
        if implied:
            names = list(implied)
            if names == ["kidney"]:
                names = self._sided_kidney(span.text)
            return names
        organs = span.free_organs
        if organs:
            best = _nearest(organs, state)[1]  # type: ignore[index]
            chosen = [best]
            # One state word after several organs of a run: "the liver, spleen and kidneys are normal".
            if pending and len(span.states) == 1:
                chosen = [*pending, best]
        else:
            chosen = list(pending)
        return [name for hit in chosen for name in self._organ_names(hit, span.text)]

    def _nearest_organs(self, span: _Span, hit: _Hit, fallback: list[str]) -> list[str]:
        """Organ(s) a volume or "partially imaged" belongs to: nearest organ word in the span, else
        the organs its state words imply, else the one organ the sentence was just about."""
        candidates = span.free_organs
        if candidates:
            best = _nearest(candidates, hit)[1]  # type: ignore[index]
            return self._organ_names(best, span.text)
        implied = [name for s in span.states for name in (s.extra or ()) if name != "kidney"]
        if implied:
            return implied[:1] if len(set(implied)) == 1 else []  # hepatosplenomegaly: whose volume?
        unique = list(dict.fromkeys(fallback))
        return unique if len(unique) == 1 else []

    def _organ_names(self, hit: _Hit, text: str) -> list[str]:
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


def _bare_state(span: _Span) -> bool:
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

