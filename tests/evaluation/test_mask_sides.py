"""The mask check's side test (`side_check`): maps with organs on the wrong side are flagged."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.evaluation.mask_anatomy import SIDES, side_check, wrong_sides
from guidegen.evaluation.masks import check_masks
from guidegen.labels.vocabulary import ID
from tests.sides_maps import abdomen, stored_lps


@pytest.mark.parametrize("store", [lambda v: v, stored_lps], ids=["RAS", "LPS"])
def test_sides_hold_on_a_normal_map_in_any_storage_order(store):
    assert side_check(store(abdomen())) == dict.fromkeys(SIDES, True)


@pytest.mark.parametrize("store", [lambda v: v, stored_lps], ids=["RAS", "LPS"])
def test_swapped_kidney_labels_are_flagged(store):
    assert wrong_sides(side_check(store(abdomen(swap_kidneys=True)))) == [
        "kidney_left_left_of_kidney_right",
        "kidney_right_right_of_midline",
        "kidney_left_left_of_midline",
    ]


def test_a_left_kidney_beside_the_right_one_is_flagged():
    # The default model's seed-3 map of "left renal mass 45 mm": a small "left kidney" just right of
    # the midline, medial to the right kidney. The two kidneys are in the right order; the midline
    # test catches it.
    labels = abdomen()
    array = labels.array.copy()
    array[array == ID["kidney_left"]] = ID["body"]
    index = np.argwhere(labels.array == ID["kidney_right"])
    x = labels.world_coordinates(index)[:, 0]
    array[tuple(index[x < 45.0].T)] = ID["kidney_left"]  # the medial part of the right kidney
    assert wrong_sides(side_check(labels.with_array(array))) == ["kidney_left_left_of_midline"]


def test_a_mirrored_map_fails_every_side_test():
    # The array mirrored along x under the same affine: situs inversus, or a left/right flip that
    # forgot to swap the labels.
    normal = abdomen()
    mirrored = normal.with_array(normal.array[::-1].copy())
    assert wrong_sides(side_check(mirrored)) == list(SIDES)


def test_check_masks_reports_the_wrong_side_rate():
    maps = [abdomen(), abdomen(swap_kidneys=True), abdomen(), abdomen()]
    report = check_masks(maps, ["normal abdomen"] * 4)
    assert report.wrong_side_fraction == 0.25
    assert report.samples[1].to_dict()["wrong_side"][0] == "kidney_left_left_of_kidney_right"
    line = next(line for line in report.summary_lines() if line.strip().startswith("sides:"))
    assert "1/4" in line and "kidney_left_left_of_kidney_right" in line
