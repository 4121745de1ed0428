"""Diversity between generated cases of one prompt: MS-SSIM of CTs and Dice of label maps."""

from __future__ import annotations

import pytest
import torch

from guidegen.evaluation.cases import EvalCase
from guidegen.evaluation.diversity import MS_SSIM_WEIGHTS, group_by_prompt, ms_ssim, ms_ssim_scales, prompt_diversity
from tests.evaluation.test_realism import synthetic_case

torch.set_num_threads(1)


def copy_of(case: EvalCase, case_id: str) -> EvalCase:
    return EvalCase(case_id, case.ct, case.labels, case.annotated, dict(case.meta))


def test_scales_fit_the_image_size():
    assert len(ms_ssim_scales((200, 200))) == 5
    assert ms_ssim_scales((200, 200)) == pytest.approx(MS_SSIM_WEIGHTS, rel=1e-3)  # already sum to ~1
    assert len(ms_ssim_scales((128, 128))) == 4  # MONAI's default five need > 160 px
    assert len(ms_ssim_scales((32, 40))) == 2
    assert len(ms_ssim_scales((11, 11))) == 1
    assert sum(ms_ssim_scales((128, 128))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_scales((10, 64))


def test_identical_cases_have_ms_ssim_one_and_dice_one():
    case = synthetic_case("a", seed=0, prompt="liver")
    result = prompt_diversity([case, copy_of(case, "b"), copy_of(case, "c")])
    assert len(result["prompts"]) == 1
    group = result["prompts"][0]
    assert group["prompt"] == "liver" and group["cases"] == 3 and group["pairs"] == 3
    assert group["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert group["label_dice"] == pytest.approx(1.0)
    assert result["ms_ssim"] == pytest.approx(1.0, abs=1e-5) and result["label_dice"] == pytest.approx(1.0)


def test_different_cases_are_more_diverse_and_grouped_by_prompt():
    a = synthetic_case("a", seed=0, prompt="p1")
    b = synthetic_case("b", seed=1, prompt="p1", noise=40.0)
    c = synthetic_case("c", seed=2)  # no prompt
    d = synthetic_case("d", seed=3)
    groups = group_by_prompt([a, c, b, d])
    assert list(groups) == ["p1", None] and [x.case_id for x in groups["p1"]] == ["a", "b"]
    result = prompt_diversity([a, b, c, d])
    p1 = result["prompts"][0]
    assert 0.0 < p1["ms_ssim"] < 0.99
    assert ms_ssim(a, b) == pytest.approx(ms_ssim(b, a), abs=1e-6)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert result["prompts"][1]["prompt"] is None
    assert 0.0 < result["prompts"][1]["label_dice"] <= 1.0


def test_pairs_on_different_grids_are_skipped_and_singletons_have_no_value():
    a = synthetic_case("a", seed=0, prompt="p")
    b = synthetic_case("b", seed=1, prompt="p", shape=(32, 32, 6))
    alone = synthetic_case("c", seed=2, prompt="q")
    result = prompt_diversity([a, b, alone])
    p, q = result["prompts"]
    assert p["skipped_pairs"] == 1 and p["pairs"] == 0 and p["ms_ssim"] is None
    assert q["pairs"] == 0 and q["label_dice"] is None
    assert result["ms_ssim"] is None
    with pytest.raises(ValueError):
        ms_ssim(a, b)
