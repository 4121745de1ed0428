from __future__ import annotations

import numpy as np
import torch

from guidegen.images.hu import HU_KNOTS, UNIT_KNOTS, hu_to_unit, unit_to_hu, units_to_int16_hu


def test_round_trip_over_the_whole_ct_range():
    hu = np.arange(-1024, 3072, dtype=np.float64)
    u = hu_to_unit(hu)
    assert u.dtype == np.float32
    assert u.min() == -1.0 and u.max() == 1.0
    assert np.all(np.diff(u) > 0)  # strictly monotone: invertible
    assert np.abs(unit_to_hu(u) - hu).max() < 0.02
    assert np.array_equal(units_to_int16_hu(u), hu.astype(np.int16))
    units = np.linspace(-1, 1, 1001)
    assert np.abs(hu_to_unit(unit_to_hu(units)) - units).max() < 1e-6


def test_torch_and_numpy_agree():
    hu = np.linspace(-1500, 4000, 777)
    a = hu_to_unit(hu)
    b = hu_to_unit(torch.from_numpy(hu).float())
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
    assert np.allclose(a, b.numpy(), atol=1e-6)
    assert np.allclose(unit_to_hu(a), unit_to_hu(torch.from_numpy(a)).numpy(), atol=1e-2)


def test_soft_tissue_gets_more_resolution_than_a_linear_map():
    linear_slope = 2.0 / (3071 + 1024)
    soft = (hu_to_unit(np.array([300.0])) - hu_to_unit(np.array([-200.0])))[0] / 500
    assert soft > 4 * linear_slope
    assert HU_KNOTS[0] == -1024 and HU_KNOTS[-1] == 3071 and UNIT_KNOTS == tuple(sorted(UNIT_KNOTS))


def test_out_of_range_values_are_clipped():
    assert hu_to_unit(np.array([-3024.0, 5000.0])).tolist() == [-1.0, 1.0]
    out = units_to_int16_hu(torch.tensor([-7.0, 0.0, 9.0]))
    assert out.dtype == np.int16 and out[0] == -1024 and out[2] == 3071
    assert -200 < out[1] < 300
