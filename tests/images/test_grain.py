from __future__ import annotations

import math

import numpy as np
import pytest

from guidegen.images.grain import interior, measure_texture, slice_axis
from guidegen.images.texture_fit import detrended_response
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID


def _phantom(hu: np.ndarray, spacing=(0.8, 0.8, 5.0)) -> tuple[Volume, Volume]:
    labels = np.zeros(hu.shape, np.uint8)
    labels[8:-8, 8:-8, :] = ID["liver"]
    affine = np.diag([*spacing, 1.0])
    return Volume(hu.astype(np.float32), affine, "ct"), Volume(labels, affine, "labels")


def test_white_noise_grain_and_slice_change_match_theory():
    rng = np.random.default_rng(0)
    sigma = 10.0
    ct, labels = _phantom(50.0 + sigma * rng.standard_normal((160, 160, 6)))
    stats = measure_texture(ct, labels)["liver"]
    # Detrending keeps a known fraction of white noise (computed from the filters alone).
    h = detrended_response((0.8, 0.8), 0.001)
    assert stats.grain == pytest.approx(sigma * math.sqrt(float((h**2).sum())), rel=0.03)
    # Independent slices: |a − b| of two N(0, σ²) has mean 2σ/√π.
    assert stats.adjacent_change == pytest.approx(2 * sigma / math.sqrt(math.pi), rel=0.03)
    assert abs(stats.slice_correlation) < 0.03
    assert stats.mean == pytest.approx(50.0, abs=0.5)


def test_smooth_trends_are_not_grain():
    x = np.linspace(0, 400, 160)[:, None, None]  # 400 HU across 128 mm, a strong organ-scale trend
    ct, labels = _phantom(np.broadcast_to(x, (160, 160, 4)).copy())
    stats = measure_texture(ct, labels)["liver"]
    assert stats.grain < 0.5
    assert stats.adjacent_change == 0.0


def test_interior_is_in_plane_and_in_millimetres():
    mask = np.zeros((40, 40, 3), bool)
    mask[10:30, 10:30, :] = True
    inner = interior(mask, (1.0, 1.0, 5.0), 3.0)
    assert inner[..., 1].sum() == 14 * 14  # 3 mm in from each side, every slice (z is not eroded)
    assert inner[..., 0].sum() == inner[..., 2].sum() == 14 * 14


def test_slice_axis_follows_the_affine():
    assert slice_axis(np.diag([0.7, 0.7, 5.0, 1.0])) == 2
    lai_like = np.array([[0, 0, 5.0, 0], [-0.7, 0, 0, 0], [0, -0.7, 0, 0], [0, 0, 0, 1.0]])
    assert slice_axis(lai_like) == 1  # world z runs along the array's second axis here
