"""`outside_host_loss`: the share of lesion probability a prediction puts outside the lesion's host."""

import pytest
import torch

from guidegen.diffusion.categorical_loss import outside_host_loss

K = 5
HOST, OTHER, LESION = 1, 2, 3
HOSTS = torch.tensor([HOST, OTHER])
UNKNOWN = 255


def _map(with_lesion: bool = True) -> torch.Tensor:
    labels = torch.zeros(1, 10, 10, 10, dtype=torch.long)
    labels[0, 1:5, 1:5, 1:5] = HOST
    labels[0, 7:10, 7:10, 7:10] = OTHER
    if with_lesion:
        labels[0, 2:4, 2:4, 2:4] = LESION  # 8 voxels
    return labels


def _confident(labels: torch.Tensor, margin: float = 30.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.clamp_max(K - 1), K).movedim(-1, 1).float() * margin


def test_zero_for_the_true_map_and_for_lesion_mass_anywhere_in_the_host():
    labels = _map()
    assert float(outside_host_loss(_confident(labels), labels, LESION, HOSTS)) < 1e-8
    spread = _confident(labels)
    spread[0, LESION, 1:5, 1:5, 1:5] = 60.0  # the whole host predicted as lesion: in the host, not penalised
    assert float(outside_host_loss(spread, labels, LESION, HOSTS)) < 1e-8


def test_value_is_the_share_of_lesion_mass_outside_the_host():
    labels = _map()
    logits = _confident(labels)
    logits[0, LESION, 7:10, 7:10, 7:10] = 60.0  # 27 voxels of lesion in the other organ, 8 in the host
    assert float(outside_host_loss(logits, labels, LESION, HOSTS)) == pytest.approx(27 / (1 + 27 + 8), rel=1e-5)
    # The host is read from what touches the lesion in x0: with OTHER beside it, OTHER is a host too.
    touching = labels.clone()
    touching[0, 2:4, 4, 2:4] = OTHER
    assert float(outside_host_loss(logits, touching, LESION, HOSTS)) < 1e-8


def test_margin_allows_the_host_rim_and_no_further():
    labels = _map()
    logits = _confident(labels)
    logits[0, LESION, 5, 2, 2] = 60.0  # one voxel just outside the host
    assert float(outside_host_loss(logits, labels, LESION, HOSTS, margin=1)) < 1e-8
    assert float(outside_host_loss(logits, labels, LESION, HOSTS, margin=0)) == pytest.approx(1 / 10, rel=1e-5)


def test_items_without_a_lesion_or_with_it_unannotated_are_left_out():
    healthy = _map(with_lesion=False)
    logits = _confident(healthy)
    logits[0, LESION, 7:10, 7:10, 7:10] = 60.0  # lesion mass, but x0 has no lesion: the count term's business
    assert float(outside_host_loss(logits, healthy, LESION, HOSTS)) == 0.0
    labels = torch.cat([_map(), healthy])
    logits = torch.cat([_confident(_map()), logits])
    logits[0, LESION, 7:10, 7:10, 7:10] = 60.0
    assert float(outside_host_loss(logits, labels, LESION, HOSTS)) == pytest.approx(27 / 36, rel=1e-5)  # item 0 only
    unannotated = torch.zeros(2, K, dtype=torch.bool)
    unannotated[0, LESION] = True
    assert float(outside_host_loss(logits, labels, LESION, HOSTS, ignore_classes=unannotated)) == 0.0


def test_unknown_voxels_are_left_out():
    labels = _map()
    labels[0, 7:10] = UNKNOWN  # the other organ's slab is unknown
    logits = _confident(labels)
    logits[0, LESION, 7:10, 7:10, 7:10] = 60.0
    assert float(outside_host_loss(logits, labels, LESION, HOSTS, ignore_index=UNKNOWN)) < 1e-8


def test_a_gradient_step_moves_lesion_mass_from_the_wrong_organ_into_the_host():
    labels = _map()
    logits = _confident(labels, margin=3.0)
    logits[0, LESION, 7:10, 7:10, 7:10] = 6.0
    logits.requires_grad_(True)
    outside_host_loss(logits, labels, LESION, HOSTS).backward()
    before = torch.softmax(logits.detach(), 1)[0, LESION]
    after = torch.softmax(logits.detach() - 20.0 * logits.grad, 1)[0, LESION]
    assert after[7:10, 7:10, 7:10].sum() < before[7:10, 7:10, 7:10].sum()
    assert after[1:5, 1:5, 1:5].sum() > before[1:5, 1:5, 1:5].sum()  # a share: mass in the host is not lost


def test_bad_arguments_are_refused():
    labels = _map()
    logits = _confident(labels)
    with pytest.raises(ValueError, match="own host"):
        outside_host_loss(logits, labels, LESION, torch.tensor([HOST, LESION]))
    with pytest.raises(ValueError, match="ids in"):
        outside_host_loss(logits, labels, 7, HOSTS)
    with pytest.raises(ValueError, match="x0_labels"):
        outside_host_loss(logits, labels[:, :5], LESION, HOSTS)
    with pytest.raises(ValueError, match="margin"):
        outside_host_loss(logits, labels, LESION, HOSTS, margin=-1)
