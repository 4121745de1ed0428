"""The seam's offset field (guidegen.images.seam): Poisson image editing per tissue."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.images.seam import level_offset


def _cube(shape=(16, 16, 8)):
    region = np.zeros(shape, bool)
    region[4:12, 4:12, 2:6] = True
    return region


def test_a_constant_level_mismatch_is_removed_everywhere_inside():
    region = _cube()
    labels = np.full(region.shape, 4, np.uint8)
    real = np.full(region.shape, 44.0, np.float32)
    generated = np.full(region.shape, 60.0, np.float32)  # drawn 16 HU too bright, inside and just outside
    offset, record = level_offset(generated, real, labels, region, (1.0, 1.0, 5.0))
    assert record["converged"] and record["border_pairs"] > 0
    assert np.allclose(offset[region], -16.0, atol=0.05)
    assert (offset[~region] == 0).all()


def test_a_linear_mismatch_is_extended_linearly_in_millimetres():
    # r − g = 2 HU per mm along z on 5 mm slices: the harmonic extension is that same plane.
    region = _cube()
    labels = np.full(region.shape, 4, np.uint8)
    z_mm = np.arange(region.shape[2]) * 5.0
    real = np.broadcast_to(2.0 * z_mm, region.shape).astype(np.float32)
    generated = np.zeros(region.shape, np.float32)
    offset, _ = level_offset(generated, real, labels, region, (0.8, 0.8, 5.0))
    assert np.allclose(offset[region], real[region], atol=0.5)


def test_each_tissue_takes_its_own_offset_and_gas_carries_none():
    region = _cube()
    labels = np.full(region.shape, 4, np.uint8)  # liver
    labels[8:, :, :] = 12  # body (fat)
    real = np.where(labels == 4, 44.0, -100.0).astype(np.float32)
    generated = np.where(labels == 4, 60.0, -80.0).astype(np.float32)
    gas = np.zeros(region.shape, bool)
    gas[:, 12:, :] = True  # outside the region on one side: real gas where the generator drew tissue
    real[gas] = -900.0
    offset, _ = level_offset(generated, real, labels, region, (1.0, 1.0, 1.0))
    liver, fat = region & (labels == 4), region & (labels == 12)
    assert np.allclose(offset[liver], -16.0, atol=0.1) and np.allclose(offset[fat], -20.0, atol=0.1)


def test_fixed_voxels_and_unreachable_tissue_get_no_offset():
    region = _cube()
    labels = np.full(region.shape, 4, np.uint8)
    labels[7:9, 7:9, 3:5] = 11  # a tumour wholly inside: no border of its own
    fixed = np.zeros(region.shape, bool)
    fixed[5, 5, 3] = True
    real = np.full(region.shape, 44.0, np.float32)
    generated = np.full(region.shape, 60.0, np.float32)
    offset, _ = level_offset(generated, real, labels, region, (1.0, 1.0, 1.0), fixed=fixed)
    assert offset[5, 5, 3] == 0.0
    assert np.abs(offset[labels == 11]).max() < 0.5  # the tumour keeps the level it was drawn at
    with pytest.raises(ValueError, match="fixed"):
        level_offset(generated, real, labels, region, (1.0, 1.0, 1.0), fixed=fixed[:-1])
