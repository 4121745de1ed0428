"""The mask check's side test (`side_check`): maps with organs on the wrong side are flagged."""

from __future__ import annotations

import pytest

from guidegen.evaluation.mask_anatomy import SIDES, side_check, wrong_sides
from guidegen.evaluation.masks import check_masks
from tests.sides_maps import abdomen, stored_lps


@pytest.mark.parametrize("store", [lambda v: v, stored_lps], ids=["RAS", "LPS"])
def test_sides_hold_on_a_normal_map_in_any_storage_order(store):
    assert side_check(store(abdomen())) == dict.fromkeys(SIDES, True)


@pytest.mark.parametrize("store", [lambda v: v, stored_lps], ids=["RAS", "LPS"])
def test_swapped_kidney_labels_are_flagged(store):
    assert wrong_sides(side_check(store(abdomen(swap_kidneys=True)))) == ["kidney_left_left_of_kidney_right"]


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
    assert report.samples[1].to_dict()["wrong_side"] == ["kidney_left_left_of_kidney_right"]
    line = next(line for line in report.summary_lines() if line.strip().startswith("sides:"))
    assert "1/4" in line and "kidney_left_left_of_kidney_right" in line
