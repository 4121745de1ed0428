"""`expected_count_loss`: the squared log error of each class's expected voxel count."""

import math

import pytest
import torch

from guidegen.diffusion.categorical_loss import expected_count_loss

K = 4
UNKNOWN = 255


def _confident(labels: torch.Tensor, margin: float = 30.0) -> torch.Tensor:
    """Logits whose softmax is (almost exactly) the one-hot of ``labels``."""
    return torch.nn.functional.one_hot(labels.clamp_max(K - 1), K).movedim(-1, 1).float() * margin


def test_zero_when_the_prediction_expects_the_true_counts():
    labels = torch.zeros(2, 6, 6, 4, dtype=torch.long)
    labels[0, :2, :2, :2] = 3  # 8 voxels of class 3 in item 0, none in item 1
    labels[:, 3:, 3:, :] = 1
    loss = expected_count_loss(_confident(labels), labels, torch.tensor([1, 3]))
    assert float(loss) < 1e-8


def test_value_is_the_mean_squared_log_error_of_the_counts():
    labels = torch.zeros(1, 10, 10, 1, dtype=torch.long)
    labels[0, :3, 0, 0] = 2  # 3 voxels of class 2
    logits = torch.zeros(1, K, 10, 10, 1)  # uniform: every class expected in 100 / 4 = 25 voxels
    loss = expected_count_loss(logits, labels, torch.tensor([2]))
    assert float(loss) == pytest.approx((math.log(26.0) - math.log(4.0)) ** 2, rel=1e-5)


def test_a_gradient_step_moves_the_expected_count_towards_the_true_one():
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 2:5, 2:5, 2:5] = 3  # 27 voxels
    logits = _confident(torch.zeros_like(labels), margin=5.0).requires_grad_(True)  # expects ~2 voxels of 3
    before = float(torch.softmax(logits.detach(), 1)[:, 3].sum())
    expected_count_loss(logits, labels, torch.tensor([3])).backward()
    with torch.no_grad():
        after = float(torch.softmax(logits - 50.0 * logits.grad, 1)[:, 3].sum())
    assert before < after < 27.0 * 1.5


def test_unknown_voxels_enter_neither_count():
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    labels[0, 0] = UNKNOWN
    logits = _confident(labels)
    base = float(expected_count_loss(logits, labels, torch.tensor([2]), ignore_index=UNKNOWN))
    changed = logits.clone()
    changed[0, 2, 0] = 60.0  # the unknown slab predicted as class 2: not counted
    assert float(expected_count_loss(changed, labels, torch.tensor([2]), ignore_index=UNKNOWN)) == pytest.approx(base)
    assert base < 1e-8
    # Without the unknown label, the same prediction would count 16 voxels of class 2 against none.
    labels_known = labels.clone()
    labels_known[0, 0] = 0
    assert float(expected_count_loss(changed, labels_known, torch.tensor([2]))) > 5.0


def test_classes_not_annotated_in_an_item_are_left_out_for_that_item():
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    logits = _confident(labels)
    logits[0, 2] = 60.0  # item 0 "sees" class 2 everywhere, its labels none
    ignore = torch.zeros(2, K, dtype=torch.bool)
    ignore[0, 2] = True  # ... but class 2 is not annotated in item 0: its count is unknown
    assert float(expected_count_loss(logits, labels, torch.tensor([2]), ignore_classes=ignore)) < 1e-8
    assert float(expected_count_loss(logits, labels, torch.tensor([2]))) > 1.0
    ignore[1, 2] = True  # no (item, class) pair left: zero, not NaN
    assert float(expected_count_loss(logits, labels, torch.tensor([2]), ignore_classes=ignore)) == 0.0


def test_bad_classes_and_shapes_are_rejected():
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="classes"):
        expected_count_loss(_confident(labels), labels, torch.tensor([K]))
    with pytest.raises(ValueError, match="x0_labels"):
        expected_count_loss(_confident(labels), labels[:, :2], torch.tensor([1]))
