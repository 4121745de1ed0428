"""Sides of renal tumours in prompts: a side stated after the tumour and its size, set off by commas.

Issue 24: "small renal tumor, 2.5 cm, right kidney" was read as a kidney tumour of unknown side, so
the placement stage drew either kidney and the agreement check (which accepts either kidney for an
unsided tumour) passed a tumour in the left kidney.
"""

from __future__ import annotations

import pytest

from guidegen.text.attributes import Tumour
from guidegen.text.parse import parse_prompt


@pytest.mark.parametrize(
    "prompt, organ",
    [
        ("small renal tumor, 2.5 cm, right kidney", "kidney_right"),
        ("small renal tumor, 2.5 cm, left kidney", "kidney_left"),
        ("renal mass 3 cm, right side", "kidney_right"),
        ("renal mass, left", "kidney_left"),
        ("RCC, 4 cm, left kidney", "kidney_left"),
        ("tumour 3 cm, right kidney", "kidney_right"),
        ("renal tumour 3 cm, right kidney, normal liver", "kidney_right"),
    ],
)
def test_side_after_the_size_is_the_tumours_side(prompt: str, organ: str) -> None:
    tumours = parse_prompt(prompt).tumours
    assert tumours is not None and len(tumours) == 1
    assert tumours[0].organ == organ


def test_right_and_left_prompts_differ_only_in_the_side() -> None:
    right = parse_prompt("small renal tumor, 2.5 cm, right kidney").tumours
    left = parse_prompt("small renal tumor, 2.5 cm, left kidney").tumours
    assert right == (Tumour("kidney_right", None, 25.0, 1),)
    assert left == (Tumour("kidney_left", None, 25.0, 1),)


@pytest.mark.parametrize(
    "prompt, organ",
    [
        # The kidney phrase is the subject of the state that follows, not the tumour's site.
        ("small renal tumor, 2.5 cm, right kidney, enlarged", "kidney"),
        # Another organ after a renal tumour does not move it.
        ("renal tumour 3 cm, liver", "kidney"),
        ("liver lesion 2 cm, spleen", "liver"),
        ("tumor in the kidney 3 cm", "kidney"),
    ],
)
def test_no_side_is_invented(prompt: str, organ: str) -> None:
    tumours = parse_prompt(prompt).tumours
    assert tumours is not None and tumours[0].organ == organ
