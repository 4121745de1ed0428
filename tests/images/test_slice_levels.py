"""Slice-to-slice level consistency (`guidegen.images.slice_levels`; issue 28)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.images.grain import interior
from guidegen.images.native import finish_native
from guidegen.images.slice_levels import REJECT_HU, even_slice_levels, level_trend
from guidegen.labels.vocabulary import ID

SPACING = (0.8, 0.8, 2.5)
AFFINE = np.diag([*SPACING, 1.0])
SHAPE = (80, 80, 24)


def _organ(name: str = "spleen"):
    """A 40 mm cylinder of ``name`` along z in body, a 10 mm ball of tumour and a bone bar in it;
    the HU: organ 45 plus an in-plane pattern of its own (the same in every slice), noise, body −80."""
    labels = np.full(SHAPE, ID["body"], np.uint8)
    idx = np.indices(SHAPE).astype(float)
    rho = np.hypot((idx[0] - 40) * SPACING[0], (idx[1] - 40) * SPACING[1])
    labels[rho < 20.0] = ID[name]
    ball = np.sqrt(
        ((idx[0] - 30) * SPACING[0]) ** 2 + ((idx[1] - 40) * SPACING[1]) ** 2 + ((idx[2] - 12) * SPACING[2]) ** 2
    )
    labels[ball < 5.0] = ID["tumour"]
    labels[70:76, 30:50, :] = ID["bone"]
    rng = np.random.default_rng(0)
    hu = np.full(SHAPE, -80.0, np.float32)
    pattern = 8.0 * np.sin(idx[0] / 3.0) * np.cos(idx[1] / 4.0)
    hu[labels == ID[name]] = (45.0 + pattern)[labels == ID[name]]
    hu[labels == ID["tumour"]] = (20.0 + pattern)[labels == ID["tumour"]]
    hu[labels == ID["bone"]] = 400.0
    hu += rng.normal(0.0, 6.0, SHAPE).astype(np.float32)
    return hu, labels


def _slice_levels(hu: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    inside = interior(labels == ID[name], SPACING, 3.0)
    return np.array([float(np.median(hu[..., k][inside[..., k]])) for k in range(SHAPE[2])])


def _jumps() -> np.ndarray:
    rng = np.random.default_rng(1)
    jumps = rng.uniform(-25.0, 25.0, SHAPE[2])
    jumps[[3, 11, 19]] = [-70.0, 60.0, -45.0]  # a few far off, as the generator's worst slices
    return jumps.astype(np.float32)


def test_level_jumps_between_slices_are_removed():
    hu, labels = _organ()
    organ = labels == ID["spleen"]
    jumped = hu + np.where(organ, _jumps()[None, None, :], 0.0).astype(np.float32)
    out, record = even_slice_levels(jumped, labels, AFFINE, "non_contrast")
    before, after = _slice_levels(jumped, labels, "spleen"), _slice_levels(out, labels, "spleen")
    assert np.ptp(before) > 100.0
    # Neighbouring slices share a level again (a median of noisy voxels scatters well under 1 HU);
    # what is left is a slow drift: the local mean of the jumps, which no trend can tell from a real one.
    assert np.abs(np.diff(after)).max() < 1.5 and np.ptp(after) < 8.0
    # ... the organ's level as a whole kept (the jumps' mean stays: the network's overall level) ...
    inside = interior(organ, SPACING, 2.0)
    assert float(out[inside].mean()) == pytest.approx(float(jumped[inside].mean()), abs=0.5)
    # ... and within each slice nothing but a constant shift: the in-plane pattern is the network's.
    for k in range(SHAPE[2]):
        shift = (out - jumped)[..., k][organ[..., k]]
        assert np.ptp(shift) < 1e-3
    assert record["spleen"]["slices_measured"] == SHAPE[2] and record["spleen"]["max_offset_hu"] > 40.0


def test_a_smooth_z_gradient_is_kept():
    hu, labels = _organ("liver")
    organ = labels == ID["liver"]
    z = np.arange(SHAPE[2]) * SPACING[2]
    gradient = (0.8 * z + 15.0 * np.sin(z / 60.0 * np.pi)).astype(np.float32)  # 60 mm: a slow, curved drift
    smooth = hu + np.where(organ, gradient[None, None, :], 0.0).astype(np.float32)
    out, _ = even_slice_levels(smooth, labels, AFFINE, "non_contrast")
    change = _slice_levels(out, labels, "liver") - _slice_levels(smooth, labels, "liver")
    # The drift (about 60 HU end to end) stays; a local line bends less than the 15 HU hump, by about
    # f''·σ²/2 = 4.6 HU at most (σ = 15 mm), less where the fit sees both sides.
    assert np.abs(change).max() < 4.0
    # With jumps on top, the jumps go and the drift stays.
    jumped = smooth + np.where(organ, _jumps()[None, None, :], 0.0).astype(np.float32)
    out, _ = even_slice_levels(jumped, labels, AFFINE, "non_contrast")
    residual = _slice_levels(out, labels, "liver") - _slice_levels(smooth, labels, "liver")
    # Left: the hump's bias above and the jumps' local mean (a few HU each); the 60 HU drift stays.
    assert np.abs(np.diff(residual)).max() < 2.0 and np.ptp(residual) < 12.0


def test_tumour_bone_and_body_are_untouched():
    hu, labels = _organ()
    jumped = hu + np.where(labels == ID["spleen"], _jumps()[None, None, :], 0.0).astype(np.float32)
    out, _ = even_slice_levels(jumped, labels, AFFINE, "non_contrast")
    other = labels != ID["spleen"]
    assert np.array_equal(out[other], jumped[other])
    assert (labels == ID["tumour"]).sum() > 100


def test_kidneys_only_unenhanced_and_slice_axis_from_the_affine():
    hu, labels = _organ("kidney_left")
    jumped = hu + np.where(labels == ID["kidney_left"], _jumps()[None, None, :], 0.0).astype(np.float32)
    # Cortex and medulla after contrast: a slice's mean changes for real, so kidneys are left as drawn.
    for phase in ("portal_venous", None):
        out, record = even_slice_levels(jumped, labels, AFFINE, phase)
        assert np.array_equal(out, jumped) and "kidney_left" not in record
    # The same volume stored slices first (an LAI-like axis order): the same correction.
    moved = np.moveaxis(jumped, -1, 0)
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = SPACING[0], SPACING[1], -SPACING[2], 1.0
    out_first, _ = even_slice_levels(moved, np.moveaxis(labels, -1, 0), affine, "non_contrast")
    out_last, _ = even_slice_levels(jumped, labels, AFFINE, "non_contrast")
    assert np.allclose(np.moveaxis(out_first, 0, -1), out_last, atol=1e-3)
    assert not np.allclose(out_last, jumped)


def test_trend_is_robust_and_exact_for_a_line():
    z = np.arange(12) * 5.0
    line = 30.0 + 0.5 * z
    assert np.allclose(level_trend(z, line, np.ones(12)), line, atol=1e-6)
    hit = line.copy()
    hit[[0, 6]] += [-3 * REJECT_HU, 2 * REJECT_HU]  # far-off slices have no say in the trend
    assert np.allclose(level_trend(z, hit, np.ones(12)), line, atol=1e-6)
    with pytest.raises(ValueError, match="equal-length"):
        level_trend(z, line[:5], np.ones(12))


def test_finish_native_runs_the_step_with_the_levels():
    hu, labels = _organ()
    jumped = hu + np.where(labels == ID["spleen"], _jumps()[None, None, :], 0.0).astype(np.float32)
    on, record = finish_native(jumped, labels, AFFINE, (3.0, 3.0, 3.0), seed=0, phase="non_contrast", texture=False)
    assert record["slice_levels"]["spleen"]["slices_measured"] == SHAPE[2]
    off, record = finish_native(
        jumped, labels, AFFINE, (3.0, 3.0, 3.0), seed=0, phase="non_contrast", texture=False, slice_levels=False
    )
    assert record["slice_levels"] is None and np.ptp(_slice_levels(off, labels, "spleen")) > 100.0
    assert np.ptp(_slice_levels(on, labels, "spleen")) < 8.0
