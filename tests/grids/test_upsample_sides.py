"""Upsampling a sampled map onto the image generator's grid keeps every organ on its side (issue 24),
whichever order the coarse map is stored in."""

from __future__ import annotations

import pytest

from guidegen.evaluation.mask_anatomy import SIDES, side_check
from guidegen.grids.upsample import upsample_labels
from guidegen.text.sides import kidneys_swapped
from tests.sides_maps import abdomen, stored_lps


@pytest.mark.parametrize("store", [lambda v: v, stored_lps], ids=["RAS", "LPS"])
def test_upsampled_map_keeps_sides(store):
    fine = upsample_labels(store(abdomen()), spacing=(4.0, 4.0, 4.0))
    assert side_check(fine) == dict.fromkeys(SIDES, True)
    assert not kidneys_swapped(fine)
