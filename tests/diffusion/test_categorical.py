"""Tests of the multinomial diffusion maths (guidegen.diffusion.categorical / guidance)."""

from __future__ import annotations

import math

import pytest
import torch

from guidegen.diffusion.categorical import (
    CategoricalDiffusion,
    CategoricalDiffusionConfig,
    sample_categorical,
)
from guidegen.diffusion.categorical_loss import categorical_loss
from guidegen.diffusion.categorical_sampling import ancestral_sample, count_matched_argmax
from guidegen.diffusion.guidance import guided_logits

K3 = 3
#: The unknown label of the tests that have unknown voxels (GuideGen's is 255 as well).
UNKNOWN_LABEL = 255


def make(k: int = K3, T: int = 10, **kw) -> CategoricalDiffusion:
    return CategoricalDiffusion(CategoricalDiffusionConfig(num_classes=k, num_timesteps=T, **kw))


def transition(alpha: float, k: int) -> torch.Tensor:
    """Explicit uniform transition matrix Q = α I + (1 − α) 𝟙𝟙ᵀ/K, rows = from, columns = to."""
    return alpha * torch.eye(k, dtype=torch.float64) + (1 - alpha) / k * torch.ones(k, k, dtype=torch.float64)


def chain(diff: CategoricalDiffusion, s: int, t: int) -> torch.Tensor:
    """Q_{s+1} Q_{s+2} ⋯ Q_t built from the per-step α (identity when s = t)."""
    k = diff.num_classes
    q = torch.eye(k, dtype=torch.float64)
    for step in range(s + 1, t + 1):
        q = q @ transition(float(diff.alphas[step]), k)
    return q


def brute_posterior(diff: CategoricalDiffusion, x_t: int, x0: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """Bayes' rule with matrices: p(x_s = j | x_t, ·) ∝ Σ_i x0_i Q̄_s[i, j] Q_{s→t}[j, x_t]."""
    prior = x0.double() @ chain(diff, 0, s)  # q(x_s | x_0), (K,)
    like = chain(diff, s, t)[:, x_t]  # q(x_t | x_s = j), (K,)
    joint = prior * like
    return joint / joint.sum()


# ----------------------------------------------------------------------------- schedule


def test_cosine_schedule_matches_formula():
    diff = make(T=10)
    s = 0.008
    f = [math.cos((t / 10 + s) / (1 + s) * math.pi / 2) ** 2 for t in range(11)]
    for t in range(1, 10):  # the last step is clipped to β = 0.999
        assert float(diff.alphas_cumprod[t]) == pytest.approx(f[t] / f[0], rel=1e-12)
    assert float(diff.alphas_cumprod[0]) == 1.0
    assert float(diff.alphas[10]) == pytest.approx(1 - 0.999)


def test_linear_schedule_and_bad_config():
    diff = make(T=1000, schedule="linear")
    assert float(diff.alphas[1]) == pytest.approx(1 - 1e-4)
    assert float(diff.alphas[1000]) == pytest.approx(1 - 0.02)
    with pytest.raises(ValueError, match="num_classes"):
        CategoricalDiffusionConfig(num_classes=1)
    with pytest.raises(ValueError, match="schedule"):
        CategoricalDiffusionConfig(num_classes=3, schedule="quadratic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ignore_index"):
        CategoricalDiffusionConfig(num_classes=3, ignore_index=2)


def test_timestep_sequence():
    diff = make(T=1000)
    seq = diff.timestep_sequence(20)
    assert seq[0] == 1000 and seq[-1] == 0 and len(seq) == 21
    assert all(a > b for a, b in zip(seq, seq[1:]))
    assert diff.timestep_sequence() == list(range(1000, -1, -1))
    assert make(T=7).timestep_sequence(3) == [7, 5, 2, 0]
    with pytest.raises(ValueError, match="steps"):
        diff.timestep_sequence(0)


# ----------------------------------------------------------------------------- forward process


def test_q_probs_hand_computed():
    diff = make(T=10)
    x0 = torch.tensor([[0, 2]])  # one case, two voxels, K = 3
    t = 4
    ab = float(diff.alphas_cumprod[t])
    expected = torch.tensor(
        [[[ab + (1 - ab) / 3, (1 - ab) / 3], [(1 - ab) / 3, (1 - ab) / 3], [(1 - ab) / 3, ab + (1 - ab) / 3]]]
    )
    got = diff.q_probs(x0, t)
    assert got.shape == (1, 3, 2)
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=1e-6)
    # The same from the explicit matrix product Q_1 ⋯ Q_t.
    qbar = chain(diff, 0, t)
    torch.testing.assert_close(got[0, :, 0].double(), qbar[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[0, :, 1].double(), qbar[2], rtol=0, atol=1e-6)
    # t = 0 is the data itself; unknown voxels are uniform.
    torch.testing.assert_close(diff.q_probs(x0, 0), torch.tensor([[[1.0, 0], [0, 0], [0, 1.0]]]))
    with_unknown = make(T=10, ignore_index=UNKNOWN_LABEL)
    torch.testing.assert_close(with_unknown.q_probs(torch.tensor([[UNKNOWN_LABEL]]), 3), torch.full((1, 3, 1), 1 / 3))


def test_unknown_label_is_the_callers():
    """No unknown label by default; whichever label the caller names is the unknown one."""
    plain = make(k=4)
    assert plain.config.ignore_index is None
    with pytest.raises(ValueError, match="label 255, outside \\[0, 4\\) and not no unknown label is set"):
        plain.q_probs(torch.tensor([[0, UNKNOWN_LABEL]]), 1)
    with pytest.raises(ValueError, match="label -1"):
        plain.q_probs(torch.tensor([[0, -1]]), 1)
    for bad in (True, 2.5, "255"):
        with pytest.raises(ValueError, match="ignore_index must be an integer or None"):
            CategoricalDiffusionConfig(num_classes=4, ignore_index=bad)  # type: ignore[arg-type]
    # The same case with its unknown voxels marked -1 or 255: the same noising and the same loss.
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, 4, (2, 3, 3, 3), generator=g)
    unknown = torch.rand(x0.shape, generator=g) < 0.3
    assert unknown.any() and not unknown.all()
    logits = torch.randn(2, 4, 3, 3, 3, generator=g)
    t = torch.tensor([1, 6])
    results = []
    for label in (-1, UNKNOWN_LABEL):
        diff = make(k=4, ignore_index=label)
        marked = torch.where(unknown, torch.full_like(x0, label), x0)
        x_t = diff.q_sample(marked, t, torch.Generator().manual_seed(9))
        results.append((x_t, categorical_loss(diff, logits, marked, x_t, t)))
        assert torch.all(diff.q_probs(marked, 0).movedim(1, -1)[unknown] == 0.25)  # unknown: uniform
    (xt_a, loss_a), (xt_b, loss_b) = results
    assert torch.equal(xt_a, xt_b)
    assert loss_a.num_voxels == loss_b.num_voxels == int((~unknown).sum())
    torch.testing.assert_close(loss_a.total, loss_b.total, rtol=0, atol=0)


def test_q_sample_frequencies_and_determinism():
    diff = make(T=10)
    x0 = torch.zeros(1, 30000, dtype=torch.long)
    a = diff.q_sample(x0, 5, torch.Generator().manual_seed(3))
    b = diff.q_sample(x0, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    freq = torch.bincount(a.flatten(), minlength=3).double() / a.numel()
    torch.testing.assert_close(freq, diff.q_probs(x0[:, :1], 5)[0, :, 0].double(), rtol=0, atol=0.015)


def test_labels_outside_range_rejected():
    diff = make()
    with pytest.raises(ValueError, match="label 7"):
        diff.q_probs(torch.tensor([[0, 7]]), 1)
    with pytest.raises(ValueError, match=r"t must lie in \[1, 10\]"):
        diff.q_posterior(torch.tensor([[0]]), torch.tensor([[0]]), 0)


# ----------------------------------------------------------------------------- posteriors


@pytest.mark.parametrize("t", [1, 2, 5, 10])
def test_posterior_matches_bayes_rule(t):
    diff = make(T=10)
    x0_labels = torch.tensor([[0, 1, 2, 1, 0, 2, 2, 0, 1]])
    x_t = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2]])  # every (x_0, x_t) pair
    post = diff.q_posterior(x_t, x0_labels, t)
    torch.testing.assert_close(post.sum(dim=1), torch.ones(1, 9))
    for v in range(9):
        x0 = torch.nn.functional.one_hot(x0_labels[0, v], 3)
        expected = brute_posterior(diff, int(x_t[0, v]), x0, t, t - 1)
        torch.testing.assert_close(post[0, :, v].double(), expected, rtol=0, atol=1e-5)


def test_model_posterior_matches_d3pm_marginal():
    diff = make(T=10)
    probs = torch.tensor([[[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]]])  # (1, K = 3, 2 voxels)
    x_t = torch.tensor([[2, 0]])
    t = 6
    post = diff.p_posterior(x_t, probs, t)
    for v in range(2):
        # Σ_{x0} q(x_{t-1}, x_t | x0) p̂(x0), by brute force over x0.
        joint = sum(
            float(probs[0, c, v])
            * brute_posterior(diff, int(x_t[0, v]), torch.eye(3)[c], t, t - 1)
            * float((torch.eye(3, dtype=torch.float64)[c] @ chain(diff, 0, t))[int(x_t[0, v])])
            for c in range(3)
        )
        torch.testing.assert_close(post[0, :, v].double(), joint / joint.sum(), rtol=0, atol=1e-5)


def test_posterior_at_t1_is_x0():
    diff = make(T=10)
    x0 = torch.tensor([[0, 1, 2, 2]])
    x_t = torch.tensor([[1, 1, 0, 2]])
    onehot = torch.nn.functional.one_hot(x0, 3).movedim(-1, 1).float()
    torch.testing.assert_close(diff.q_posterior(x_t, x0, 1), onehot)
    # The reverse model at t = 1 is the prediction itself, p(x_0 | x_1) = p̂.
    probs = torch.softmax(torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    torch.testing.assert_close(diff.p_posterior(x_t, probs, 1), probs)


def test_strided_posterior():
    diff = make(T=10)
    x0 = torch.tensor([[0, 1, 2, 1]])
    x_t = torch.tensor([[2, 1, 0, 0]])
    probs = torch.softmax(torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    # Stride 1 is the ordinary posterior.
    for t in (2, 7):
        torch.testing.assert_close(diff.q_posterior(x_t, x0, t, t - 1), diff.q_posterior(x_t, x0, t))
        torch.testing.assert_close(diff.p_posterior(x_t, probs, t, t - 1), diff.p_posterior(x_t, probs, t))
    # A jump t → s uses Q_{s→t} = Q_{s+1} ⋯ Q_t, whose keep coefficient is ᾱ_t/ᾱ_s.
    t, s = 9, 3
    keep = float(diff.alphas_cumprod[t] / diff.alphas_cumprod[s])
    torch.testing.assert_close(chain(diff, s, t), transition(keep, 3))
    post = diff.q_posterior(x_t, x0, t, s)
    for v in range(4):
        expected = brute_posterior(diff, int(x_t[0, v]), torch.eye(3)[x0[0, v]], t, s)
        torch.testing.assert_close(post[0, :, v].double(), expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- loss


def _case(seed: int = 0, k: int = 4, shape=(2, 3, 3, 3), T: int = 10):
    diff = make(k=k, T=T, ce_weight=0.0, ignore_index=UNKNOWN_LABEL)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, k, shape, generator=g)
    t = torch.tensor([2, 7])
    x_t = diff.q_sample(x0, t, g)
    return diff, x0, x_t, t, g


def test_kl_zero_when_prediction_is_truth():
    diff, x0, x_t, t, _ = _case()
    perfect = 40.0 * torch.nn.functional.one_hot(x0, 4).movedim(-1, 1).float()
    loss = categorical_loss(diff, perfect, x0, x_t, t)
    assert float(loss.kl) < 1e-6 and float(loss.ce) < 1e-6
    wrong = 40.0 * torch.nn.functional.one_hot((x0 + 1) % 4, 4).movedim(-1, 1).float()
    assert float(categorical_loss(diff, wrong, x0, x_t, t).kl) > 0.1
    # t = 1 contributes the decoder cross-entropy −log p̂(x_0).
    logits = torch.randn(2, 4, 3, 3, 3, generator=torch.Generator().manual_seed(5))
    dec = categorical_loss(diff, logits, x0, x_t, 1)
    ce = torch.nn.functional.cross_entropy(logits, x0)
    torch.testing.assert_close(dec.kl, ce)
    torch.testing.assert_close(dec.ce, ce)


def test_loss_ignores_unknown_voxels():
    diff, x0, x_t, t, g = _case()
    x0 = x0.clone()
    x0[0, 1, 1, 1] = UNKNOWN_LABEL
    x0[1, 0, 2, 0] = UNKNOWN_LABEL
    logits = torch.randn(2, 4, 3, 3, 3, generator=g, requires_grad=True)
    diff = make(k=4, T=10, ce_weight=0.5, ignore_index=UNKNOWN_LABEL)
    loss = categorical_loss(diff, logits, x0, x_t, t)
    loss.total.backward()
    assert loss.num_voxels == 2 * 27 - 2
    assert torch.all(logits.grad[0, :, 1, 1, 1] == 0) and torch.all(logits.grad[1, :, 0, 2, 0] == 0)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    changed = logits.detach().clone()
    changed[0, :, 1, 1, 1] = torch.tensor([9.0, -9.0, 3.0, 0.0])
    torch.testing.assert_close(categorical_loss(diff, changed, x0, x_t, t).total, loss.total.detach())
    # A boolean ignore_mask is the same as the unknown label.
    mask = x0 == UNKNOWN_LABEL
    x0_filled = torch.where(mask, torch.zeros_like(x0), x0)
    masked = categorical_loss(diff, logits.detach(), x0_filled, x_t, t, ignore_mask=mask)
    torch.testing.assert_close(masked.total, loss.total.detach())
    # Nothing known: zero, still differentiable.
    empty = categorical_loss(diff, logits, torch.full_like(x0, UNKNOWN_LABEL), x_t, t)
    assert float(empty.total.detach()) == 0.0 and empty.total.requires_grad


def test_voxel_weights_give_weighted_means():
    diff, x0, x_t, t, g = _case()
    logits = torch.randn(2, 4, 3, 3, 3, generator=g)
    plain = categorical_loss(diff, logits, x0, x_t, t)
    ones = categorical_loss(diff, logits, x0, x_t, t, voxel_weight=torch.ones(x0.shape))
    torch.testing.assert_close(ones.total, plain.total)
    # At t = 1 both terms are the decoder cross-entropy: check Σ w·ce / Σ w by hand, with an
    # unknown voxel whose weight must not count.
    x0 = x0.clone()
    x0[1, 2, 2, 2] = UNKNOWN_LABEL
    w = torch.ones(x0.shape)
    w[0, 0, 0, 0] = 25.0
    w[1, 2, 2, 2] = 100.0  # unknown: ignored
    ce = torch.nn.functional.cross_entropy(logits, torch.where(x0 == UNKNOWN_LABEL, 0, x0), reduction="none")
    known = (x0 != UNKNOWN_LABEL).float()
    expected = (ce * w * known).sum() / (w * known).sum()
    got = categorical_loss(diff, logits, x0, x_t, 1, voxel_weight=w)
    torch.testing.assert_close(got.ce, expected)
    torch.testing.assert_close(got.kl, expected)
    # Up-weighting a voxel moves the mean towards that voxel's loss.
    unweighted = categorical_loss(diff, logits, x0, x_t, 1)
    assert abs(float(got.ce) - float(ce[0, 0, 0, 0])) < abs(float(unweighted.ce) - float(ce[0, 0, 0, 0]))
    with pytest.raises(ValueError, match="non-negative"):
        categorical_loss(diff, logits, x0, x_t, 1, voxel_weight=-w)
    with pytest.raises(ValueError, match="voxel_weight"):
        categorical_loss(diff, logits, x0, x_t, 1, voxel_weight=w[:1])


def test_unannotated_classes_merge_with_background():
    diff = make(k=4, T=10, ce_weight=1.0)
    x0 = torch.tensor([[0, 0, 2, 1]])  # class 3 is not annotated in this case
    x_t = torch.tensor([[0, 1, 2, 3]])
    t = torch.tensor([3])
    unannotated = torch.tensor([[False, False, False, True]])
    base = torch.tensor([[[2.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    ref = categorical_loss(diff, base, x0, x_t, t, ignore_classes=unannotated)
    # Moving mass between background (0) and the unannotated class (3) at background voxels,
    # or showing class 3 instead of background in x_t, changes nothing...
    moved = base.clone()
    for voxel, new_bg in ((0, -5.0), (1, 0.5)):  # keep exp(ℓ_0) + exp(ℓ_3), the block's mass
        mass = math.exp(float(base[0, 0, voxel])) + math.exp(float(base[0, 3, voxel]))
        moved[0, 0, voxel], moved[0, 3, voxel] = new_bg, math.log(mass - math.exp(new_bg))
    x_t_moved = torch.tensor([[3, 1, 2, 0]])
    for logits, xt in ((moved, x_t), (base, x_t_moved), (moved, x_t_moved)):
        other = categorical_loss(diff, logits, x0, xt, t, ignore_classes=unannotated)
        torch.testing.assert_close(other.total, ref.total)
    # ...whereas with class 3 annotated, predicting it on a background voxel costs.
    annotated_cost = float(categorical_loss(diff, moved, x0, x_t, t).total)
    assert annotated_cost > float(categorical_loss(diff, base, x0, x_t, t).total) + 0.5
    # No unannotated classes: the lumped loss is the ordinary one.
    none = torch.zeros(1, 4, dtype=torch.bool)
    torch.testing.assert_close(
        categorical_loss(diff, base, x0, x_t, t, ignore_classes=none).total,
        categorical_loss(diff, base, x0, x_t, t).total,
    )
    # Gradients stay finite with lumped classes at t = 1.
    logits = base.clone().requires_grad_(True)
    out = categorical_loss(diff, logits, x0, x_t, torch.tensor([1]), ignore_classes=unannotated)
    out.total.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="background"):
        categorical_loss(diff, base, x0, x_t, t, ignore_classes=torch.tensor([[True, False, False, False]]))


def test_gradients_finite_everywhere():
    diff = make(k=4, T=50)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 4, (4, 4, 4), generator=g)
    t = torch.tensor([1, 2, 25, 50])
    x_t = diff.q_sample(x0, t, g)
    logits = (60.0 * torch.randn(4, 4, 4, 4, generator=g)).requires_grad_(True)  # saturated softmax
    unannotated = torch.tensor(
        [[False, True, False, False], [False, False, True, True], [False] * 4, [False, True, True, True]]
    )
    categorical_loss(diff, logits, x0, x_t, t, ignore_classes=unannotated).total.backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- sampling


def test_sampling_deterministic_per_seed():
    diff = make(k=4, T=30)
    weights = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))

    def model(x, t):
        return torch.einsum("nk...,kj->nj...", x, weights) + 0.01 * t.view(-1, 1, 1, 1).float()

    calls = []
    a = ancestral_sample(
        diff,
        model,
        (2, 4, 4),
        generator=torch.Generator().manual_seed(7),
        steps=10,
        callback=lambda i, s, x, p: calls.append((i, s, tuple(x.shape), tuple(p.shape))),
    )
    b = ancestral_sample(diff, model, (2, 4, 4), generator=torch.Generator().manual_seed(7), steps=10)
    c = ancestral_sample(diff, model, (2, 4, 4), generator=torch.Generator().manual_seed(8), steps=10)
    assert a.shape == (2, 4, 4) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [s for _, s, _, _ in calls] == diff.timestep_sequence(10)[1:]
    assert calls[0][2:] == ((2, 4, 4), (2, 4, 4, 4))


def test_sample_categorical_never_draws_zero_probability():
    log_p = torch.log(torch.tensor([[[0.0], [1.0], [0.0]]])).expand(1, 3, 500).contiguous()
    assert torch.all(sample_categorical(log_p, torch.Generator().manual_seed(0)) == 1)


def test_trained_per_voxel_model_reproduces_label_map():
    torch.manual_seed(0)
    k, T = 4, 1000
    diff = make(k=k, T=T)
    z, y, x = torch.meshgrid(torch.arange(8), torch.arange(8), torch.arange(8), indexing="ij")
    target = torch.zeros(8, 8, 8, dtype=torch.long)
    target[(z - 3.5) ** 2 + (y - 3.5) ** 2 + (x - 3.5) ** 2 < 9] = 1
    target[(x < 2) & (y > 4)] = 2
    target[z == 7] = 3
    target = target.unsqueeze(0)

    logits = torch.zeros(1, k, 8, 8, 8, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        t = diff.sample_timesteps(1, g)
        x_t = diff.q_sample(target, t, g)
        loss = categorical_loss(diff, logits, target, x_t, t).total
        opt.zero_grad()
        loss.backward()
        opt.step()

    def model(x_t, t):
        return logits.detach().expand(x_t.shape[0], -1, -1, -1, -1)

    full = ancestral_sample(diff, model, (1, 8, 8, 8), generator=torch.Generator().manual_seed(1))
    strided = ancestral_sample(diff, model, (1, 8, 8, 8), generator=torch.Generator().manual_seed(2), steps=20)
    assert (full == target).float().mean() >= 0.95
    assert (strided == target).float().mean() >= 0.95


# ----------------------------------------------------------------------------- guidance


def test_guided_logits():
    cond = torch.tensor([[[2.0], [0.0]]])  # (1, K = 2, 1)
    uncond = torch.tensor([[[0.0], [1.0]]])
    torch.testing.assert_close(guided_logits(cond, uncond, 1.0), torch.log_softmax(cond, dim=1))
    torch.testing.assert_close(guided_logits(cond, uncond, 0.0), torch.log_softmax(uncond, dim=1))
    # p_w ∝ p_u^{1−w} p_c^{w}, by hand for w = 3.
    pc = torch.softmax(cond, dim=1)[0, :, 0]
    pu = torch.softmax(uncond, dim=1)[0, :, 0]
    un = pu**-2 * pc**3
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0).exp()[0, :, 0], un / un.sum())
    with pytest.raises(ValueError, match="same shape"):
        guided_logits(cond, uncond[:, :, :0], 1.0)
    with pytest.raises(ValueError, match="scale"):
        guided_logits(cond, uncond, float("nan"))


def test_count_matched_argmax_keeps_an_uncertain_small_class():
    """A class at p = 0.3 over a fuzzy region loses every voxel to argmax; matching keeps its volume."""
    probs = torch.zeros(1, 3, 10, 10)
    probs[0, 0] = 1.0  # class 0 certain everywhere …
    yy, xx = torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij")
    doubt = (0.4 - 0.1 * ((yy - 4) ** 2 + (xx - 4) ** 2).sqrt()).clamp_min(0.0)  # … but class 2 up to 0.4 near (4, 4)
    probs[0, 2] = doubt
    probs[0, 0] = 1.0 - doubt
    probs[0, :, 8, 8] = torch.tensor([0.2, 0.8, 0.0])  # a confident class 1 voxel
    log_p = probs.clamp_min(1e-12).log()
    plain = log_p.argmax(1)
    assert int((plain == 2).sum()) == 0
    matched = count_matched_argmax(log_p)
    expected = float(probs[0, 2].sum())  # ≈ 7 voxels' worth
    # Voxels at one distance from (4, 4) tie in fours: 1, 5, 9 … are the reachable counts.
    assert int((matched == 2).sum()) in (5, 9) and abs(int((matched == 2).sum()) - expected) <= 2.5
    assert bool(matched[0, 4, 4] == 2)  # where the class is likeliest first
    assert torch.all((matched == 2) <= (probs[:, 2] > 0))  # never where it has no probability
    assert bool(matched[0, 8, 8] == 1)
    # A class left out of the matching keeps exactly its plain voxels (none here), whatever the others do.
    assert torch.equal(count_matched_argmax(log_p, classes=[0, 1]) == 2, plain == 2)
    assert torch.equal(count_matched_argmax(log_p, classes=[0, 2]) == 1, plain == 1)
