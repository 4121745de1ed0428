"""Resampling CT within classes: no blending across label borders onto a finer grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from guidegen.grids.class_resample import point_spread, resample_ct_within_classes
from guidegen.grids.resample import grid_affine, resample_ct, resample_labels
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import UNKNOWN

ORGAN_HU, FAT_HU = 40.0, -100.0


def _phantom(fine_mm: float = 0.5, coarse_mm: float = 3.0, size_mm: float = 60.0):
    """A ball of organ in fat, drawn sharp on a fine grid and downsampled like the model's training CT
    (so the coarse border voxels are partial-volume mixtures)."""
    n = int(size_mm / fine_mm)
    idx = (np.indices((n, n, n)) + 0.5) * fine_mm - size_mm / 2
    ball = (idx**2).sum(0) < 18.0**2
    fine_labels = Volume(ball.astype(np.uint8), grid_affine((fine_mm,) * 3, np.zeros(3)), "labels")
    fine_ct = Volume(np.where(ball, ORGAN_HU, FAT_HU).astype(np.float32), fine_labels.affine, "ct")
    m = int(size_mm / coarse_mm)
    origin = np.full(3, (coarse_mm - fine_mm) / 2)
    coarse_affine = grid_affine((coarse_mm,) * 3, origin)
    coarse_ct = resample_ct(fine_ct, coarse_affine, (m, m, m))
    coarse_labels = resample_labels(fine_labels, coarse_affine, (m, m, m))
    return fine_labels, coarse_ct, coarse_labels


def test_a_structure_keeps_its_own_hu_up_to_its_border():
    fine_labels, coarse_ct, coarse_labels = _phantom()
    plain = resample_ct(coarse_ct, fine_labels.affine, fine_labels.shape).array
    out = resample_ct_within_classes(coarse_ct, coarse_labels.array, fine_labels.array, fine_labels.affine)
    organ = fine_labels.array == 1
    # Plain linear resampling blends the 3 mm border into the organ (and the organ into the fat).
    assert plain[organ].mean() < ORGAN_HU - 8
    assert abs(out[organ].mean() - ORGAN_HU) < 2.0
    shell = organ & ~ndimage.binary_erosion(organ, iterations=2)  # the outer 1 mm of the organ
    assert out[shell].min() > ORGAN_HU - 10
    fat_shell = ndimage.binary_dilation(organ, iterations=2) & ~organ
    assert out[fat_shell].max() < FAT_HU + 10
    assert plain[fat_shell].max() > FAT_HU + 40


def test_deep_interior_keeps_the_plain_resampled_values_exactly():
    fine_labels, coarse_ct, coarse_labels = _phantom()
    rng = np.random.default_rng(0)
    textured = coarse_ct.with_array(coarse_ct.array + rng.normal(0, 5, coarse_ct.shape).astype(np.float32))
    plain = resample_ct(textured, fine_labels.affine, fine_labels.shape).array
    out = resample_ct_within_classes(textured, coarse_labels.array, fine_labels.array, fine_labels.affine)
    deep = ndimage.binary_erosion(fine_labels.array == 1, iterations=20)  # 10 mm inside the border
    assert deep.sum() > 1000
    np.testing.assert_array_equal(out[deep], plain[deep])


def test_unknown_voxels_and_classes_the_source_lacks_keep_the_plain_values():
    fine_labels, coarse_ct, coarse_labels = _phantom()
    target = fine_labels.array.copy()
    target[:10] = UNKNOWN
    target[-10:, :10] = 7  # a class the coarse map does not have
    plain = resample_ct(coarse_ct, fine_labels.affine, fine_labels.shape).array
    out = resample_ct_within_classes(coarse_ct, coarse_labels.array, target, fine_labels.affine, plain=plain)
    np.testing.assert_array_equal(out[target == UNKNOWN], plain[target == UNKNOWN])
    np.testing.assert_array_equal(out[target == 7], plain[target == 7])


def test_a_structure_without_an_interior_takes_its_own_border_voxels_not_its_neighbours():
    # A 3 mm sheet of organ: one coarse voxel thick, so no interior voxel on the coarse grid.
    coarse = np.zeros((12, 12, 12), np.uint8)
    coarse[:, 6, :] = 1
    ct = np.where(coarse == 1, 10.0, -900.0).astype(np.float32)
    coarse_ct = Volume(ct, grid_affine((3.0,) * 3, np.zeros(3)), "ct")
    fine_affine = grid_affine((1.0,) * 3, np.full(3, -1.0))
    fine = resample_labels(Volume(coarse, coarse_ct.affine, "labels"), fine_affine, (36, 36, 36)).array
    out = resample_ct_within_classes(coarse_ct, coarse, fine, fine_affine)
    sheet = fine == 1
    assert sheet.any()
    np.testing.assert_allclose(out[sheet], 10.0, atol=1e-3)


def test_shape_mismatch_is_refused():
    fine_labels, coarse_ct, coarse_labels = _phantom()
    with pytest.raises(ValueError, match="shape"):
        resample_ct_within_classes(coarse_ct, coarse_labels.array[:-1], fine_labels.array, fine_labels.affine)


def test_point_spread_blurs_fine_axes_only():
    step = np.zeros((20, 20, 20), np.float32)
    step[10:] = 100.0
    blurred = point_spread(step, (0.5, 0.5, 5.0))
    assert 0 < blurred[9, 5, 5] < 50 < blurred[10, 5, 5] < 100
    z_step = np.zeros((20, 20, 20), np.float32)
    z_step[..., 10:] = 100.0
    np.testing.assert_allclose(point_spread(z_step, (0.5, 0.5, 5.0)), z_step, atol=1e-4)
