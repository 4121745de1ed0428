"""The seam measure of an edit: references elsewhere, matched by pair direction, and in place."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.evaluation.edits import neighbour_differences, seam_jumps


def test_the_reference_elsewhere_is_matched_to_the_seam_s_pair_directions():
    # A tissue whose neighbours differ by 10 HU across slices and not at all in-plane (thick slices).
    shape = (20, 20, 12)
    real = np.tile((np.arange(shape[2]) % 2 * 10.0)[None, None, :], (shape[0], shape[1], 1))
    labels = np.ones(shape, np.uint8)
    # A region that is a slab of whole slices: its border has z-pairs only.
    box = (slice(0, 20), slice(0, 20), slice(4, 8))
    distance = np.zeros((20, 20, 4), np.float32)
    jumps = seam_jumps(real, real, labels, distance, 6.0, box)
    assert jumps["seam_hu"] == pytest.approx(10.0)
    assert jumps["real_matched_hu"] == pytest.approx(10.0)  # z-pairs elsewhere: 10 HU
    assert jumps["real_hu"] < 5.0  # all pairs elsewhere, mostly in-plane (0 HU)
    assert jumps["real_at_seam_hu"] == pytest.approx(10.0)
    per_axis = neighbour_differences(real, labels, np.ones(shape, bool), np.ones(shape, bool), by_axis=True)
    assert per_axis[(1, 0)][0] == 0.0 and per_axis[(1, 2)][0] == pytest.approx(10.0)
