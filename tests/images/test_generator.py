"""The autoregressive slice sampler, the generator wrapper and bring-your-own-mask generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from guidegen.data.prepare import load_prepared
from guidegen.diffusion.flow import FlowConfig
from guidegen.errors import InputError
from guidegen.grids.upsample import upsample_labels
from guidegen.images.any_grid import generate_ct, model_grid
from guidegen.images.generator import ConditionalImageGenerator, sample_volume
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import NUM_CLASSES
from tests.images.conftest import tiny_config

K = NUM_CLASSES  # the tiny test model knows the whole vocabulary


@pytest.fixture(scope="module")
def labels(tiny_prepared) -> Volume:
    entry = {e["case_id"]: e for e in load_prepared(tiny_prepared)}["totalseg-example-a"]
    return read_nifti(entry["labels_path"], kind="labels")  # (32, 32, 28) at 12 mm, real anatomy


def _batch(vol: Volume, n: int = 1) -> dict:
    lab = torch.from_numpy(vol.array.astype(np.int64)).unsqueeze(0).expand(n, -1, -1, -1)
    return dict(labels=lab, phase=torch.zeros(n, dtype=torch.long), annotated=torch.ones(n, K), text=None)


class ChainStub(nn.Module):
    """Velocity whose Euler solution is ``x0 = prev + 0.1`` (an oracle), recording what it was shown."""

    def __init__(self, **overrides):
        super().__init__()
        self.config = tiny_config(**overrides)
        self.seen: list[tuple[float, torch.Tensor]] = []

    def forward(self, inputs, t, phase, annotated, text, uncond):
        c = self.config
        prev_ch = 1 + c.context_slices * (c.num_classes + 1)
        prev, has_prev, z = inputs[:, prev_ch : prev_ch + 1], inputs[:, prev_ch + 1], inputs[:, prev_ch + 2]
        self.seen.append((float(z[0, 0, 0]), has_prev[:, 0, 0].clone(), inputs.clone()))
        x0 = prev + 0.1
        return (inputs[:, :1] - x0) / t.reshape(-1, 1, 1, 1)


def test_each_slice_is_conditioned_on_the_generated_previous_slice(labels):
    stub = ChainStub()
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    out = sample_volume(
        stub, flow=FlowConfig(), steps=3, guidance=1.0, generators=gens, precision="fp32", **_batch(labels, 2)
    )
    z = labels.shape[2]
    assert out.shape == (2, 32, 32, z)
    for k in range(z):  # slice k = slice k−1 + 0.1, clipped at 1: the chain went through the previous slice
        assert torch.allclose(out[..., k], torch.full_like(out[..., k], min(0.1 * (k + 1), 1.0)), atol=1e-5)
    # Slice 0 had no previous slice, all later ones had; z runs from 0 to 1; 3 network calls per slice.
    assert len(stub.seen) == 3 * z
    assert torch.all(stub.seen[0][1] == 0) and all(torch.all(s[1] == 1) for s in stub.seen[3:])
    assert stub.seen[0][0] == 0.0 and stub.seen[-1][0] == 1.0
    # The mask channels of slice k hold the one-hot of labels k−1, k, k+1 (zeros outside the volume).
    k = 10
    inputs = stub.seen[3 * k][2]
    masks = inputs[0, 1 : 1 + 3 * (K + 1)].reshape(3, K + 1, 32, 32)
    for j, kk in enumerate((k - 1, k, k + 1)):
        lab = torch.from_numpy(labels.array[..., kk].astype(np.int64))
        known = lab != 255
        assert torch.equal(masks[j, :K].argmax(0)[known], lab[known])
        assert torch.equal(masks[j, K].bool(), ~known)
    first = stub.seen[0][2][0, 1 : 1 + K + 1]
    assert torch.all(first == 0)  # slice −1 is outside the volume


def test_slice_position_off_feeds_a_constant_zero_z_channel(labels):
    # slice_position=False: the z channel holds 0 on every slice instead of k / (Z − 1), as in training.
    stub = ChainStub(slice_position=False)
    sample_volume(
        stub,
        flow=FlowConfig(),
        steps=2,
        guidance=1.0,
        generators=[torch.Generator().manual_seed(0)],
        precision="fp32",
        **_batch(labels),
    )
    assert len(stub.seen) == 2 * labels.shape[2]
    assert all(z == 0.0 for z, _, _ in stub.seen)
    prev_ch = 1 + stub.config.context_slices * (K + 1)
    assert all(torch.all(inputs[:, prev_ch + 2] == 0) for _, _, inputs in stub.seen)


def test_outputs_int16_hu_on_the_labels_grid(tiny_model, labels):
    ct = tiny_model.generate(labels, seed=0)[0]
    assert ct.kind == "ct" and ct.array.dtype == np.int16
    assert ct.same_grid(labels)
    assert ct.array.min() >= -1024 and ct.array.max() <= 3071
    assert ct.meta["seed"] == 0


def test_same_seed_same_volume_other_seed_other_volume(tiny_model, labels):
    a = tiny_model.generate(labels, seed=7)[0].array
    b = tiny_model.generate(labels, seed=7)[0].array
    c = tiny_model.generate(labels, seed=8)[0].array
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_batch_of_volumes_equals_generating_them_one_by_one(tiny_model, labels):
    other = labels.with_array(np.ascontiguousarray(np.flip(labels.array, axis=1)))
    args = dict(
        flow=FlowConfig(),
        steps=2,
        guidance=1.0,
        precision="fp32",
        phase=torch.zeros(2, dtype=torch.long),
        annotated=torch.ones(2, K),
        text=None,
    )
    lab = torch.stack([torch.from_numpy(v.array.astype(np.int64)) for v in (labels, other)])
    both = sample_volume(tiny_model, lab, generators=[torch.Generator().manual_seed(s) for s in (3, 4)], **args)
    for i, s in enumerate((3, 4)):
        one = {**args, "phase": args["phase"][:1], "annotated": args["annotated"][:1]}
        single = sample_volume(tiny_model, lab[i : i + 1], generators=[torch.Generator().manual_seed(s)], **one)
        assert torch.allclose(both[i], single[0], atol=1e-4)
    vols = tiny_model.generate([labels, other], seed=[3, 4])
    assert np.abs(vols[1].array.astype(int) - tiny_model.generate(other, seed=4)[0].array).max() <= 1


class ZeroVelocity(nn.Module):
    """Velocity 0: every slice comes out as its starting noise (clipped to [−1, 1])."""

    def __init__(self):
        super().__init__()
        self.config = tiny_config()

    def forward(self, inputs, t, phase, annotated, text, uncond):
        return torch.zeros_like(inputs[:, :1])


def _adjacent_correlation(vol: torch.Tensor) -> float:
    a, b = vol[..., :-1].flatten(), vol[..., 1:].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_noise_correlation_along_z(labels):
    args = dict(flow=FlowConfig(), steps=2, guidance=1.0, precision="fp32", **_batch(labels, 2))
    run = lambda rho, seeds=(0, 1), **kw: sample_volume(  # noqa: E731
        ZeroVelocity(),
        generators=[torch.Generator().manual_seed(s) for s in seeds],
        noise_correlation=rho,
        **{**args, **kw},
    )
    independent, correlated = run(0.0), run(0.9)
    assert abs(_adjacent_correlation(independent)) < 0.05
    # ρ = 0.9 before the clip at ±1; clipping lowers it a little.
    assert 0.8 < _adjacent_correlation(correlated) < 0.92
    assert torch.equal(independent[..., 0], correlated[..., 0])  # slice 0 is the same first draw
    # Each slice's noise stays standard normal: the clipped spread is the same as for independent noise.
    assert abs(float(correlated[..., 1:].std()) / float(independent[..., 1:].std()) - 1) < 0.05
    # Per-volume generators: a batch equals its volumes generated one by one.
    one = run(0.9, seeds=(1,), labels=args["labels"][:1], phase=args["phase"][:1], annotated=args["annotated"][:1])
    assert torch.equal(correlated[1], one[0])
    with pytest.raises(ValueError, match="noise_correlation"):
        run(1.0)


class CountingModel(nn.Module):
    def __init__(self, inner, force_uncond=False):
        super().__init__()
        self.inner, self.config, self.force_uncond, self.uncond_calls = inner, inner.config, force_uncond, 0

    def forward(self, inputs, t, phase, annotated, text, uncond):
        if uncond is not None:
            self.uncond_calls += 1
        if self.force_uncond:
            uncond = torch.ones(inputs.shape[0], dtype=torch.bool)
        return self.inner(inputs, t, phase, annotated, text, uncond)


def test_classifier_free_guidance(tiny_model, labels):
    small = labels.with_array(labels.array[..., 8:12].copy())
    common = dict(flow=FlowConfig(), steps=2, precision="fp32", **_batch(small))
    common["phase"] = torch.full((1,), 2, dtype=torch.long)
    run = lambda model, s: sample_volume(model, guidance=s, generators=[torch.Generator().manual_seed(0)], **common)  # noqa: E731
    counting = CountingModel(tiny_model)
    cond = run(counting, 1.0)
    assert counting.uncond_calls == 0  # s = 1 is the conditional model, one network call per step
    assert torch.equal(cond, run(CountingModel(tiny_model), 1.0))
    uncond_only = run(CountingModel(tiny_model, force_uncond=True), 1.0)
    assert torch.equal(run(tiny_model, 0.0), uncond_only)  # s = 0 is the unconditional model
    assert not torch.equal(run(tiny_model, 3.0), cond)


def test_bring_your_own_mask_at_another_spacing(tiny_model, labels):
    # The same anatomy at 8 mm in LPS orientation (as a DICOM-derived mask would be).
    fine = upsample_labels(labels, (8.0, 8.0, 8.0))
    lps = fine.with_array(np.ascontiguousarray(fine.array[::-1, ::-1, :]))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [fine.shape[0] - 1, fine.shape[1] - 1]
    lps.affine = fine.affine @ flip
    assert lps.orientation == "LPS"
    ct = generate_ct(tiny_model, lps, seed=1, image_steps=1)
    assert ct.same_grid(lps) and ct.array.dtype == np.int16
    assert ct.array.min() >= -1024 and ct.array.max() <= 3071
    assert ct.meta["model_grid"]["spacing_mm"] == [12.0, 12.0, 12.0]
    # A bare array with its spacing works too and lands on its own grid.
    bare = generate_ct(tiny_model, labels.array[:, :, :5], spacing=(12.0, 12.0, 12.0), seed=1, image_steps=1)
    assert bare.shape == (32, 32, 5) and np.allclose(bare.affine, np.diag([12.0, 12.0, 12.0, 1.0]))


def test_model_grid_is_centred_on_the_body(labels):
    cfg = tiny_config()
    shifted = labels.with_array(labels.array, affine=labels.affine.copy())
    shifted.affine[:3, 3] += (100.0, -40.0, 7.0)
    (a0, s0), (a1, s1) = model_grid(labels, cfg), model_grid(shifted, cfg)
    assert s0 == s1 == (32, 32, 28)
    assert np.allclose(a1[:3, 3] - a0[:3, 3], (100.0, -40.0, 7.0))
    wide, _ = model_grid(labels.with_array(labels.array, affine=np.diag([24.0, 24.0, 12.0, 1.0])), cfg, fov="fit")
    assert wide[0, 0] > 12.0


def test_bad_inputs_are_refused(tiny_model, labels):
    with pytest.raises(ValueError, match="model grid"):
        tiny_model.generate(upsample_labels(labels, (6.0, 6.0, 6.0)))
    with pytest.raises(InputError, match="label ids"):
        tiny_model.generate(labels.with_array(np.full(labels.shape, 40, np.uint8)))
    with pytest.raises(ValueError, match="seed"):
        tiny_model.generate([labels, labels], seed=[1])
    with pytest.raises(ValueError, match="spacing"):
        generate_ct(tiny_model, labels.array)
    with pytest.raises(ValueError, match="phase"):
        tiny_model.generate(labels, phase="venous-ish")


def test_save_and_load_pretrained(tiny_model, labels, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "gen")
    loaded = ConditionalImageGenerator.from_pretrained(folder)
    assert loaded.config == tiny_model.config
    small = labels.with_array(labels.array[..., :3].copy())
    assert np.array_equal(loaded.generate(small, seed=2)[0].array, tiny_model.generate(small, seed=2)[0].array)
    (folder / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(InputError, match="corrupted"):
        ConditionalImageGenerator.from_pretrained(folder)


def test_per_organ_mean_hu_validation(tiny_model, tiny_prepared):
    from guidegen.images.validate import compare_mean_hu, organ_mean_hu, validate_case

    entry = {e["case_id"]: e for e in load_prepared(tiny_prepared)}["totalseg-example-a"]
    real = read_nifti(entry["ct_path"])
    labels = read_nifti(entry["labels_path"], kind="labels")
    means = organ_mean_hu(real, labels)
    assert 20 < means["liver"] < 80 and means["bone"] > 150
    same = compare_mean_hu(real, real, labels)
    assert same["_summary"]["mean_abs_difference"] == 0.0
    table = validate_case(tiny_model, entry, seed=0, steps=1)
    assert set(table) - {"_summary"} <= set(means) and "liver" in table


@pytest.mark.parametrize(
    "phase, expected", [("non_contrast", 1), ("arterial", 2), ("portal_venous", 3), ("delayed", 4), (None, 0)]
)
def test_generator_receives_the_requested_phase(tiny_model, labels, phase, expected):
    # Issue 8: the phase asked for is the phase the network is conditioned on, at every step.
    seen = []
    inner_forward = tiny_model.forward

    def recording_forward(inputs, t, phase_ids, annotated, text, uncond):
        seen.append(phase_ids.clone())
        return inner_forward(inputs, t, phase_ids, annotated, text, uncond)

    tiny_model.forward = recording_forward
    try:
        tiny_model.generate(labels.with_array(labels.array[..., 8:10].copy()), phase=phase, image_steps=1)
    finally:
        del tiny_model.forward
    assert seen and all(torch.all(p == expected) for p in seen)


def test_phase_prior_channel_marks_enhancing_structures(labels, tmp_path):
    # phase_prior: the network sees the requested phase's typical HU on the pixels of aorta, IVC,
    # liver, spleen and kidneys of slice k, nothing elsewhere, and nothing for the unknown phase.
    from guidegen.data.phase import TYPICAL_HU
    from guidegen.images.hu import hu_to_unit
    from guidegen.images.model import assemble_inputs, context_labels, mask_channels
    from guidegen.labels.vocabulary import ID

    model = ConditionalImageGenerator(tiny_config(phase_prior=True)).eval()
    cfg = model.config
    lab = torch.from_numpy(labels.array.astype(np.int64)).unsqueeze(0).expand(2, -1, -1, -1)
    k = int(np.argmax((labels.array == ID["liver"]).sum(axis=(0, 1))))
    ctx = context_labels(lab, k, cfg.context_radius)
    inputs = assemble_inputs(
        torch.zeros(2, 1, *lab.shape[1:3]),
        mask_channels(ctx, cfg.num_classes),
        torch.zeros(2, 1, *lab.shape[1:3]),
        torch.zeros(2),
        torch.zeros(2),
    )
    prior = model.net.phase_prior(inputs, torch.tensor([1, 3]))[:, 0].numpy()
    centre = labels.array[..., k]
    for structure in ("liver", "spleen", "aorta"):
        where = centre == ID[structure]
        assert where.any()
        for row, name in enumerate(("non_contrast", "portal_venous")):
            np.testing.assert_allclose(prior[row][where], hu_to_unit(np.array(TYPICAL_HU[name][structure])), atol=1e-6)
    assert np.all(prior[:, ~np.isin(centre, [ID[s] for s in TYPICAL_HU["arterial"]])] == 0)
    assert np.all(model.net.phase_prior(inputs, torch.tensor([0, 0])).numpy() == 0)
    # Training with prior_levels "measured" states each item's own levels instead; phase 0 stays empty.
    levels = torch.zeros(2, cfg.num_classes)
    levels[:, ID["liver"]] = 0.25
    own = model.net.phase_prior(inputs, torch.tensor([1, 0]), levels)[:, 0].numpy()
    assert np.all(own[0][centre == ID["liver"]] == 0.25) and np.all(own[0][centre != ID["liver"]] == 0)
    assert np.all(own[1] == 0)
    with pytest.raises(ValueError, match="levels"):
        model.net.phase_prior(inputs, torch.tensor([1, 0]), levels[:1])
    # The network takes it as one more channel; the table is code, not weights: save/load round trip.
    small = labels.with_array(labels.array[..., k - 1 : k + 2].copy())
    out = model.generate(small, seed=1, image_steps=1, phase="arterial")[0]
    folder = model.save_pretrained(tmp_path / "prior")
    again = ConditionalImageGenerator.from_pretrained(folder).generate(small, seed=1, image_steps=1, phase="arterial")[
        0
    ]
    assert np.array_equal(out.array, again.array)
    assert model.net.unet.conv_in.conv.in_channels == cfg.in_channels + 1


class FixedSample(nn.Module):
    """A stand-in UNet that outputs a fixed "clean slice" whatever it is shown."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, timesteps, context=None, class_labels=None):
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value)


def test_prior_residual_offsets_the_predicted_slice_by_the_phase_prior(labels):
    # prior_residual: x̂_0 = UNet output + phase prior, so a UNet that outputs 0 draws each enhancing
    # structure at its phase's typical HU, everything else at unit 0, and nothing for the unknown phase.
    from guidegen.data.phase import TYPICAL_HU
    from guidegen.images.hu import hu_to_unit, unit_to_hu
    from guidegen.labels.vocabulary import ID

    model = ConditionalImageGenerator(tiny_config(phase_prior=True, prediction="sample", prior_residual=True)).eval()
    model.net.unet = FixedSample(0.0)
    k = int(np.argmax((labels.array == ID["liver"]).sum(axis=(0, 1))))
    small = labels.with_array(labels.array[..., k : k + 1].copy())
    centre = small.array[..., 0]
    for phase in ("non_contrast", "portal_venous"):
        ct = model.generate(small, image_steps=1, phase=phase)[0].array[..., 0].astype(np.float64)
        for structure in ("liver", "spleen", "aorta"):
            where = centre == ID[structure]
            assert where.any()
            np.testing.assert_allclose(ct[where], TYPICAL_HU[phase][structure], atol=1.0)
        other = ~np.isin(centre, [ID[s] for s in TYPICAL_HU[phase]])
        np.testing.assert_allclose(ct[other], float(unit_to_hu(np.array(0.0))), atol=1.0)
    unknown = model.generate(small, image_steps=1)[0].array
    assert np.all(np.abs(hu_to_unit(unknown.astype(np.float64))) < 3e-3)
    with pytest.raises(ValueError, match="prior_residual"):
        tiny_config(prior_residual=True, prediction="sample")
    with pytest.raises(ValueError, match="prior_residual"):
        tiny_config(prior_residual=True, phase_prior=True)


def test_sample_prediction_turns_the_predicted_slice_into_a_velocity(labels):
    # prediction="sample": the UNet outputs x̂_0 and the network returns v = (x_t − x̂_0) / t, t
    # floored at SAMPLE_PREDICTION_MIN_T; so one Euler step from t = 1 lands exactly on x̂_0.
    from guidegen.images.config import SAMPLE_PREDICTION_MIN_T
    from guidegen.images.hu import hu_to_unit

    model = ConditionalImageGenerator(tiny_config(prediction="sample")).eval()
    model.net.unet = FixedSample(0.2)
    cfg = model.config
    x_t = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    inputs = torch.cat([x_t, torch.zeros(3, cfg.in_channels - 1, 32, 32)], dim=1)
    t = torch.tensor([1.0, 0.25, 0.01])
    v = model(inputs, t, torch.zeros(3, dtype=torch.long), torch.ones(3, K))
    expected = (x_t - 0.2) / torch.tensor([1.0, 0.25, SAMPLE_PREDICTION_MIN_T]).reshape(3, 1, 1, 1)
    torch.testing.assert_close(v, expected)
    ct = model.generate(labels.with_array(labels.array[..., 10:12].copy()), image_steps=1)[0].array
    assert np.all(np.abs(hu_to_unit(ct.astype(np.float64)) - 0.2) < 3e-3)  # int16 rounding only
    # A velocity model (the default, and every model saved before the option) returns the UNet's output.
    plain = ConditionalImageGenerator(tiny_config()).eval()
    assert plain.config.prediction == "velocity"
    plain.net.unet = FixedSample(0.2)
    assert torch.all(plain(inputs, t, torch.zeros(3, dtype=torch.long), torch.ones(3, K)) == 0.2)
    with pytest.raises(ValueError, match="prediction"):
        tiny_config(prediction="noise")


def test_sample_shift_sets_the_sampling_schedule(labels):
    # The config's sample_shift (not the training shift) spaces the Euler steps: with 0.5 the four
    # steps of a slice start at t = 1, 0.6, 1/3 and 1/7 (t' = 0.5 t / (1 − 0.5 t)).
    seen: list[float] = []

    class TimeRecorder(ChainStub):
        def forward(self, inputs, t, phase, annotated, text, uncond):
            seen.append(float(t[0]))
            return super().forward(inputs, t, phase, annotated, text, uncond)

    small = labels.with_array(labels.array[..., :1].copy())
    stub = TimeRecorder(sample_shift=0.5)
    sample_volume(
        stub,
        flow=FlowConfig(),
        steps=4,
        guidance=1.0,
        generators=[torch.Generator().manual_seed(0)],
        precision="fp32",
        **_batch(small),
    )
    assert seen == pytest.approx([1.0, 0.6, 1 / 3, 1 / 7])
    seen.clear()
    sample_volume(
        TimeRecorder(),
        flow=FlowConfig(),
        steps=4,
        guidance=1.0,
        generators=[torch.Generator().manual_seed(0)],
        precision="fp32",
        **_batch(small),
    )
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])  # no sample_shift: the flow's own (1.0)
    with pytest.raises(ValueError, match="sample_shift"):
        tiny_config(sample_shift=0.0)
