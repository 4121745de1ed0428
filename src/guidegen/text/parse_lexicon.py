"""The prompt parser's lexicon: the words and phrases it knows, as tables and the regular
expressions built from them (`guidegen.text.parse` reads prompts with them).

The patterns match text normalised by `guidegen.text.parse.normalise` (case-folded, one space
between words). Every pattern is a plain alternation of literal words with bounded quantifiers,
and the text's white space is collapsed first, so matching is linear in the prompt length.
"""

from __future__ import annotations

import re

_NUM = r"\d{1,4}(?:[.,]\d{1,3})?"
_UNIT_CM = r"(?:cm|centimet(?:er|re)s?)"
_UNIT_MM = r"(?:mm|millimet(?:er|re)s?)"
SIZE_RE = re.compile(
    rf"(?<![\d.,])({_NUM})(?: ?({_UNIT_CM}|{_UNIT_MM}))?"
    rf"(?: ?(?:x|by|\*) ?({_NUM})(?: ?({_UNIT_CM}|{_UNIT_MM}))?)?"
    rf"(?: ?(?:x|by|\*) ?({_NUM})(?: ?({_UNIT_CM}|{_UNIT_MM}))?)?"
    rf" ?-? ?({_UNIT_CM}|{_UNIT_MM})\b"
)
VOLUME_RE = re.compile(
    r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d{1,6})(?:[.,](\d{1,3}))? ?"
    r"(?:ml|millilit(?:er|re)s?|cc|cm3|cubic centimet(?:er|re)s?)\b"
)

ORGAN_TABLE: tuple[tuple[str, str, str | None], ...] = (
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
ORGAN_RE = re.compile(r"\b(?:" + "|".join(f"(?P<o{i}>{p})" for i, (p, _, _) in enumerate(ORGAN_TABLE)) + r")\b")

TUMOUR_TABLE: tuple[tuple[str, str | None], ...] = (
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
TUMOUR_RE = re.compile(r"\b(?:" + "|".join(f"(?P<t{i}>{p})" for i, (p, _) in enumerate(TUMOUR_TABLE)) + r")\b")
# "body mass index", "mass effect": not tumours.
NOT_TUMOUR_BEFORE = re.compile(r"\bbody $")
NOT_TUMOUR_AFTER = re.compile(r" (?:effect|index)\b")  # used with .match(text, pos)
TUMOUR_FREE_AFTER = re.compile(r" ?-? ?free\b")  # used with .match(text, pos)

NEGATION_BEFORE = re.compile(r"\b(?:no|not|without|negative for|free of|absence of|absent|nor|denies|excluded)\b")
NEGATION_AFTER = re.compile(
    r"^[ :,-]{0,3}(?:is |are |was |were )?(?:absent|none|excluded|not (?:seen|identified|present|detected|"
    r"visuali[sz]ed|demonstrated)|ruled out)\b"
)
UNCERTAIN = re.compile(r"\b(?:rule out|to exclude|r/o)\b")
DEFINITE_BEFORE = re.compile(r"\b(?:the|this|that|these|those|its|said)(?: \w+)?$")
NEW_TUMOUR = re.compile(r"\b(?:another|further|additional|separate|second|new)\b")

COUNT_WORDS: dict[str, int | None] = {
    "a": 1, "an": 1, "one": 1, "single": 1, "solitary": 1, "isolated": 1, "unifocal": 1,
    "two": 2, "both": 2, "pair of": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "multiple": None, "several": None, "numerous": None, "innumerable": None, "countless": None,
    "many": None, "various": None, "multifocal": None, "few": None, "a few": None, "some": None,
    "scattered": None, "diffuse": None, "widespread": None,
}  # fmt: skip
COUNT_RE = re.compile(
    r"\b(?:(?P<word>" + "|".join(sorted((re.escape(w) for w in COUNT_WORDS), key=len, reverse=True)) + r")"
    r"|(?<![\d.,])(?P<digits>\d{1,3})(?![\d.,]))\b"
)

STATE_TABLE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
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
    (
        r"not enlarged|normal in size|normal[ -]sized?|normal size|within normal limits|unremarkable|normal",
        "normal",
        (),
    ),
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
STATE_RE = re.compile(r"\b(?:" + "|".join(f"(?P<s{i}>{p})" for i, (p, _, _) in enumerate(STATE_TABLE)) + r")\b")
STATE_NEGATION_BEFORE = re.compile(r"\b(?:no|without|not|nor|negative for|absence of)(?: \w+){0,2} ?$")
SEVERITY_RE = re.compile(
    r"\b(?:(?P<mild>mild|mildly|slight|slightly|minimal|minimally|borderline)|(?P<moderate>moderate|moderately)"
    r"|(?P<marked>marked|markedly|massive|massively|severe|severely|gross|grossly|significant|significantly"
    r"|extreme|extremely|considerable|considerably|pronounced))\b"
)
PARTIAL_RE = re.compile(
    r"\b(?:partially|partly|incompletely|only partly|only partially) (?:imaged|included|visuali[sz]ed|covered|"
    r"seen|scanned|shown|in the field of view)|cut off|truncated|extends? beyond the (?:field of view|scan)\b"
)

# Spans: split sentences at commas and connectors.
SENTENCE_RE = re.compile(r"(?<!\d)\.|\.(?!\d)|[!?;\n]")
SPAN_RE = re.compile(
    r"(?<!\d),|,(?!\d)|:(?! ?\d)|\((?! ?\d)|\)|\b(?:with|without|and|plus|as well as|along with|together "
    r"with|while|whereas|but|"
    r"from|secondary to|due to|in addition to|besides|also)\b(?! ?\d)"
)
#: Connectors that stay in the span they open (they negate it).
KEEP_CONNECTORS = {"without"}
#: A phrase that states only a side ("right side", "on the left", "right-sided"): the side of a
#: renal tumour mentioned just before it.
SIDE_ONLY = re.compile(r"^(?:on the |the )?(right|left)(?:[ -]sided| side)?$")
#: A span that starts like this is a place phrase that may give a neighbouring tumour its host.
PLACE_START = re.compile(r"^(?:in|within|of|involving|at|arising (?:in|from)|originating (?:in|from)|located in)\b")
# A connector after these words is part of one phrase ("consistent with", "arising from").
NO_SPLIT_BEFORE = re.compile(
    r"\b(?:consistent|compatible|keeping|associated|arising|originating|arises|originates|derived|"
    r"separate|distinct|extending|presenting)$"
)

# Sex, age, phase, field of view.
SEX_RE = re.compile(
    r"\b(?:(?P<male>man|men|male|gentleman|boy)|(?P<female>woman|women|female|lady|girl|mrs))\b"
    r"|\b(?:sex|gender) ?:? ?(?:(?P<male2>m)|(?P<female2>f))\b"
    r"|(?<![\d.,])\d{1,3} ?-?(?:(?P<male3>m)|(?P<female3>f))\b(?! ?[/.]? ?\d)"
    r"|\b(?:yo|y/o|years? old|year-old|yr-old|yrs? old) ?(?:(?P<male4>m)|(?P<female4>f))\b"
    r"|\b(?:(?P<male5>m)|(?P<female5>f)) ?/ ?\d{1,3}\b|(?<![\d.,])\d{1,3} ?/ ?(?:(?P<male6>m)|(?P<female6>f))\b"
)
AGE_RE = re.compile(
    r"(?<![\d.,])(?P<a1>\d{1,3}) ?-? ?(?:years?|yrs?|y) ?-? ?(?:old|of age)\b"
    r"|(?<![\d.,])(?P<a2>\d{1,3}) ?(?:yo|y/o|y\.o\.?|yr|yrs)(?![a-z])"
    r"|\b(?:aged|age|age of) ?:? ?(?P<a3>\d{1,3})(?![\d.,]\d| ?(?:cm|mm|ml|%))"
    r"|(?<![\d.,])(?P<a4>\d{1,3}) ?(?:years?|yrs?)\b(?! ?(?:ago|after|before|since|later|prior|of "
    r"follow|history|earlier))"
    r"|(?<![\d.,])(?P<a5>\d{1,3}) ?-?(?:m|f)\b(?! ?[/.]? ?\d)"
    r"|\b(?:m|f) ?/ ?(?P<a6>\d{1,3})\b|(?<![\d.,])(?P<a7>\d{1,3}) ?/ ?(?:m|f)\b"
)
PHASE_TABLE: tuple[tuple[str, str], ...] = (
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
PHASE_RE = re.compile(r"\b(?:" + "|".join(f"(?P<p{i}>{p})" for i, (p, _) in enumerate(PHASE_TABLE)) + r")\b")
CONTRAST_RE = re.compile(
    r"\b(?:contrast[- ]enhanced|with (?:iv |i\.v\. |intravenous )?contrast|post-?contrast|"
    r"(?:iv|i\.v\.|intravenous) contrast|enhanced ct|cect)\b"
)


def _region(tag: str) -> str:
    # Named groups must be unique in one pattern: each use of the region alternation gets a suffix.
    return (
        rf"(?P<ap{tag}>abdomen(?: and | ?/ ?| ?& ?| ?\+ ?|-)pelvis|abdomino-?pelvic)|(?P<upper{tag}>upper "
        rf"abdom(?:en|inal))"
        rf"|(?P<abdomen{tag}>abdomen|abdominal)|(?P<pelvis{tag}>pelvis|pelvic)"
    )


FOV_PARTIAL_RE = re.compile(
    r"\b(?:(?:limited|partial|restricted|incomplete|reduced) (?:field of view|fov|coverage|scan range|z-coverage)|"
    r"(?:field of view|fov) ?:? ?(?:is )?(?:limited|partial))\b"
)
FOV_RE = re.compile(
    rf"\b(?:ct|cect|ncct|scan|study|examination|exam|imaging|coverage|field of view|fov)"
    rf"(?: scan)?(?: of)?(?: the)? ?[:-]? ?(?:{_region('1')})\b"
    rf"|\b(?:{_region('2')}) ?(?:ct|cect|scan|study|examination|exam|imaging|coverage)\b"
    r"|\b(?P<ap3>abdomen(?: and | ?/ ?| ?& ?)pelvis|abdomino-?pelvic)\b"
)
