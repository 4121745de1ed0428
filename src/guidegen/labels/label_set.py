"""A user's own label set: a JSON table from the ids of a label map to GuideGen class names.

For label maps in a vocabulary GuideGen does not ship (an in-house atlas, a research annotation),
the user says what each id is instead of converting the map::

    {"1": "liver", "2": "tumour", "3": "spleen", "7": "bone", "9": "body", "12": "unknown"}

* keys: the map's label ids (0–255) as JSON strings; values: GuideGen class names as
  ``guidegen list-classes`` prints them, ``"background"``, or ``"unknown"`` (not annotated: the
  id becomes `UNKNOWN`, 255);
* the classes named are the classes the map *annotates*: the others are unknown, not absent;
* id 0 is background unless the table says otherwise; id 255 is unknown unless it says otherwise;
  any other id in the map that the table does not name is an error (`remap_labels`).

The same table is accepted as a ``guidegen-source.json`` sidecar beside the map, either as the whole
file or as its ``"vocabulary"`` value (``{"vocabulary": {"1": "liver", ...}}``), where a shipped
vocabulary's name would otherwise go.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from guidegen.errors import InputError
from guidegen.io.layouts import is_label_table, read_json_object
from guidegen.labels.remap import NOT_ANNOTATED, SourceVocabulary, load_vocabulary
from guidegen.labels.vocabulary import NAMES

__all__ = ["ACCEPTED_NAMES", "UNKNOWN_NAME", "label_set", "read_label_set", "vocabulary_for"]

#: The value that marks an id as "not annotated" (GuideGen id 255).
UNKNOWN_NAME = NOT_ANNOTATED
#: Every name a label set may use.
ACCEPTED_NAMES: tuple[str, ...] = (*NAMES, UNKNOWN_NAME)


def label_set(table: Mapping, where: str | Path | None = None) -> SourceVocabulary:
    """A `SourceVocabulary` from a label-set table (see the module docstring).

    Args:
        table: id (string or int) → GuideGen class name, "background" or "unknown".
        where: the file the table came from, for error messages.

    Raises:
        InputError: not a table, ids that are not 0–255, or names GuideGen does not know (all of
            them in one line, with the accepted names).
    """
    if not isinstance(table, Mapping) or not table:
        raise InputError(
            where,
            "a label set must be a JSON object mapping label ids to GuideGen class names, "
            'e.g. {"1": "liver", "2": "tumour"}',
        )
    bad_ids = [str(k) for k in table if not str(k).strip().isdigit() or not 0 <= int(str(k)) <= 255]
    if bad_ids:
        raise InputError(
            where, f"label ids must be whole numbers 0–255; got {', '.join(repr(k) for k in bad_ids[:10])}"
        )
    mapping: dict[int, str] = {}
    unknown_names: list[str] = []
    for key, value in table.items():
        if not isinstance(value, str) or value not in ACCEPTED_NAMES:
            unknown_names.append(f"{key}: {value!r}")
            continue
        mapping[int(str(key))] = value
    if unknown_names:
        raise InputError(
            where,
            f"names no GuideGen class has ({'; '.join(unknown_names)}); accepted: "
            f"{', '.join(ACCEPTED_NAMES)} (see `guidegen list-classes`)",
        )
    annotated = frozenset(v for v in mapping.values() if v not in ("background", UNKNOWN_NAME))
    if not annotated:
        raise InputError(where, "names no GuideGen class (only background / unknown): nothing to generate from")
    return SourceVocabulary(
        name="label set" if where is None else f"label set {Path(str(where)).name}",
        description="the user's own id → GuideGen class table",
        source_names=dict(mapping),
        map=mapping,
        annotated=annotated,
    )


def read_label_set(path: str | Path) -> SourceVocabulary:
    """Read a label-set JSON file: the table itself, or an object holding it under ``"vocabulary"``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "is not a file (expected a JSON label set)")
    data = read_json_object(path)
    return label_set(
        data if is_label_table(data) or not isinstance(data.get("vocabulary"), Mapping) else data["vocabulary"], path
    )


def vocabulary_for(spec: str | Mapping, where: str | Path | None = None) -> SourceVocabulary:
    """A shipped vocabulary by name, or a label set given inline (a sidecar's ``"vocabulary"`` value)."""
    if isinstance(spec, str):
        return load_vocabulary(spec)
    return label_set(spec, where)
