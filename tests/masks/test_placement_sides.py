"""A stated right / left kidney tumour is placed in the kidney on that side of the patient, in world
coordinates, whatever the map's kidney labels say and however the map is stored (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.labels.vocabulary import ID
from guidegen.masks.placement import apply_stated_organs, place_stated_tumours
from guidegen.text.measure import measure_labels
from guidegen.text.parse import parse_prompt
from guidegen.text.sides import midline_x
from tests.sides_maps import abdomen, stored_lps


def _tumour_x(volume) -> float:
    index = np.argwhere(volume.array == ID["tumour"])
    assert len(index), "no tumour placed"
    return float(volume.world_coordinates(index.mean(axis=0))[0])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("swapped", [False, True], ids=["labels-right", "labels-swapped"])
@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_kidney_tumour_lands_on_the_stated_side(side, swapped, storage):
    labels = abdomen(swap_kidneys=swapped)
    if storage == "LPS":
        labels = stored_lps(labels)
    stated = parse_prompt(f"small renal tumor, 2.5 cm, {side} kidney").tumours
    assert stated is not None and stated[0].organ == f"kidney_{side}"
    out, record = place_stated_tumours(labels, stated, np.random.default_rng(3))
    midline = midline_x(out, out.array)
    assert (_tumour_x(out) > midline) if side == "right" else (_tumour_x(out) < midline)
    assert all(record["agreement"].values()), record
    assert [t.organ for t in measure_labels(out).attributes.tumours] == [f"kidney_{side}"]


def test_stated_kidney_size_changes_the_kidney_on_that_side():
    # The left kidney (patient's left) is small; the map's labels are swapped. "Normal left kidney"
    # must grow the kidney at the patient's left, labelled kidney_right here.
    labels = abdomen(swap_kidneys=True)
    stated = parse_prompt("normal left kidney").organs
    out, record = apply_stated_organs(labels, stated, np.random.default_rng(0))
    assert record["kidney_left"]["changed"] and record["kidney_left"]["holds"], record
    grown = (out.array == ID["kidney_right"]).sum() > (labels.array == ID["kidney_right"]).sum()
    untouched = (out.array == ID["kidney_left"]).sum() == (labels.array == ID["kidney_left"]).sum()
    assert grown and untouched


@pytest.mark.parametrize("storage", ["RAS", "LPS"])
def test_placement_stage_names_kidneys_by_their_side(storage):
    from guidegen.masks.sampler import apply_statements
    from guidegen.text.sides import kidneys_swapped

    swapped = abdomen(swap_kidneys=True)
    normal = abdomen()
    if storage == "LPS":
        swapped, normal = stored_lps(swapped), stored_lps(normal)
    attributes = parse_prompt("small renal tumor, 2.5 cm, left kidney")
    out = apply_statements(swapped, attributes, seed=0, aorta=False)
    assert out.meta.get("kidney_labels_exchanged") is True and not kidneys_swapped(out)
    # Only names changed: the kidneys are where they were, and the tumour is in the left one.
    kidneys = np.isin(swapped.array, [ID["kidney_right"], ID["kidney_left"]])
    assert np.all(np.isin(out.array[kidneys], [ID["kidney_right"], ID["kidney_left"], ID["tumour"]]))
    assert _tumour_x(out) < midline_x(out, out.array)
    untouched = apply_statements(normal, parse_prompt("healthy abdomen"), seed=0, aorta=False)
    assert "kidney_labels_exchanged" not in untouched.meta and np.array_equal(untouched.array, normal.array)
