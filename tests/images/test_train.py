"""Training of the slice generator: batches, augmentation, exact resume, learning on real slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import ndimage

from guidegen.config import load_config, save_config
from guidegen.images.config import ImageGeneratorConfig
from guidegen.images.dataset import SliceDataset, infer_phase
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.train import flow_matching_loss, train_image_generator
from guidegen.labels.vocabulary import ID
from guidegen.training import checkpoint_dirs, step_generators
from tests.images.conftest import tiny_config
from tests.test_cli import run

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_dataset_holds_every_real_slice_with_partial_labels(tiny_prepared):
    data = SliceDataset(tiny_prepared, tiny_config())
    assert {c.case_id for c in data.cases} == {"totalseg-example-a", "msd-spleen-8"}
    assert len(data) == sum(c.ct.shape[2] for c in data.cases)
    spleen_only = next(c for c in data.cases if c.case_id == "msd-spleen-8")
    assert spleen_only.annotated[ID["spleen"]] == 1 and spleen_only.annotated[ID["liver"]] == 0
    full = next(c for c in data.cases if c.case_id == "totalseg-example-a")
    assert full.annotated[ID["liver"]] == 1
    assert full.phase == 1  # unenhanced aorta (43 HU) → non-contrast
    held = SliceDataset(tiny_prepared, tiny_config(holdout_cases=("msd-spleen-8",)))
    assert [c.case_id for c in held.cases] == ["totalseg-example-a"]


def test_batches_are_deterministic_and_augmentation_is_joint(tiny_prepared):
    cfg = tiny_config(augment_prob=1.0, prev_dropout=0.0, prev_noise=0.0, cond_dropout=0.0, rotate_deg=20.0)
    data = SliceDataset(tiny_prepared, cfg)
    a = data.make_batch(*step_generators(0, 5), 6)
    b = data.make_batch(*step_generators(0, 5), 6)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("target", "ctx", "prev", "uncond"))
    idx = step_generators(0, 5)[0].integers(0, len(data), size=6).tolist()
    plain = data.make_batch(*step_generators(0, 5), 6, indices=idx, train=False)
    assert not torch.equal(a.target, plain.target)  # moved …
    # … but jointly: CT inside the moved bone label stays bone-bright, and no intensity was changed.
    bone = a.ctx[:, 1:2] == ID["bone"]
    assert a.target[bone].mean() > plain.target[plain.ctx[:, 1:2] == ID["bone"]].mean() - 0.1
    assert a.target.min() >= -1.0 and a.target.max() <= 1.0
    assert set(torch.unique(a.ctx).tolist()) <= set(range(cfg.num_classes)) | {255, -1}


def test_prev_dropout_hides_the_previous_slice(tiny_prepared):
    data = SliceDataset(tiny_prepared, tiny_config(prev_dropout=1.0))
    batch = data.make_batch(*step_generators(0, 0), 8)
    assert torch.all(batch.has_prev == 0) and torch.all(batch.prev == 0)


def test_hidden_classes_look_unannotated(tiny_prepared):
    """p_hide_classes shows some annotated classes as "body" with their flag off, like a prepared partial map."""
    cfg = tiny_config(augment_prob=0.0, prev_dropout=0.0, prev_noise=0.0, cond_dropout=0.0)
    data = SliceDataset(tiny_prepared, cfg)
    full = next(i for i, c in enumerate(data.cases) if c.case_id == "totalseg-example-a")
    idx = [i for i, (c, k) in enumerate(data.index) if c == full][len(data.cases[full].ct[0, 0]) // 2]
    plain = data.make_batch(*step_generators(0, 3), 8, indices=[idx] * 8)
    # With p = 0 nothing is drawn: the batch is exactly the one of an older config.
    assert torch.equal(plain.ctx, data.make_batch(*step_generators(0, 3), 8, indices=[idx] * 8).ctx)
    hidden = SliceDataset(
        tiny_prepared,
        tiny_config(augment_prob=0.0, prev_dropout=0.0, prev_noise=0.0, cond_dropout=0.0, p_hide_classes=1.0),
    )
    batch = hidden.make_batch(*step_generators(0, 3), 8, indices=[idx] * 8)
    assert torch.equal(batch.target, plain.target)  # the CT is untouched
    changed = 0
    for b in range(8):
        off = (plain.annotated[b] > 0) & (batch.annotated[b] == 0)
        assert not bool(off[0]) and not bool(off[ID["tumour"]]) and not bool(off[ID["body"]])
        assert torch.all(batch.annotated[b][~off] == plain.annotated[b][~off])
        for c in torch.nonzero(off).flatten().tolist():
            assert not torch.any(batch.ctx[b] == c)  # hidden class: gone from the map …
            assert torch.all(batch.ctx[b][plain.ctx[b] == c] == ID["body"])  # … shown as body, as prepare does
        kept = ~torch.isin(plain.ctx[b], torch.nonzero(off).flatten())
        assert torch.equal(batch.ctx[b][kept], plain.ctx[b][kept])  # everything else as it was
        changed += int(off.sum())
    assert changed > 8  # about half of ~16 classes per item
    # An item without a body class (none is prepared so, but a dataset could be) shows hidden pixels as background.
    import dataclasses

    from guidegen.images.dataset import hide_classes

    nobody = dataclasses.replace(plain, ctx=plain.ctx.clone(), annotated=plain.annotated.clone())
    nobody.annotated[:, ID["body"]] = 0
    organ = max(
        (c for c in range(1, ID["tumour"])), key=lambda c: int((plain.ctx == c).sum())
    )  # the largest organ shown
    hide = np.zeros(tuple(plain.annotated.shape), dtype=bool)
    hide[:, organ] = True
    hide_classes(nobody, hide)
    where = plain.ctx == organ
    assert bool(where.any()) and torch.all(nobody.ctx[where] == 0) and torch.all(nobody.annotated[:, organ] == 0)
    assert torch.equal(nobody.ctx[~where], plain.ctx[~where])


@pytest.mark.parametrize(("edge", "tolerance"), [("blur", 6.0), ("partial_volume", 0.5)])
def test_phase_remap_moves_enhancing_organs_to_the_phase_and_labels_it(tiny_prepared, edge, tolerance):
    """p_phase_remap re-renders a slice in another phase: organ HU → that phase's typical HU (the
    partial-volume edge moves the interior by exactly the shift; the blurred map only about so)."""
    from guidegen.data.phase import TYPICAL_HU
    from guidegen.images.dataset import REMAP_PHASES, phase_shift_map
    from guidegen.images.hu import unit_to_hu
    from guidegen.images.model import phase_id

    base = dict(augment_prob=0.0, prev_dropout=0.0, prev_noise=0.0, cond_dropout=0.0)
    data = SliceDataset(tiny_prepared, tiny_config(**base))
    full = next(i for i, c in enumerate(data.cases) if c.case_id == "totalseg-example-a")
    case = data.cases[full]
    assert case.mean_hu["liver"] == pytest.approx(45, abs=3)  # measured by prepare, non-contrast
    k = int(np.argmax((case.labels == ID["liver"]).sum(dim=(0, 1)).numpy()))  # the slice with most liver
    idx = [i for i, (c, kk) in enumerate(data.index) if c == full and kk == k]
    plain = data.make_batch(*step_generators(0, 3), 16, indices=idx * 16)
    remapped = SliceDataset(tiny_prepared, tiny_config(**base, p_phase_remap=1.0, phase_remap_edge=edge))
    batch = remapped.make_batch(*step_generators(0, 3), 16, indices=idx * 16)
    assert torch.equal(batch.ctx, plain.ctx)  # the anatomy is untouched
    phases = set()
    for b in range(16):
        phase = REMAP_PHASES[[phase_id(p) for p in REMAP_PHASES].index(int(batch.phase[b]))]
        phases.add(phase)
        liver = (plain.ctx[b, 1] == ID["liver"]).numpy()
        interior = ndimage.binary_erosion(liver)  # the blurred edge is partway
        moved = float(unit_to_hu(batch.target[b, 0])[torch.from_numpy(interior)].mean())
        before = float(unit_to_hu(plain.target[b, 0])[torch.from_numpy(interior)].mean())
        assert moved - before == pytest.approx(TYPICAL_HU[phase]["liver"] - case.mean_hu["liver"], abs=tolerance), phase
        fat = (plain.ctx[b, 1] == 0).numpy() & ~ndimage.binary_dilation(liver, iterations=3)
        assert torch.allclose(
            batch.target[b, 0][torch.from_numpy(fat)], plain.target[b, 0][torch.from_numpy(fat)], atol=1e-3
        )
    assert len(phases) >= 3  # a random phase per slice
    # A scan without any enhancing structure measured cannot be re-rendered.
    assert phase_shift_map(np.zeros((4, 4), np.int64), {}, "arterial") is None


def test_vessel_remap_moves_the_other_vessels_with_the_aorta(tiny_prepared):
    """enhancing_structures "core_and_vessels": a non-contrast slice re-rendered in another phase
    moves its other veins (and portal vein, heart, other arteries) to that phase's level too; "core"
    leaves them unenhanced."""
    from guidegen.data.phase import VESSEL_TYPICAL_HU
    from guidegen.images.dataset import REMAP_PHASES
    from guidegen.images.hu import unit_to_hu
    from guidegen.images.model import phase_id

    base = dict(augment_prob=0.0, prev_dropout=0.0, prev_noise=0.0, cond_dropout=0.0, p_phase_remap=1.0)
    core = SliceDataset(tiny_prepared, tiny_config(**base))
    vessels = SliceDataset(tiny_prepared, tiny_config(**base, enhancing_structures="core_and_vessels"))
    full = next(i for i, c in enumerate(vessels.cases) if c.case_id == "totalseg-example-a")
    case = vessels.cases[full]
    assert "other_vein" in case.mean_hu and "other_vein" not in core.cases[full].mean_hu
    k = int(np.argmax((case.labels == ID["other_vein"]).sum(dim=(0, 1)).numpy()))
    idx = [i for i, (c, kk) in enumerate(vessels.index) if c == full and kk == k] * 8
    plain = SliceDataset(tiny_prepared, tiny_config(**{**base, "p_phase_remap": 0.0})).make_batch(
        *step_generators(0, 3), 8, indices=idx
    )
    moved = vessels.make_batch(*step_generators(0, 3), 8, indices=idx)
    kept = core.make_batch(*step_generators(0, 3), 8, indices=idx)
    for b in range(8):
        phase = REMAP_PHASES[[phase_id(p) for p in REMAP_PHASES].index(int(moved.phase[b]))]
        vessel = torch.from_numpy((plain.ctx[b, 1] == ID["other_vein"]).numpy())
        assert int(vessel.sum()) > 0
        before = float(unit_to_hu(plain.target[b, 0])[vessel].mean())
        after = float(unit_to_hu(moved.target[b, 0])[vessel].mean())
        expected = VESSEL_TYPICAL_HU[phase]["other_vein"] - case.mean_hu["other_vein"]
        # A vessel a pixel or two across takes the blurred shift (sigma 1 px) only partly (a fifth
        # to a third here), but in its direction.
        assert (after - before) * expected > 0 or abs(expected) < 10, phase
        assert abs(after - before) >= 0.2 * abs(expected), phase
        assert torch.allclose(kept.target[b, 0][vessel], plain.target[b, 0][vessel], atol=0.05), phase


def test_vessel_prior_table_adds_heart_and_vessels_and_leaves_core_models_as_they_were():
    from guidegen.data.phase import TYPICAL_HU, VESSEL_TYPICAL_HU, typical_hu
    from guidegen.images.config import PHASES
    from guidegen.images.hu import hu_to_unit
    from guidegen.images.model import phase_prior_table

    core, vessels = phase_prior_table(5, 23, "core"), phase_prior_table(5, 23, "core_and_vessels")
    pv = PHASES.index("portal_venous")
    assert float(core[pv, ID["heart"]]) == 0 and float(core[pv, ID["portal_vein"]]) == 0
    assert float(vessels[pv, ID["heart"]]) == pytest.approx(float(hu_to_unit(np.array(140.0))))
    for name in TYPICAL_HU["portal_venous"]:
        assert float(vessels[pv, ID[name]]) == float(core[pv, ID[name]]) != 0
    assert typical_hu("core") is TYPICAL_HU and set(typical_hu("core_and_vessels")["arterial"]) == set(
        TYPICAL_HU["arterial"]
    ) | set(VESSEL_TYPICAL_HU["arterial"])
    assert tiny_config().enhancing_structures == "core"  # saved configs without the field load as before
    with pytest.raises(ValueError, match="enhancing_structures"):
        tiny_config(enhancing_structures="everything")


def _render_aorta_slice(blood_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """A 32² slice at 3 mm of fat with a 20 mm aorta of ``blood_hu`` (partial volume at its edge, from
    an 8× supersampled disc) and a block of bone one pixel to its right: (CT in HU, labels)."""
    fine = 8
    yy, xx = np.mgrid[0 : 32 * fine, 0 : 32 * fine] / fine + 0.5 / fine
    inside = ((yy - 16.0) ** 2 + (xx - 15.6) ** 2) <= (20.0 / 3.0 / 2) ** 2
    fraction = inside.reshape(32, fine, 32, fine).mean(axis=(1, 3))
    ct = -100.0 + fraction * (blood_hu + 100.0)
    labels = np.full((32, 32), ID["body"], dtype=np.int64)
    labels[fraction >= 0.5] = ID["aorta"]
    labels[12:21, 20:24] = ID["bone"]
    ct[12:21, 20:24] = 500.0
    return ct.astype(np.float32), labels


def test_partial_volume_remap_renders_a_thin_vessel_as_if_scanned_in_the_phase():
    """An arterial aorta (380 HU) re-rendered non-contrast: its inside lands on the phase's level,
    its edge and the fat ring around it on what a non-contrast scan of the same vessel reads, and
    the bone beside it and the fat beyond stay as they were. The blurred map leaves it bright inside."""
    from guidegen.data.phase import TYPICAL_HU
    from guidegen.images.dataset import partial_volume_shift_map, phase_shift_map

    arterial, labels = _render_aorta_slice(380.0)
    target = TYPICAL_HU["non_contrast"]["aorta"]
    plain, _ = _render_aorta_slice(target)  # the same vessel scanned without contrast
    aorta = labels == ID["aorta"]
    interior = ndimage.binary_erosion(aorta)
    assert 5 <= int(interior.sum()) <= int((aorta & ~interior).sum())  # half a vessel this thin is edge
    measured = {"aorta": float(arterial[interior].mean())}
    remapped = arterial + partial_volume_shift_map(arterial, labels, measured, "non_contrast")
    assert np.allclose(remapped[interior], target, atol=0.5)
    near = ndimage.binary_dilation(aorta) & (labels == ID["body"])
    edge_and_ring = (aorta & ~interior) | near
    assert np.abs(remapped[edge_and_ring] - plain[edge_and_ring]).max() < 2.0
    bone = labels == ID["bone"]
    far = ~ndimage.binary_dilation(aorta, iterations=2)
    assert np.array_equal(remapped[bone], arterial[bone]) and np.array_equal(remapped[far], arterial[far])
    blurred = arterial + phase_shift_map(labels, measured, "non_contrast")
    assert blurred[interior].mean() > target + 20  # what the partial-volume edge fixes
    # An unenhanced aorta beside unlabelled soft tissue that reads like blood (the crus) re-rendered
    # arterial: the crus does not light up as if it were aorta (at most the label blurred by a pixel).
    unenhanced, _ = _render_aorta_slice(target)
    crus = np.zeros_like(aorta)
    crus[:, :14] = True  # the left side of the ring
    crus &= ndimage.binary_dilation(aorta) & ~aorta
    assert crus.sum() >= 3
    unenhanced[crus] = 45.0
    lit = partial_volume_shift_map(unenhanced, labels, {"aorta": target}, "arterial")
    delta = TYPICAL_HU["arterial"]["aorta"] - target
    assert np.allclose(lit[interior], delta) and lit[crus].max() < 0.5 * delta
    # Too little unlabelled tissue around it to read the fat level: the whole label moves, nothing else.
    boxed = labels.copy()
    boxed[labels == ID["body"]] = ID["liver"]
    whole = partial_volume_shift_map(arterial, boxed, measured, "non_contrast")
    assert np.allclose(whole[aorta], target - measured["aorta"]) and not whole[~aorta].any()
    # A scan without any enhancing structure measured cannot be re-rendered.
    assert partial_volume_shift_map(arterial, labels, {}, "arterial") is None


def test_unknown_phase_remap_edge_is_refused():
    with pytest.raises(ValueError, match="phase_remap_edge"):
        ImageGeneratorConfig(phase_remap_edge="sharp")


def test_measured_prior_levels_state_the_level_each_training_target_shows(tiny_prepared):
    """prior_levels "measured": the phase-prior channel of a training item holds its scan's measured
    level of each enhancing structure, or the typical level where the remap put it there."""
    from guidegen.data.phase import TYPICAL_HU
    from guidegen.images.config import PHASES
    from guidegen.images.hu import hu_to_unit

    def unit(hu: float) -> float:
        return float(hu_to_unit(np.array(hu)))

    base = dict(augment_prob=0.0, prev_dropout=0.0, prev_noise=0.0, cond_dropout=0.0, phase_prior=True)
    assert SliceDataset(tiny_prepared, tiny_config(**base)).make_batch(*step_generators(0, 1), 4).levels is None
    data = SliceDataset(tiny_prepared, tiny_config(**base, prior_levels="measured"))
    by_id = {c.case_id: c for c in data.cases}
    ct, spleen_only = by_id["totalseg-example-a"], by_id["msd-spleen-8"]
    assert abs(ct.mean_hu["spleen"] - TYPICAL_HU["non_contrast"]["spleen"]) > 5  # the scan is off the typical level
    batch = data.make_batch(*step_generators(0, 2), 32)
    drawn = [data.index[i][0] for i in _drawn_indices(0, 2, 32, len(data))]  # each item's case
    for b, c in enumerate(drawn):
        case, phase = data.cases[c], PHASES[int(batch.phase[b])]
        assert phase == PHASES[case.phase] != "unknown"
        for name in TYPICAL_HU[phase]:
            want = case.mean_hu.get(name, TYPICAL_HU[phase][name])  # msd-spleen-8 measured only its spleen
            assert float(batch.levels[b, ID[name]]) == pytest.approx(unit(want), abs=1e-5), (case.case_id, name)
        assert float(batch.levels[b, ID["stomach"]]) == 0.0  # not an enhancing structure
    assert {data.cases[c].case_id for c in drawn} == {ct.case_id, spleen_only.case_id}
    # A re-rendered item shows the typical levels, and its channel says so; the others keep their own.
    remap = SliceDataset(tiny_prepared, tiny_config(**base, prior_levels="measured", p_phase_remap=0.5))
    plain = remap.make_batch(*step_generators(0, 4), 32, train=False)
    batch = remap.make_batch(*step_generators(0, 4), 32)
    moved = [not torch.equal(batch.target[b], plain.target[b]) for b in range(32)]  # remapped, with a structure shown
    assert 4 <= sum(moved) <= 28
    drawn = [remap.index[i][0] for i in _drawn_indices(0, 4, 32, len(remap))]
    for b in range(32):
        phase = PHASES[int(batch.phase[b])]
        case = remap.cases[drawn[b]]
        shown = set(batch.ctx[b, remap.config.context_radius].unique().tolist())
        for name in (n for n in TYPICAL_HU[phase] if ID[n] in shown):  # the channel paints only these
            want = TYPICAL_HU[phase][name] if moved[b] else case.mean_hu.get(name, TYPICAL_HU[phase][name])
            assert float(batch.levels[b, ID[name]]) == pytest.approx(unit(want), abs=1e-5)
    # The network is given them: the loss passes the batch's levels to the model.
    model = ConditionalImageGenerator(remap.config)
    seen = []
    forward = model.net.forward
    model.net.forward = lambda *args: seen.append(args[-1]) or forward(*args)
    with torch.no_grad():
        flow_matching_loss(model, batch, torch.full((32,), 0.5), torch.zeros_like(batch.target), "fp32")
    assert seen and seen[0] is batch.levels


def _drawn_indices(seed: int, step: int, n: int, size: int) -> list[int]:
    """The slice indices `SliceDataset.make_batch` draws first from a step's generators."""
    rng, _ = step_generators(seed, step)
    return rng.integers(0, size, size=n).tolist()


def test_measured_prior_levels_need_the_phase_prior():
    with pytest.raises(ValueError, match="prior_levels"):
        ImageGeneratorConfig(prior_levels="measured")
    with pytest.raises(ValueError, match="prior_levels"):
        ImageGeneratorConfig(phase_prior=True, prior_levels="median")


def test_prev_shift_moves_only_the_previous_slices_organs(tiny_prepared):
    """prev_shift_hu offsets the enhancing organs of the teacher-forced previous slice, nothing else."""
    from guidegen.images.hu import unit_to_hu

    base = dict(augment_prob=0.0, prev_dropout=0.0, prev_noise=0.0, cond_dropout=0.0)
    data = SliceDataset(tiny_prepared, tiny_config(**base))
    full = next(i for i, c in enumerate(data.cases) if c.case_id == "totalseg-example-a")
    k = int(np.argmax((data.cases[full].labels == ID["liver"]).sum(dim=(0, 1)).numpy()))
    idx = [i for i, (c, kk) in enumerate(data.index) if c == full and kk == k]
    plain = data.make_batch(*step_generators(0, 4), 8, indices=idx * 8)
    shifted = SliceDataset(tiny_prepared, tiny_config(**base, prev_shift_hu=80.0)).make_batch(
        *step_generators(0, 4), 8, indices=idx * 8
    )
    assert torch.equal(shifted.target, plain.target) and torch.equal(shifted.phase, plain.phase)
    offsets = []
    for b in range(8):
        liver = ndimage.binary_erosion((plain.ctx[b, 0] == ID["liver"]).numpy(), iterations=2)
        fat = (plain.ctx[b, 0] == 0).numpy() & ~ndimage.binary_dilation(plain.ctx[b, 0].numpy() > 0, iterations=3)
        delta = (unit_to_hu(shifted.prev[b, 0]) - unit_to_hu(plain.prev[b, 0])).numpy()
        assert np.allclose(delta[fat], 0.0, atol=0.5)
        assert (
            np.ptp(delta[liver]) < 5.0 and abs(delta[liver].mean()) <= 80.5
        )  # one offset for the organ (blur tail: a few HU)
        offsets.append(float(delta[liver].mean()))
    assert np.std(offsets) > 10  # drawn per slice


def test_phase_inference():
    assert infer_phase({"aorta": 45.0, "liver": 55.0}) == "non_contrast"
    assert infer_phase({"aorta": 300.0, "liver": 70.0}) == "arterial"
    assert infer_phase({"aorta": 170.0, "liver": 110.0}) == "portal_venous"
    assert infer_phase({"liver": 100.0}) is None and infer_phase(None) is None


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {
        **load_file(str(folder / "model.safetensors")),
        **{"raw." + k: v for k, v in load_file(str(folder / "training.safetensors")).items()},
    }


def test_resumed_run_equals_uninterrupted_run(tiny_prepared, tmp_path):
    cfg = tiny_config(steps=6, checkpoint_every=3, keep_checkpoints=5)
    full = train_image_generator(cfg, tiny_prepared, tmp_path / "full", progress=False)
    half = train_image_generator(cfg, tiny_prepared, tmp_path / "split", progress=False, max_steps=3)
    assert half.name == "step_00000003"
    resumed = train_image_generator(cfg, tiny_prepared, tmp_path / "split", progress=False)
    assert full.name == resumed.name == "model"
    a = _weights(checkpoint_dirs(tmp_path / "full")[-1])
    b = _weights(checkpoint_dirs(tmp_path / "split")[-1])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["raw.net.null_token"], _weights(half)["raw.net.null_token"])  # it did train on
    model = ConditionalImageGenerator.from_pretrained(full)  # the final EMA model loads
    assert model.config == cfg
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in log)
    with pytest.raises(ValueError, match="another configuration"):
        train_image_generator(tiny_config(steps=6, lr=1e-3), tiny_prepared, tmp_path / "split", progress=False)


def test_a_tiny_model_learns_one_real_slice_pair(tiny_prepared):
    torch.manual_seed(0)
    cfg = tiny_config(channels=(16, 32), norm_num_groups=8, num_head_channels=16, context_dim=32)
    data = SliceDataset(tiny_prepared, cfg)
    k = 14  # mid-abdomen slice of totalseg-example-a, its previous slice as context
    index = data.index.index((0, k))
    batch = data.make_batch(*step_generators(0, 0), 4, indices=[index] * 4, train=False)
    model = ConditionalImageGenerator(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    t_eval, eps_eval = torch.rand(4, generator=g) * 0.8 + 0.1, torch.randn(4, 1, 32, 32, generator=g)
    with torch.no_grad():
        before = float(flow_matching_loss(model, batch, t_eval, eps_eval, "fp32"))
    for _ in range(40):
        t, eps = torch.rand(4, generator=g), torch.randn(4, 1, 32, 32, generator=g)
        loss = flow_matching_loss(model, batch, t, eps, "bf16")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(flow_matching_loss(model, batch, t_eval, eps_eval, "fp32"))
    assert after < 0.7 * before, (before, after)


def test_config_json_round_trip_and_recipes(tmp_path):
    cfg = tiny_config(holdout_cases=("a", "b"), attention_levels=(False, True))
    save_config(cfg, tmp_path / "c.json")
    assert load_config(ImageGeneratorConfig, tmp_path / "c.json") == cfg
    demo = load_config(ImageGeneratorConfig, RECIPES / "image_generator_demo.json")
    paper = load_config(ImageGeneratorConfig, RECIPES / "image_generator_paper.json")
    assert demo.image_size == 128 and demo.spacing == (3.0, 3.0, 3.0) and demo.flow_steps <= 10
    assert paper.image_size == 512 and paper.spacing[0] < 1.0
    assert demo.in_channels == 1 + 3 * 19 + 3
    with pytest.raises(ValueError, match="norm_num_groups"):
        tiny_config(channels=(8, 12))
    with pytest.raises(ValueError, match="context_slices"):
        tiny_config(context_slices=2)
    with pytest.raises(ValueError, match="precision"):
        tiny_config(precision="int8")


def test_command_line(tiny_prepared, tmp_path, capsys):
    recipe = tmp_path / "r.json"
    save_config(tiny_config(steps=2, checkpoint_every=2), recipe)
    code, out, err = run(
        [
            "train",
            "images",
            "--config",
            str(recipe),
            "--prepared",
            str(tiny_prepared),
            "--run",
            str(tmp_path / "run"),
            "--quiet",
            "--threads",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "run" / "model" / "model.safetensors").exists() and str(tmp_path / "run" / "model") in out
    # Without --config the default settings are used; a missing prepared folder is refused in one line.
    code, _, err = run(
        ["train", "images", "--prepared", str(tmp_path / "missing"), "-r", str(tmp_path / "x"), "-q"], capsys
    )
    assert code == 2 and "no manifest" in err
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_structure_level_loss_by_hand():
    from guidegen.images.train import structure_level_loss

    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :, :2] = 1  # 8 pixels of class 1
    labels[0, :, 2:] = 2  # 8 pixels of class 2
    labels[1] = 255  # slice 1: unknown everywhere, contributes nothing
    error = torch.zeros(2, 1, 4, 4)
    error[0, 0, :, :2] = 1.0  # class 1: mean error 1
    error[0, 0, :, 2:] = torch.tensor([2.0, -2.0]).repeat(4, 1)  # class 2: large pixel errors, mean 0
    error[1] = 5.0
    assert float(structure_level_loss(error, labels, 18)) == pytest.approx((1.0**2 + 0.0**2) / 2)
    # A structure below min_pixels is skipped; no structure at all gives 0.
    assert float(structure_level_loss(error, labels, 18, min_pixels=9)) == 0.0
    labels[0, 0, 0] = 0  # background does not count: class 1 now has 7 pixels of error 1
    assert float(structure_level_loss(error, labels, 18, min_pixels=8)) == pytest.approx(0.0)
    # "body" is excluded by default (a scan-dependent mix, not a structure with a level).
    labels[0, 0, 0] = 1
    labels[0, :, 2:] = ID["body"]
    assert float(structure_level_loss(error, labels, 18)) == pytest.approx(1.0)
    assert float(structure_level_loss(error, labels, 18, exclude=())) == pytest.approx(0.5)


def test_level_loss_weight_adds_the_weighted_structure_level_loss(tiny_prepared):
    from dataclasses import replace

    from guidegen.images.model import assemble_inputs, mask_channels
    from guidegen.images.train import structure_level_loss

    base = tiny_config(p_phase_remap=0.0)
    data = SliceDataset(tiny_prepared, base)
    batch = data.make_batch(np.random.default_rng(0), torch.Generator().manual_seed(0), 4)
    g = torch.Generator().manual_seed(1)
    t, eps = torch.rand(4, generator=g) * 0.8 + 0.1, torch.randn(4, 1, 32, 32, generator=g)
    model = ConditionalImageGenerator(base)
    weighted = ConditionalImageGenerator(replace(base, level_loss_weight=3.0))
    weighted.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain = float(flow_matching_loss(model, batch, t, eps, "fp32"))
        both = float(flow_matching_loss(weighted, batch, t, eps, "fp32"))
        x_t = (1 - t.reshape(-1, 1, 1, 1)) * batch.target + t.reshape(-1, 1, 1, 1) * eps
        inputs = assemble_inputs(x_t, mask_channels(batch.ctx, base.num_classes), batch.prev, batch.has_prev, batch.z)
        error = model(inputs, t, batch.phase, batch.annotated, batch.text, batch.uncond) - (eps - batch.target)
        level = float(structure_level_loss(error, batch.ctx[:, base.context_radius], base.num_classes))
    assert level > 0
    assert both == pytest.approx(plain + 3.0 * level, rel=1e-4)


@pytest.mark.parametrize("slice_position", [True, False])
def test_slice_position_sets_the_z_channel_the_network_trains_on(tiny_prepared, slice_position):
    class Recorder(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.inputs = None

        def forward(self, inputs, t, phase, annotated, text, uncond):
            self.inputs = inputs
            return torch.zeros_like(inputs[:, :1])

    config = tiny_config(p_phase_remap=0.0, slice_position=slice_position)
    batch = SliceDataset(tiny_prepared, config).make_batch(
        np.random.default_rng(0), torch.Generator().manual_seed(0), 6
    )
    assert float(batch.z.max()) > 0  # the batch holds slices away from the bottom of their scans
    recorder = Recorder(config)
    flow_matching_loss(recorder, batch, torch.full((6,), 0.5), torch.zeros_like(batch.target), "fp32")
    z_channel = recorder.inputs[:, 1 + config.context_slices * (config.num_classes + 1) + 2]
    expected = batch.z if slice_position else torch.zeros_like(batch.z)
    assert torch.equal(z_channel[:, 0, 0], expected)
    assert torch.all(z_channel == z_channel[:, :1, :1])


@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_linear_label_interpolation_puts_label_edges_on_the_moved_ct_edges(interpolation):
    """With "linear", a moved label boundary is exactly where the bilinearly moved CT crosses halfway;
    nearest labels miss it on some pixels (the misalignment the option removes)."""
    from guidegen.images.dataset import SliceBatch, augment_slices
    from guidegen.labels.vocabulary import UNKNOWN

    h = w = 32
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 15.3) ** 2 + (xx - 16.7) ** 2 < 9.2**2
    ring = disc & ((yy - 15.3) ** 2 + (xx - 16.7) ** 2 >= 5.1**2)
    labels = np.where(ring, ID["liver"], np.where(disc, ID["spleen"], 0))
    # A CT whose value is a linear function of the one-hot label, so its halfway levels are label edges.
    ct = np.select([labels == ID["liver"], labels == ID["spleen"]], [0.5, 1.0], -1.0).astype(np.float32)
    b = 4
    batch = SliceBatch(
        target=torch.from_numpy(np.repeat(ct[None, None], b, 0)),
        ctx=torch.from_numpy(np.repeat(labels[None, None], b, 0)).long(),
        prev=torch.zeros(b, 1, h, w),
        has_prev=torch.ones(b),
        z=torch.zeros(b),
        phase=torch.zeros(b, dtype=torch.int64),
        annotated=torch.ones(b, 18),
        text=torch.zeros(b, 4),
        uncond=torch.zeros(b, dtype=torch.bool),
    )
    angle, zoom = np.deg2rad([7.0, -5.0, 13.0, 2.0]), np.array([1.05, 0.93, 1.0, 1.08])
    shift = np.array([[1.4, -2.2], [0.7, 3.1], [-1.9, 0.4], [12.0, 9.0]])  # mm; the last pushes the map out of view
    augment_slices(batch, np.ones(b, bool), angle, zoom, shift, (1.0, 1.0), interpolation)
    moved_ct, moved = batch.target[:, 0].numpy(), batch.ctx[:, 0].numpy()
    assert set(np.unique(moved)) <= {0, ID["liver"], ID["spleen"], UNKNOWN}
    assert (moved[3] == UNKNOWN).any()  # out-of-view pixels are unknown, not background
    in_view = moved != UNKNOWN
    # Outer edge (pixels mixing background −1 with liver 0.5): liver has the larger bilinear weight
    # exactly where the moved CT is above the halfway level −0.25.
    outer = in_view & (moved_ct < 0.5 - 1e-6)
    disagree = ((moved[outer] != 0) != (moved_ct[outer] > -0.25)).sum()
    if interpolation == "linear":
        assert disagree == 0
    else:
        assert disagree > 0


def test_unknown_label_interpolation_is_refused():
    with pytest.raises(ValueError, match="label_interpolation"):
        ImageGeneratorConfig(label_interpolation="cubic")
