"""The fixed prompt suite parses into stated attributes and covers every tumour host and enlargement."""

from __future__ import annotations

from guidegen.evaluation.prompt_suite import PROMPT_SUITE
from guidegen.labels.vocabulary import TUMOUR_HOSTS
from guidegen.text.attributes import COLON_SEGMENTS, LIVER_SEGMENTS, Attributes
from guidegen.text.parse import parse_prompt

PARSED = {prompt: parse_prompt(prompt) for prompt in PROMPT_SUITE}


def _stated(a: Attributes) -> list[str]:
    fields = [name for name in ("sex", "age", "phase", "tumours", "field_of_view") if getattr(a, name) is not None]
    return fields + list(a.organs)


def test_suite_size_and_uniqueness():
    assert len(PROMPT_SUITE) >= 50
    assert len(set(PROMPT_SUITE)) == len(PROMPT_SUITE)
    assert all(isinstance(p, str) and p.strip() == p and p for p in PROMPT_SUITE)


def test_every_prompt_states_something():
    empty = [p for p, a in PARSED.items() if not _stated(a)]
    assert empty == []


def test_covers_every_tumour_host_and_colon_segment():
    tumours = [t for a in PARSED.values() for t in a.tumours or ()]
    assert set(TUMOUR_HOSTS) <= {t.organ for t in tumours}
    assert set(COLON_SEGMENTS) <= {t.segment for t in tumours if t.organ == "colon"}
    assert set(LIVER_SEGMENTS) <= {t.segment for t in tumours if t.organ == "liver"}
    # Sizes given in both units, several tumours, and "multiple".
    assert any("mm" in p for p, a in PARSED.items() if a.tumours)
    assert any(" cm" in p for p, a in PARSED.items() if a.tumours)
    assert any(t.count is None for t in tumours) and any((t.count or 0) >= 2 for t in tumours)


def test_covers_enlargement_small_absent_and_negation():
    enlarged = {o for a in PARSED.values() for o, f in a.organs.items() if f.state == "enlarged"}
    assert {"spleen", "liver", "kidney_right", "kidney_left"} <= enlarged
    states = {f.state for a in PARSED.values() for f in a.organs.values()}
    assert {"enlarged", "small", "normal", "absent"} <= states
    assert sum(a.tumours == () for a in PARSED.values()) >= 5  # explicit "no tumour"
    assert any(a.tumours and a.organs for a in PARSED.values())  # mixed findings


def test_most_prompts_are_scorable_on_a_label_map():
    # Sex and age alone cannot be checked on a label map; those prompts are the exception.
    scorable = [p for p, a in PARSED.items() if a.tumours is not None or a.organs or a.field_of_view]
    assert len(scorable) >= len(PROMPT_SUITE) - 3
