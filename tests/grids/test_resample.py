"""Resampling label maps onto another grid (guidegen.grids.resample): shape-based interpolation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from guidegen.grids.resample import grid_affine, resample_labels
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import UNKNOWN


def test_shape_based_label_upsampling_has_no_staircase():
    # A sphere sampled at 6 mm slices, upsampled to 2 mm: nearest neighbour would give 3-slice
    # plateaus; shape-based interpolation makes the radius change on every slice.
    zz = np.arange(12) * 6.0
    xx = np.arange(40) * 2.0
    X, Y, Z = np.meshgrid(xx, xx, zz, indexing="ij")
    sphere = ((X - 40) ** 2 + (Y - 40) ** 2 + (Z - 33) ** 2 <= 25**2).astype(np.uint8)
    src = Volume(sphere, np.diag([2.0, 2.0, 6.0, 1.0]), "labels")
    out = resample_labels(src, grid_affine((2.0, 2.0, 2.0), np.zeros(3)), (40, 40, 34), mark_outside_unknown=False)
    areas = (out.array == 1).sum(axis=(0, 1))
    core = areas[6:12]  # slices where the sphere's cross-section grows
    assert np.all(np.diff(core) > 0), areas
    # Volume is kept within 5 % of the analytic sphere.
    assert abs((out.array == 1).sum() * 8.0 / (4 / 3 * np.pi * 25**3) - 1) < 0.05
    assert ndimage.label(out.array == 1)[1] == 1


def test_outside_the_scan_is_unknown():
    src = Volume(np.ones((10, 10, 10), np.uint8), np.eye(4), "labels")
    out = resample_labels(src, grid_affine((1.0, 1.0, 1.0), np.array([-5.0, 0, 0])), (20, 10, 10))
    assert np.all(out.array[:4] == UNKNOWN) and np.all(out.array[6:14] == 1)
