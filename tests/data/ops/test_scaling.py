"""`OrganScaling` (`guidegen.data.ops.scaling`)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.data.ops import OrganScaling, ScalingParams
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, UNKNOWN
from tests.data.conftest import SOFT, SOLID, counts


def test_spleen_growth(labels, ct):
    out, out_ct = OrganScaling().apply(labels, ScalingParams("spleen", 1.5), ct)
    ratio = counts(out)[ID["spleen"]] / counts(labels)[ID["spleen"]]
    assert 1.3 <= ratio <= 1.6
    result = out.meta["augmentations"][-1]["result"]
    assert result["achieved_volume_factor"] == pytest.approx(ratio, abs=1e-3)
    for cls in SOLID:
        if cls != ID["spleen"]:
            np.testing.assert_array_equal(out.array == cls, labels.array == cls, err_msg=f"class {cls}")
    np.testing.assert_array_equal(out.array == UNKNOWN, labels.array == UNKNOWN)
    # CT changed only where the spleen is or was (a few old voxels fall outside the scaled shape).
    changed = out_ct.array != ct.array
    assert changed.any()
    assert not np.any(changed & (out.array != ID["spleen"]) & (labels.array != ID["spleen"]))


def test_spleen_shrink_leaves_no_background_holes(labels):
    out, _ = OrganScaling().apply(labels, ScalingParams("spleen", 0.7))
    ratio = counts(out)[ID["spleen"]] / counts(labels)[ID["spleen"]]
    assert 0.6 <= ratio <= 0.8
    assert not np.any((out.array == 0) & (labels.array != 0))  # vacated voxels never become air
    vacated = (labels.array == ID["spleen"]) & (out.array != ID["spleen"])
    assert vacated.any() and np.all(np.isin(out.array[vacated], list(SOFT - {0})))
    for cls in SOLID:
        if cls != ID["spleen"]:
            np.testing.assert_array_equal(out.array == cls, labels.array == cls)


def test_shrink_without_body_outline_fills_background(labels):
    # A partially annotated map (no body class): 0 means "none of the annotated classes".
    array = np.where(labels.array == ID["body"], 0, labels.array).astype(np.uint8)
    out, _ = OrganScaling().apply(labels.with_array(array), ScalingParams("liver", 0.8))
    ratio = counts(out)[ID["liver"]] / counts(array)[ID["liver"]]
    assert 0.7 <= ratio <= 0.9
    assert not np.any(out.array == ID["body"])


def test_scaling_anisotropic_ball():
    spacing = (2.0, 2.0, 5.0)
    grid = np.indices((40, 40, 20)).astype(float) * np.array(spacing)[:, None, None, None]
    # An ellipsoid off the grid's symmetry (a ball centred on a voxel grows in whole shells at once).
    radii = np.array([22.0, 17.0, 25.0])[:, None, None, None]
    ball = (((grid - np.array([40.7, 39.3, 51.2])[:, None, None, None]) / radii) ** 2).sum(0) <= 1.0
    array = np.where(ball, ID["liver"], ID["body"]).astype(np.uint8)
    volume = Volume(array, np.diag([*spacing, 1.0]), "labels")
    for factor in (0.6, 1.8):
        out, _ = OrganScaling().apply(volume, ScalingParams("liver", factor))
        assert counts(out)[ID["liver"]] / ball.sum() == pytest.approx(factor, rel=0.05)


def test_scaling_errors(labels):
    with pytest.raises(ValueError, match="organ"):
        ScalingParams("nonsense", 1.2)
    with pytest.raises(ValueError, match="volume_factor"):
        ScalingParams("spleen", 0.0)
    empty = labels.with_array(np.where(labels.array == ID["spleen"], ID["body"], labels.array).astype(np.uint8))
    with pytest.raises(ValueError, match="not present"):
        OrganScaling().apply(empty, ScalingParams("spleen", 1.2))
    assert OrganScaling(organs=("spleen",)).applicable(empty) is False


def _ellipsoid(spacing=(2.0, 2.0, 2.0)) -> np.ndarray:
    grid = np.indices((60, 60, 60)).astype(float) * np.array(spacing)[:, None, None, None]
    radii = np.array([20.0, 16.0, 18.0])[:, None, None, None]
    inside = (((grid - np.array([58.3, 61.1, 57.4])[:, None, None, None]) / radii) ** 2).sum(0) <= 1.0
    return np.where(inside, ID["liver"], ID["body"]).astype(np.uint8)


def _extent(array: np.ndarray, axis: int) -> tuple[int, int]:
    along = np.nonzero((array == ID["liver"]).any(axis=tuple(a for a in range(3) if a != axis)))[0]
    return int(along.min()), int(along.max())


@pytest.mark.parametrize("factor", [0.6, 1.8])
def test_fixed_top_holds_the_top_and_moves_the_bottom(factor):
    array = _ellipsoid()
    volume = Volume(array, np.diag([2.0, 2.0, 2.0, 1.0]), "labels")
    low, top = _extent(array, 2)
    held, _ = OrganScaling().apply(volume, ScalingParams("liver", factor, fixed_top=True))
    about_centre, _ = OrganScaling().apply(volume, ScalingParams("liver", factor))
    assert _extent(held.array, 2)[1] == top
    assert _extent(about_centre.array, 2)[1] != top  # about the centroid, the top moves too
    # The bottom moves twice as far as about the centroid (the organ's height changes by the same).
    moved, moved_about_centre = _extent(held.array, 2)[0] - low, _extent(about_centre.array, 2)[0] - low
    assert abs(moved) >= 1.5 * abs(moved_about_centre) >= 1.5 and np.sign(moved) == np.sign(moved_about_centre)
    # The same volume either way: only the fixed point differs.
    assert (held.array == ID["liver"]).sum() == pytest.approx((about_centre.array == ID["liver"]).sum(), rel=0.05)


def test_fixed_top_follows_the_patient_not_the_array_axes():
    # Array axis 0 runs from head to feet (world z = -2 mm per index): the top is index 0's end.
    array = np.moveaxis(_ellipsoid(), 2, 0)
    affine = np.array([[0, 2.0, 0, 0], [0, 0, 2.0, 0], [-2.0, 0, 0, 120.0], [0, 0, 0, 1]])
    volume = Volume(array, affine, "labels")
    head_end, feet_end = _extent(array, 0)
    grown, _ = OrganScaling().apply(volume, ScalingParams("liver", 1.8, fixed_top=True))
    assert _extent(grown.array, 0)[0] == head_end
    assert _extent(grown.array, 0)[1] > feet_end + 1
