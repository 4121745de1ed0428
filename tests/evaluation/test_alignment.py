"""The segmentation judge, alignment Dice and the downstream experiment, on tiny box phantoms."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guidegen.errors import InputError
from guidegen.evaluation.alignment import (
    Judge,
    JudgeConfig,
    alignment_dice,
    dice_per_class,
    focus_dice_loss,
    marginal_cross_entropy,
    train_judge,
)
from guidegen.evaluation.cases import ALL_CLASSES, EvalCase
from guidegen.evaluation.downstream import SETTINGS, downstream_experiment, focus_config
from guidegen.labels.vocabulary import ID, NUM_CLASSES, UNKNOWN
from tests.evaluation.test_realism import BODY, LIVER, SPLEEN, synthetic_case

torch.set_num_threads(1)

TINY = JudgeConfig(channels=(8, 16), strides=(2,), num_res_units=0, patch=(32, 32), batch_size=4, lr=5e-3)


class StubJudge:
    """A `Segmenter` that returns a fixed prediction."""

    def __init__(self, prediction: np.ndarray):
        self.prediction = prediction

    def predict(self, ct) -> np.ndarray:
        return self.prediction


@pytest.fixture(scope="module")
def judge() -> Judge:
    return train_judge([synthetic_case("a", seed=0), synthetic_case("b", seed=1)], steps=100, seed=0, config=TINY)


def test_overfit_judge_finds_organs_and_swapped_labels_drop_dice(judge):
    assert judge.config.trained_classes == (0, SPLEEN, LIVER, BODY)
    assert judge.config.steps == 100 and judge.config.channels == (8, 16)
    case = synthetic_case("c", seed=2)
    aligned = alignment_dice(judge, [case])
    assert set(aligned["per_class"]) == {"spleen", "liver"}  # background and body are not scored
    assert aligned["per_class"]["liver"]["mean"] > 0.9 and aligned["per_class"]["spleen"]["mean"] > 0.9
    swapped = alignment_dice(judge, [synthetic_case("c", seed=2, swap=True)])
    assert swapped["per_class"]["liver"]["mean"] < 0.1 and swapped["per_class"]["spleen"]["mean"] < 0.1
    assert swapped["mean"] < aligned["mean"] - 0.8
    assert judge.predict(case.ct).dtype == np.uint8 and judge.predict(case.ct).shape == case.ct.shape


def test_judge_predicts_slices_of_any_size(judge):
    case = synthetic_case("odd", seed=3, shape=(30, 34, 5))  # not multiples of the UNet's divisor
    assert judge.predict(case.ct).shape == (30, 34, 5)
    assert alignment_dice(judge, [case])["per_class"]["liver"]["mean"] > 0.8
    with torch.no_grad():
        features = judge.encoder()(torch.zeros(2, 1, 30, 34))
    assert features.shape == (2, 8 + 16)  # one pooled vector per encoder stage (channels 8, 16)


def test_judge_save_load_round_trip(judge, tmp_path):
    judge.save(tmp_path / "judge")
    again = Judge.load(tmp_path / "judge")
    assert again.config == judge.config
    case = synthetic_case("c", seed=2)
    np.testing.assert_array_equal(again.predict(case.ct), judge.predict(case.ct))
    with pytest.raises(InputError):
        judge.save(tmp_path / "judge")  # no overwrite by default
    (tmp_path / "judge" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(InputError, match="corrupted"):
        Judge.load(tmp_path / "judge")
    config = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert config["_class"] == "JudgeConfig"


def test_training_is_reproducible():
    cases = [synthetic_case("a", seed=0)]
    one, two = (train_judge(cases, steps=5, seed=7, config=TINY) for _ in range(2))
    other = train_judge(cases, steps=5, seed=8, config=TINY)
    for (name, a), b, c in zip(
        one.network.state_dict().items(), two.network.state_dict().values(), other.network.state_dict().values()
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert any(
        not torch.equal(a, c)
        for a, c in zip(one.network.state_dict().values(), other.network.state_dict().values())
        if a.is_floating_point()
    )


def test_unannotated_class_is_not_learnt_as_body():
    """A case whose spleen is unlabelled (spleen voxels say "body") must not teach "spleen is body"."""
    partial = synthetic_case("partial", seed=0)
    labels = partial.labels.array.copy()
    labels[labels == SPLEEN] = BODY
    partial = EvalCase("partial", partial.ct, partial.labels.with_array(labels), ALL_CLASSES - {SPLEEN})
    judge = train_judge([partial, partial, synthetic_case("full", seed=1)], steps=100, seed=0, config=TINY)
    assert judge.config.trained_classes == (0, SPLEEN, LIVER, BODY)
    scores = alignment_dice(judge, [synthetic_case("test", seed=2), partial])
    assert scores["per_class"]["spleen"]["cases"] == 1  # not scored where it is not annotated
    # Plain cross-entropy would learn "spleen HU → body" from two of the three cases (Dice near 0).
    assert scores["per_class"]["spleen"]["mean"] > 0.8
    # Spleen annotated nowhere: an ordinary negative, never predicted (not left free inside "body").
    alone = train_judge([partial], steps=60, seed=0, config=TINY)
    assert alone.config.trained_classes == (0, LIVER, BODY)
    assert set(np.unique(alone.predict(partial.ct)).tolist()) <= {0, LIVER, BODY}


def test_marginal_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 4, 4)
    target = torch.randint(0, NUM_CLASSES, (2, 4, 4))
    target[0, 0] = UNKNOWN
    none = torch.zeros(2, NUM_CLASSES, dtype=torch.bool)
    expected = F.cross_entropy(logits, target, ignore_index=UNKNOWN)
    torch.testing.assert_close(marginal_cross_entropy(logits, target, none), expected)
    # A background voxel confidently predicted as liver: costly when liver is annotated, free when not.
    logits = torch.full((1, NUM_CLASSES, 1, 1), -10.0)
    logits[0, LIVER] = 10.0
    background = torch.zeros(1, 1, 1, dtype=torch.long)
    unannotated = torch.zeros(1, NUM_CLASSES, dtype=torch.bool)
    assert marginal_cross_entropy(logits, background, unannotated) > 10.0
    unannotated[0, LIVER] = True
    assert marginal_cross_entropy(logits, background, unannotated) < 1e-6
    assert marginal_cross_entropy(logits, torch.full((1, 1, 1), UNKNOWN), unannotated) == 0.0


def test_dice_per_class_and_stub_judge():
    truth = np.zeros((4, 4, 2), np.uint8)
    truth[:2] = LIVER
    truth[3, :, 0] = SPLEEN
    truth[3, :, 1] = UNKNOWN
    prediction = truth.copy()
    prediction[1] = 0  # half the liver missed: Dice 2·8 / (8 + 16)
    prediction[3, :, 1] = ID["stomach"]  # on unknown voxels: ignored
    scores = dice_per_class(prediction, truth, [SPLEEN, LIVER, ID["stomach"], ID["pancreas"]])
    assert scores == {SPLEEN: pytest.approx(1.0), LIVER: pytest.approx(2 * 8 / 24)}
    only_liver = dice_per_class(prediction, truth, [SPLEEN, LIVER], annotated=frozenset({0, LIVER}))
    assert only_liver == {LIVER: pytest.approx(2 / 3)}
    case = synthetic_case("s", shape=(4, 4, 2))
    case = EvalCase("s", case.ct, case.labels.with_array(truth))
    result = alignment_dice(StubJudge(prediction), [case], classes=["spleen", "liver", "pancreas"])
    assert result["per_class"] == {
        "spleen": {"mean": 1.0, "std": 0.0, "cases": 1},
        "liver": {"mean": pytest.approx(2 / 3), "std": 0.0, "cases": 1},
    }
    assert result["mean"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        alignment_dice(StubJudge(prediction), [case], classes=["trachea"])


def test_downstream_experiment_structure():
    result = downstream_experiment(
        [synthetic_case("r", seed=0)],
        [synthetic_case("s", seed=1)],
        [synthetic_case("t", seed=2)],
        seeds=(0, 1),
        steps=20,
        config=TINY,
    )
    assert result["seeds"] == [0, 1] and result["steps"] == 20
    assert tuple(result["settings"]) == SETTINGS
    for setting in result["settings"].values():
        assert len(setting["mean"]["values"]) == 2
        assert setting["mean"]["std"] == pytest.approx(np.std(setting["mean"]["values"]))
        assert 0.0 <= setting["mean"]["mean"] <= 1.0
    with pytest.raises(ValueError):
        downstream_experiment([], [synthetic_case()], [synthetic_case()])


def test_focus_classes_are_drawn_at_their_share_and_off_changes_nothing(monkeypatch):
    import guidegen.evaluation.alignment as alignment

    case = synthetic_case("a", seed=0)
    labels = case.labels.array.copy()
    z_tumour = labels.shape[2] // 2
    labels[10:14, 10:14, z_tumour] = ID["tumour"]  # a tumour in one slice of many
    case = EvalCase("a", case.ct, case.labels.with_array(labels))
    drawn: list[bool] = []
    original = alignment._crop_or_pad

    def spy(image, lab, patch, rng):
        drawn.append(bool((lab == ID["tumour"]).any()))
        return original(image, lab, patch, rng)

    monkeypatch.setattr(alignment, "_crop_or_pad", spy)
    focused = replace(TINY, focus_classes=(ID["tumour"],), focus_fraction=0.5)
    train_judge([case], steps=25, seed=0, config=focused)
    share = np.mean(drawn)
    assert 0.3 < share < 0.7, share  # half the slices hold the tumour (one slice of the case)
    drawn.clear()
    train_judge([case], steps=25, seed=0, config=TINY)
    assert np.mean(drawn) < 0.2
    # Off (fraction 0), the judge is bit for bit the one without the option.
    a = train_judge([case], steps=3, seed=1, config=TINY)
    b = train_judge([case], steps=3, seed=1, config=replace(TINY, focus_classes=(ID["tumour"],)))
    for x, y in zip(a.network.state_dict().values(), b.network.state_dict().values()):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="focus_fraction"):
        JudgeConfig(focus_fraction=1.5)


def _logits_for(labels: torch.Tensor, confidence: float = 20.0) -> torch.Tensor:
    """(N, C, H, W) logits that predict ``labels`` (N, H, W) with the given margin."""
    return F.one_hot(labels.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float() * confidence


def test_focus_dice_loss():
    tumour = ID["tumour"]
    target = torch.full((2, 4, 4), LIVER, dtype=torch.long)
    target[0, 1:3, 1:3] = tumour
    none = torch.zeros(2, NUM_CLASSES, dtype=torch.bool)
    assert focus_dice_loss(_logits_for(target), target, none, (tumour,)) < 1e-4
    # Predicted in the slice without the tumour (a false positive pooled over the batch): Dice 2·4 / (8 + 4).
    predicted = target.clone()
    predicted[1, 1:3, 1:3] = tumour
    loss = focus_dice_loss(_logits_for(predicted), target, none, (tumour,))
    assert loss.item() == pytest.approx(1 - 8 / 12, abs=1e-4)
    # ... unless that slice's truth there is unknown, or body in a case that does not annotate tumours.
    unknown = target.clone()
    unknown[1, 1:3, 1:3] = UNKNOWN
    assert focus_dice_loss(_logits_for(predicted), unknown, none, (tumour,)) < 1e-4
    body = target.clone()
    body[1] = BODY
    unannotated = none.clone()
    unannotated[1, tumour] = True
    assert focus_dice_loss(_logits_for(predicted), body, unannotated, (tumour,)) < 1e-4
    assert focus_dice_loss(_logits_for(predicted), body, none, (tumour,)) > 0.3
    # Missed entirely: 1; the mean over two classes.
    assert focus_dice_loss(_logits_for(torch.full_like(target, LIVER)), target, none, (tumour,)) > 0.999
    both = focus_dice_loss(_logits_for(predicted), target, none, (tumour, LIVER))
    assert 0.1 < both.item() < loss.item()
    assert focus_dice_loss(_logits_for(target), target, none, ()) == 0.0
    with pytest.raises(ValueError, match="dice_weight"):
        JudgeConfig(dice_weight=-1.0)


def _case_with_small_lesions(case_id: str, seed: int) -> EvalCase:
    """The box phantom with two 2×2-voxel lesions 40 HU darker than the liver in three slices."""
    case = synthetic_case(case_id, seed=seed, shape=(32, 32, 24))
    ct, labels = case.ct.array.copy(), case.labels.array.copy()
    for x, y, z in ((6, 8, 5), (9, 11, 16)):
        inside = (slice(x, x + 2), slice(y, y + 2), slice(z, z + 3))
        ct[inside] -= 40.0
        labels[inside] = ID["tumour"]
    return EvalCase(case_id, case.ct.with_array(ct), case.labels.with_array(labels))


def test_the_dice_term_learns_lesions_that_cross_entropy_alone_leaves_out():
    """24 tumour voxels among 24 576: voxel-averaged cross-entropy gains too little by finding them."""
    case = _case_with_small_lesions("lesions", seed=0)
    truth = case.labels.array == ID["tumour"]
    focused = replace(TINY, focus_classes=(ID["tumour"],), focus_fraction=0.5, hu_range=(-200.0, 300.0))
    plain = train_judge([case], steps=300, seed=0, config=focused)
    with_dice = train_judge([case], steps=300, seed=0, config=replace(focused, dice_weight=1.0))
    found_plain = int((plain.predict(case.ct)[truth] == ID["tumour"]).sum())
    found_dice = int((with_dice.predict(case.ct)[truth] == ID["tumour"]).sum())
    # Seeds 0-2: 15-18 of 24 found with the Dice term, none without it.
    assert found_dice >= 12, found_dice
    assert found_plain <= 3, found_plain


def test_focus_config_is_the_tumour_recipe_of_the_downstream_experiment(monkeypatch):
    import guidegen.evaluation.downstream as downstream

    config = focus_config(("tumour", "no-such-class"))
    assert config.focus_classes == (ID["tumour"],) and config.dice_weight > 0 and config.focus_fraction > 0
    assert config.hu_range[1] - config.hu_range[0] < 1000  # a soft-tissue window
    seen: list[JudgeConfig | None] = []
    untrained = Judge(TINY)

    def spy(cases, steps, seed, config, progress):
        seen.append(config)
        return untrained

    monkeypatch.setattr(downstream, "train_judge", spy)
    cases = [synthetic_case("r", seed=0)], [synthetic_case("s", seed=1)], [synthetic_case("t", seed=2)]
    downstream_experiment(*cases, seeds=(0,), steps=1, classes=("tumour",), settings_run=("real",))
    downstream_experiment(*cases, seeds=(0,), steps=1, settings_run=("real",))
    downstream_experiment(*cases, seeds=(0,), steps=1, classes=("tumour",), config=TINY, settings_run=("real",))
    assert seen == [config, None, TINY]
