"""A new tumour's grain follows its real host (`guidegen.images.tumour_grain`, issue 25)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.images.grain import lesion_texture
from guidegen.images.inpaint import inpaint_ct
from guidegen.images.tumour_grain import TUMOUR_GRAIN_FRACTION, match_tumour_grain
from guidegen.labels.vocabulary import ID
from tests.images.test_inpaint import _tumour_ball, real_scan  # noqa: F401  (the fixture)

SPACING = (0.8, 0.8, 2.0)


def _scan(seed: int = 0):
    """A 1-host phantom: liver with 12 HU white grain around a smooth 7 mm ball of tumour at 55 HU."""
    rng = np.random.default_rng(seed)
    shape = (64, 64, 12)
    labels = np.zeros(shape, np.uint8)
    labels[4:60, 4:60, :] = ID["liver"]
    real = np.full(shape, -1000.0, np.float32)
    real[labels == ID["liver"]] = 100.0 + 12.0 * rng.standard_normal(int((labels == ID["liver"]).sum()))
    ii = np.indices(shape).transpose(1, 2, 3, 0) * np.array(SPACING)
    ball = np.linalg.norm(ii - np.array([32, 32, 6]) * np.array(SPACING), axis=-1) <= 7.0
    hu = real.copy()
    hu[ball] = 55.0 + 1.5 * rng.standard_normal(int(ball.sum()))
    labels_edited = labels.copy()
    labels_edited[ball] = ID["tumour"]
    return hu, real, labels_edited, ball


def test_a_smooth_tumour_gets_its_host_s_share_of_grain_and_nothing_else_changes():
    hu, real, labels, ball = _scan()
    host_grain = lesion_texture(real, labels == ID["liver"], SPACING)[1]
    before = hu.copy()
    (entry,) = match_tumour_grain(hu, ball.astype(int), ["liver"], real, labels, SPACING, 3.0, seed=1)
    target = TUMOUR_GRAIN_FRACTION["liver"] * host_grain
    assert entry["host_grain_hu"] == pytest.approx(host_grain, abs=0.05)
    assert entry["before_hu"] < 3.0 and entry["after_hu"] == pytest.approx(target, abs=0.05)
    assert lesion_texture(hu, ball, SPACING)[1] == pytest.approx(target, abs=0.01)
    assert abs(hu[ball].mean() - before[ball].mean()) < 1.5  # the level stays
    # The grain is added within a millimetre's smoothing of the tumour, nowhere else.
    far = np.ones_like(ball)
    far[12:52, 12:52, :] = False
    assert np.array_equal(hu[far], before[far])


def test_grain_is_only_added_and_hosts_without_real_tumours_are_left_alone():
    hu, real, labels, ball = _scan()
    hu[ball] += 40.0 * np.random.default_rng(3).standard_normal(int(ball.sum()))  # grainier than any liver
    before = hu.copy()
    (entry,) = match_tumour_grain(hu, ball.astype(int), ["liver"], real, labels, SPACING, 3.0, seed=1)
    assert entry["before_hu"] > entry["target_hu"] and np.array_equal(hu, before)
    hu, real, labels, ball = _scan()
    labels[labels == ID["liver"]] = ID["spleen"]
    before = hu.copy()
    (entry,) = match_tumour_grain(hu, ball.astype(int), ["spleen"], real, labels, SPACING, 3.0, seed=1)
    assert "left" in entry and np.array_equal(hu, before)


def test_an_edit_draws_the_new_tumour_with_its_real_host_s_share_of_grain(oracle_model, real_scan):  # noqa: F811
    ct, labels = real_scan
    ball, _, edited = _tumour_ball(labels, "liver", 10.0)
    out, _, record = inpaint_ct(oracle_model, ct, labels.with_array(edited), ball, new_tumour=ball, seed=0)
    (entry,) = record["tumour_grain"]
    host = (labels.array == ID["liver"]) & ~ball
    target = TUMOUR_GRAIN_FRACTION["liver"] * lesion_texture(ct.array.astype(np.float32), host, ct.spacing)[1]
    assert entry["target_hu"] == pytest.approx(target, abs=0.05)
    assert entry["before_hu"] < target - 2.0  # the oracle draws a flat tumour: the texture alone is weaker
    # What the scan now holds, in whole HU after the join to the real scan, is that grain.
    assert lesion_texture(out.array.astype(np.float32), ball, ct.spacing)[1] == pytest.approx(target, abs=1.0)
    _, _, plain = inpaint_ct(oracle_model, ct, labels.with_array(edited), ball, new_tumour=ball, seed=0, texture=False)
    assert plain["tumour_grain"] is None
