"""Shape-based warping of label maps (`guidegen.data.ops.warp`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from guidegen.data.ops.warp import grid_points, warp_labels


def test_warp_is_smooth_not_staircase():
    # A ball shifted by half a voxel along a diagonal stays one compact convex-ish blob of the
    # same size (nearest neighbour at exactly half-voxel offsets duplicates or drops whole rows).
    grid = np.indices((24, 24, 24)).astype(float)
    ball = (((grid - 11.5) ** 2).sum(0) <= 6.2**2).astype(np.uint8)
    coords = grid_points(ball.shape) + np.float32(0.5)
    out = warp_labels(ball, (2.0, 2.0, 2.0), coords)
    assert abs(int(out.sum()) - int(ball.sum())) / ball.sum() < 0.05
    filled = ndimage.binary_fill_holes(out)
    assert np.array_equal(filled, out.astype(bool)) and ndimage.label(out)[1] == 1
