"""Kidney sides read from world positions (`guidegen.text.sides`) and what `measure_labels` and the
agreement check report from them, on maps stored RAS and LPS (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.labels.vocabulary import ID
from guidegen.text.agreement import tumour_agreement
from guidegen.text.attributes import Tumour
from guidegen.text.measure import measure_labels
from guidegen.text.sides import kidneys_swapped, midline_x
from tests.sides_maps import abdomen, stored_lps

STORAGE = {"RAS": lambda v: v, "LPS": stored_lps}


@pytest.mark.parametrize("storage", STORAGE)
def test_swapped_kidney_labels_are_recognised_in_any_storage_order(storage):
    assert not kidneys_swapped(STORAGE[storage](abdomen()))
    assert kidneys_swapped(STORAGE[storage](abdomen(swap_kidneys=True)))


def test_a_lone_kidney_is_judged_against_the_midline():
    normal = abdomen()
    lone = normal.array.copy()
    lone[lone == ID["kidney_left"]] = ID["body"]  # left nephrectomy: the right kidney remains
    assert not kidneys_swapped(normal.with_array(lone))
    mislabelled = lone.copy()
    mislabelled[mislabelled == ID["kidney_right"]] = ID["kidney_left"]  # a "left kidney" at +x
    assert kidneys_swapped(normal.with_array(mislabelled))
    # Without the aorta the body outline gives the midline; without either the side is unknown.
    no_aorta = mislabelled.copy()
    no_aorta[no_aorta == ID["aorta"]] = ID["body"]
    assert abs(midline_x(normal, no_aorta)) < 10.0
    assert kidneys_swapped(normal.with_array(no_aorta))
    bare = np.where(np.isin(no_aorta, [ID["body"]]), 0, no_aorta).astype(np.uint8)
    assert not kidneys_swapped(normal.with_array(bare))


@pytest.mark.parametrize("storage", STORAGE)
def test_kidney_findings_follow_world_sides(storage):
    # The small kidney lies at the patient's left in both maps; only the labels differ.
    for swapped in (False, True):
        measured = measure_labels(STORAGE[storage](abdomen(swap_kidneys=swapped)))
        organs = measured.attributes.organs
        assert organs["kidney_left"].state == "small" and organs["kidney_right"].state == "normal"
        assert measured.kidneys_swapped is swapped


def test_ras_and_lps_storage_measure_the_same():
    for swapped in (False, True):
        ras = abdomen(swap_kidneys=swapped)
        assert measure_labels(stored_lps(ras)) == measure_labels(ras)


def _tumour_in_kidney_at(volume, side_sign: float):
    """A 3-voxel-wide tumour in the centre of the kidney lying at ``side_sign`` × x > 0."""
    array = volume.array.copy()
    kidneys = np.isin(array, [ID["kidney_right"], ID["kidney_left"]])
    index = np.argwhere(kidneys)
    x = volume.world_coordinates(index)[:, 0]
    centre = np.round(index[np.sign(x) == side_sign].mean(axis=0)).astype(int)
    box = tuple(slice(c - 1, c + 2) for c in centre)
    array[box] = ID["tumour"]
    return volume.with_array(array)


@pytest.mark.parametrize("storage", STORAGE)
def test_a_tumour_is_hosted_by_the_kidney_it_lies_in_not_by_the_label_name(storage):
    # The map: "left kidney" label on the patient's right, a tumour inside it. Its host is
    # the right kidney, so "tumour in the left kidney" does not hold and "right kidney" does.
    volume = STORAGE[storage](_tumour_in_kidney_at(abdomen(swap_kidneys=True), +1.0))
    tumours = measure_labels(volume).attributes.tumours
    assert [t.organ for t in tumours] == ["kidney_right"]
    assert tumour_agreement((Tumour("kidney_right", None, 15.0, 1),), tumours)["tumour1.organ"]
    assert not tumour_agreement((Tumour("kidney_left", None, 15.0, 1),), tumours)["tumour1.organ"]


def test_a_tumour_in_a_left_kidney_label_right_of_the_midline_is_right_sided():
    # The default model's seed-3 map of "left renal mass 45 mm": its "left kidney" lay just right of
    # the midline, beside the right kidney; the tumour placed in it is on the patient's right.
    labels = abdomen()
    array = labels.array.copy()
    array[array == ID["kidney_left"]] = ID["body"]
    index = np.argwhere(labels.array == ID["kidney_right"])
    x = labels.world_coordinates(index)[:, 0]
    array[tuple(index[x < 45.0].T)] = ID["kidney_left"]  # the medial part of the right kidney
    centre = np.round(np.argwhere(array == ID["kidney_left"]).mean(axis=0)).astype(int)
    box = tuple(slice(c - 1, c + 2) for c in centre)
    assert np.all(array[box] == ID["kidney_left"])  # the tumour goes inside the "left kidney" label
    array[box] = ID["tumour"]
    volume = labels.with_array(array)
    measured = measure_labels(volume)
    assert not measured.kidneys_swapped  # the two labels are in the right order …
    assert [t.organ for t in measured.attributes.tumours] == ["kidney_right"]  # … the tumour is not
