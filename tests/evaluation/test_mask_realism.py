"""Sampled-vs-real comparison of shape features (`guidegen.evaluation.mask_realism`) and the unstated-organ
check (`guidegen.evaluation.mask_unstated`)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.evaluation.mask_realism import FeatureRow, compare_shapes, energy_distance, energy_test
from guidegen.evaluation.mask_shape import ColonPath, MapShape
from guidegen.evaluation.mask_unstated import changed_organs, unstated_organ_check, unstated_summary
from guidegen.text.attributes import Attributes, OrganFinding
from guidegen.text.measure import REFERENCE_RANGES
from guidegen.text.parse import parse_prompt


def test_energy_distance_is_zero_for_one_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    near, far = energy_distance(x, x + 0.5), energy_distance(x, x + 2.0)
    assert 0.0 < near < far
    # In one dimension it is twice the Cramér distance that scipy's energy_distance takes the root of.
    import scipy.stats

    a, b = rng.normal(size=40), rng.normal(1.0, 2.0, size=25)
    assert energy_distance(a[:, None], b[:, None]) == pytest.approx(scipy.stats.energy_distance(a, b) ** 2, rel=1e-9)
    with pytest.raises(ValueError):
        energy_distance(x, x[:, :2])


def test_energy_test_separates_different_sets_only():
    rng = np.random.default_rng(1)
    x, same, shifted = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)), rng.normal(3.0, 1.0, size=(12, 3))
    _, p_same = energy_test(x, same, permutations=199)
    _, p_shifted = energy_test(x, shifted, permutations=199)
    assert p_shifted <= 0.01 < 0.1 < p_same
    assert energy_test(x, shifted, permutations=0)[1] is None


def test_feature_row_range_and_standardised_difference():
    row = FeatureRow(
        "liver", "volume_ml", real=(1000.0, 1500.0, 2000.0), sampled=(900.0, 1200.0, 1800.0, 2500.0), sampled_maps=5
    )
    assert row.real_range == (1000.0, 2000.0)
    assert row.in_range == 2 and row.sampled_median == 1500.0 and row.median_in_range is True
    d = (np.mean(row.sampled) - 1500.0) / np.sqrt((np.var(row.real, ddof=1) + np.var(row.sampled, ddof=1)) / 2)
    assert row.cohen_d == pytest.approx(d)
    assert FeatureRow("liver", "components", (1.0, 1.0), (1.0, 1.0), 2).cohen_d is None  # constant: no d
    assert FeatureRow("liver", "x_mm", (), (1.0,), 1).median_in_range is None


def _shape(volume: float, sphericity: float, colon: ColonPath | None, spacing=(8.0, 8.0, 8.0)) -> MapShape:
    organs = {
        "liver": {"volume_ml": volume, "sphericity": sphericity},
        "spleen": {"volume_ml": 0.0, "sphericity": None},
    }
    return MapShape(organs=organs, colon=colon, spacing=spacing)


WHOLE = ColonPath(1, 1.0, True, 900.0, True, None)
BROKEN = ColonPath(4, 0.5, False, 300.0, False, "does not run from the left side to the right side")


def test_compare_shapes_table_distance_and_colon_rates():
    real = [_shape(v, s, WHOLE) for v, s in ((1400, 0.60), (1700, 0.65), (2000, 0.62))]
    like = [_shape(v, s, WHOLE) for v, s in ((1500, 0.61), (1800, 0.63), (1600, 0.64), (1900, 0.60))]
    blobs = [
        _shape(v, s, BROKEN if i % 2 else WHOLE)
        for i, (v, s) in enumerate(((600, 0.9), (700, 0.92), (650, 0.88), (500, 0.91)))
    ]
    kw = dict(organs=("liver", "spleen"), features=("volume_ml", "sphericity"), permutations=99)
    good, bad = compare_shapes(real, like, **kw), compare_shapes(real, blobs, **kw)
    rows = {(r.organ, r.feature): r for r in bad.rows}
    assert rows["liver", "volume_ml"].in_range == 0 and rows["liver", "volume_ml"].median_in_range is False
    assert {(r.organ, r.feature): r.in_range for r in good.rows}["liver", "volume_ml"] == 4
    assert rows["spleen", "sphericity"].sampled == ()  # absent everywhere: not measured
    assert good.energy_statistics == bad.energy_statistics == ["liver.volume_ml", "liver.sphericity"]
    assert 0.0 <= good.energy < bad.energy
    assert bad.colon_sampled["one_piece"] == 0.5 and bad.colon_real["continuous"] == 1.0
    lines = bad.table_lines()
    assert any(line.startswith("liver") and "OUT" in line for line in lines)
    assert any("in one piece 50 %" in line for line in lines)
    assert bad.to_dict()["statistics_median_in_range"] < good.to_dict()["statistics_median_in_range"]
    with pytest.raises(ValueError, match="spacings"):
        compare_shapes(real, [_shape(1500, 0.6, WHOLE, spacing=(6.0, 6.0, 6.0))], **kw)
    with pytest.raises(ValueError):
        compare_shapes([], like, **kw)


# --------------------------------------------------------------------------------------------------
# Unstated organs


def _measured(**volumes: float | tuple[float, bool]) -> Attributes:
    organs = {}
    for name, value in volumes.items():
        volume, partial = value if isinstance(value, tuple) else (value, False)
        organs[name] = OrganFinding(state=None, volume_ml=volume, partial=partial)
    return Attributes(organs=organs)


NORMAL = dict(liver=1500.0, spleen=200.0, kidney_right=150.0, kidney_left=160.0, pancreas=70.0)


def test_unstated_organs_normal_and_whole():
    prompt = parse_prompt("normal CT of the abdomen and pelvis")
    result = unstated_organ_check(_measured(**NORMAL), prompt)
    assert all(f.normal for f in result.values() if f.normal is not None)
    assert all(result[n].complete for n in ("liver", "spleen", "kidney_right", "kidney_left"))
    assert result["pancreas"].complete is None  # only liver, spleen and kidneys must be whole
    small_kidney = unstated_organ_check(_measured(**{**NORMAL, "kidney_left": 7.4}), prompt)
    assert small_kidney["kidney_left"].normal is False and small_kidney["kidney_right"].normal is True
    cut_liver = unstated_organ_check(_measured(**{**NORMAL, "liver": (1500.0, True)}), prompt)
    assert cut_liver["liver"].normal is True and cut_liver["liver"].complete is False
    big_spleen = REFERENCE_RANGES["spleen"].high_ml + 100
    assert unstated_organ_check(_measured(**{**NORMAL, "spleen": big_spleen}), prompt)["spleen"].normal is False


def test_organs_the_prompt_changes_are_not_scored_for_size():
    assert changed_organs(parse_prompt("3 cm tumour in the right kidney")) == {"kidney_right"}
    assert changed_organs(parse_prompt("splenomegaly")) == {"spleen"}
    assert changed_organs(parse_prompt("liver, spleen and kidneys are normal in size")) == set()
    measured = _measured(**{**NORMAL, "spleen": 900.0})
    result = unstated_organ_check(measured, parse_prompt("splenomegaly"))
    assert result["spleen"].normal is None and result["spleen"].complete is True
    assert unstated_organ_check(measured, parse_prompt("no tumour"))["spleen"].normal is False


def test_unstated_summary_counts_maps_and_checks():
    prompt = parse_prompt("normal CT of the abdomen and pelvis")
    checks = [
        unstated_organ_check(_measured(**NORMAL), prompt),
        unstated_organ_check(_measured(**{**NORMAL, "kidney_left": 7.4, "liver": (1500.0, True)}), prompt),
    ]
    summary = unstated_summary(checks)
    assert summary["normal_maps"] == [1, 2] and summary["normal_checks"] == [9, 10]
    assert summary["complete_maps"] == [1, 2] and summary["complete_checks"] == [7, 8]
    assert summary["by_organ"]["kidney_left"]["normal"] == [1, 2]
    assert summary["by_organ"]["liver"]["complete"] == [1, 2]
