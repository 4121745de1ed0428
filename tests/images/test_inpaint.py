"""Inpainting a real CT (issue 25): the known voxels follow the real CT along the flow, the slice
autoregression is fed real slices, and nothing outside the edit region changes.

`sample_inpainted` is tested with a spy network (it records what it is shown); `inpaint_ct` with the
`ClassOracle` (each class drawn at a fixed HU) on a real bundled scan.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidegen.diffusion.flow import FlowConfig
from guidegen.images.inpaint import edit_region, inpaint_ct, sample_inpainted
from guidegen.io.nifti import read_nifti
from guidegen.labels.vocabulary import ID
from tests.images.conftest import tiny_config


class Spy(torch.nn.Module):
    """A velocity network that records its inputs and returns a fixed random field per call."""

    def __init__(self):
        super().__init__()
        self.config = tiny_config()
        self.calls: list[tuple[torch.Tensor, float]] = []
        self.generator = torch.Generator().manual_seed(5)

    def forward(self, inputs, t, phase, annotated, text, uncond):
        self.calls.append((inputs.clone(), float(t[0])))
        return torch.randn(inputs.shape[0], 1, *inputs.shape[2:], generator=self.generator)


def _problem(z: int = 6, free_slices=(2, 3)):
    n, x, y = 1, 32, 32
    labels = torch.zeros(n, x, y, z, dtype=torch.int64)
    labels[:, 8:24, 8:24] = ID["liver"]
    known = torch.linspace(-0.5, 0.5, x * y * z).reshape(n, x, y, z)
    keep = torch.ones(n, x, y, z, dtype=torch.bool)
    for k in free_slices:
        keep[:, 12:20, 12:20, k] = False
    return labels, known, keep


def _sample(spy, labels, known, keep, steps=3):
    cfg = spy.config
    return sample_inpainted(
        spy,
        labels,
        known,
        keep,
        flow=FlowConfig(),
        steps=steps,
        guidance=1.0,
        phase=torch.zeros(1, dtype=torch.long),
        annotated=torch.ones(1, cfg.num_classes),
        text=None,
        generators=[torch.Generator().manual_seed(0)],
        network=spy,
        noise_correlation=0.5,
    )


def test_known_voxels_follow_the_real_ct_along_the_flow_and_end_exactly_on_it():
    spy = Spy()
    labels, known, keep = _problem()
    out = _sample(spy, labels, known, keep)
    assert torch.equal(out[keep], known[keep])  # bit for bit
    assert not torch.allclose(out[~keep], known[~keep])  # the free voxels were drawn
    # Only the two edited slices call the network, 3 steps each.
    assert len(spy.calls) == 6
    # Within a slice the first call sees x_1 = ε; later calls see (1 − t)·known + t·ε on the known voxels.
    for first in (0, 3):
        noise = spy.calls[first][0][:, :1]
        k = 2 if first == 0 else 3
        for inputs, t in spy.calls[first + 1 : first + 3]:
            expected = (1 - t) * known[..., k].unsqueeze(1) + t * noise
            keep_k = keep[..., k].unsqueeze(1)
            assert torch.allclose(inputs[:, :1][keep_k], expected[keep_k], atol=1e-6)
            assert not torch.allclose(inputs[:, :1][~keep_k], expected[~keep_k], atol=1e-3)


def test_the_slice_autoregression_is_fed_the_real_neighbouring_slice():
    spy = Spy()
    labels, known, keep = _problem(free_slices=(3,))
    _sample(spy, labels, known, keep)
    cfg = spy.config
    prev_channel = 1 + (2 * cfg.context_radius + 1) * (cfg.num_classes + 1)
    inputs, _ = spy.calls[0]
    assert torch.equal(inputs[:, prev_channel], known[..., 2])  # slice 2 is real: it is the previous slice
    assert bool((inputs[:, prev_channel + 1] == 1).all())  # and flagged as present


def test_the_edit_region_is_the_change_plus_the_margin_in_mm():
    changed = np.zeros((30, 30, 10), bool)
    changed[14:16, 14:16, 5] = True
    region = edit_region(changed, (1.0, 1.0, 4.0), margin_mm=6.0)
    full = region.full(changed.shape)
    assert full[15, 15 + 6, 5] and not full[15, 15 + 7, 5]  # 6 mm in-plane (6 voxels of 1 mm)
    assert full[15, 15, 5 + 1] and not full[15, 15, 5 + 2]  # 4 mm slices: one slice above, not two
    weight = np.zeros(changed.shape, np.float32)
    weight[region.box] = region.weight
    assert weight[15, 15, 5] == 1.0 and weight[15, 15 + 3, 5] == 1.0  # full up to half the margin
    assert 0.0 < weight[15, 15 + 5, 5] < 1.0 and weight[15, 15 + 7, 5] == 0.0
    with pytest.raises(ValueError, match="margin_mm"):
        edit_region(changed, (1.0, 1.0, 4.0), margin_mm=0.0)


@pytest.fixture(scope="module")
def real_scan(real):
    ct = read_nifti(real / "totalseg-example-a" / "ct.nii.gz", kind="ct")
    from guidegen.pipeline.folders import load_labels

    labels, _ = load_labels(real / "totalseg-example-a" / "labels.nii.gz")
    return ct, labels


def _tumour_ball(labels, host: str, radius_mm: float):
    """A ball of tumour (``radius_mm``, 3 mm voxels) around the middle voxel of ``host``, inside it:
    (the ball's mask, its centre voxel, the edited label array)."""
    inside = labels.array == ID[host]
    centre = np.argwhere(inside)[int(inside.sum()) // 2]
    ii = np.indices(labels.shape).reshape(3, -1).T
    ball = np.zeros(labels.shape, bool)
    ball.reshape(-1)[np.linalg.norm((ii - centre) * 3.0, axis=1) <= radius_mm] = True
    ball &= inside
    edited = labels.array.copy()
    edited[ball] = ID["tumour"]
    return ball, centre, edited


def test_a_real_scan_is_untouched_outside_the_region_and_drawn_as_labelled_inside(oracle_model, real_scan):
    ct, labels = real_scan
    ball, centre, edited = _tumour_ball(labels, "liver", 10.0)
    out, region, record = inpaint_ct(
        oracle_model,
        ct,
        labels.with_array(edited),
        ball,
        new_tumour=ball,
        seed=0,
        texture=False,
        levels=False,
    )
    full = region.full(ct.shape)
    assert out.same_grid(ct) and out.array.dtype == ct.array.dtype
    assert np.array_equal(out.array[~full], ct.array[~full])  # bit for bit outside region + margin
    assert not np.array_equal(out.array[full], ct.array[full])
    # The oracle draws tumour at 40 HU: the tumour's centre (weight 1, away from the 12 mm model
    # grid's blurred edges) is drawn at about that level, the real liver around it was ~44 HU.
    assert abs(float(out.array[tuple(centre)]) - 40.0) <= 15.0
    assert record["phase"] is not None and record["phase_estimated"]
    # The tumour level is set by host and phase when asked.
    out2, _, record2 = inpaint_ct(
        oracle_model, ct, labels.with_array(edited), ball, new_tumour=ball, seed=0, texture=False
    )
    (entry,) = record2["tumour_levels"]
    assert entry["host"] == "liver" and entry["target_hu"] == pytest.approx(float(out2.array[ball].mean()), abs=12.0)


def test_an_older_model_sees_the_scan_s_unlabelled_tissue_as_body_not_air(monkeypatch, real_scan):
    # A model of 18 classes (the shipped generator) reads vocabulary-2 muscles as "body".
    # The body outline must be derived before that folding: a folded map has "body" voxels, and a
    # map with body voxels got no derived outline, so its fat (background in a TotalSegmentator
    # map) was shown to the generator as background, drawn as air.
    import guidegen.images.inpaint as inpaint
    from guidegen.images.hu import unit_to_hu
    from tests.images.conftest import ClassOracle, tiny_config

    ct, labels = real_scan
    # Its lung bases are drawn as air on purpose (vocabulary.DRAWN_AS; the lung's partial-volume rim
    # is above -500 HU): relabelled here as another vocabulary-2 tissue that folds to body (muscle),
    # so only fat wrongly left as background could count.
    assert (labels.array == ID["lung"]).any()
    relabelled = np.where(labels.array == ID["lung"], ID["muscle"], labels.array)
    labels = labels.with_array(relabelled.astype(labels.array.dtype))
    seen = {}
    sample = inpaint.sample_inpainted

    def spy(model, labels_t, known, keep, **kw):
        seen["labels"], seen["known"] = labels_t[0].numpy(), known[0].numpy()
        return sample(model, labels_t, known, keep, **kw)

    monkeypatch.setattr(inpaint, "sample_inpainted", spy)
    liver = np.argwhere(labels.array == ID["liver"])
    c = liver[len(liver) // 2]
    changed = np.zeros(labels.shape, bool)
    changed[c[0] - 2 : c[0] + 3, c[1] - 2 : c[1] + 3, c[2] - 2 : c[2] + 3] = True
    model = ClassOracle(tiny_config(num_classes=18)).eval()
    inpaint_ct(model, ct, labels, changed, seed=0, texture=False, levels=False)
    tissue = unit_to_hu(seen["known"]) > -500  # the real scan's tissue on the model's slab
    assert tissue.sum() > 1000
    assert (seen["labels"][tissue] == ID["background"]).mean() < 0.01


def test_an_edit_keeps_the_unchanged_voxels_of_a_hollow_organ_real(oracle_model, real_scan):
    # A tumour in the colon: the colon's own gas, contents and wall around it stay the real scan's
    # (no level offset joins a generated lumen to a real one); the tumour is drawn.
    ct, labels = real_scan
    colon = labels.array == ID["colon"]
    ball, _, edited = _tumour_ball(labels, "colon", 8.0)
    out, region, record = inpaint_ct(
        oracle_model, ct, labels.with_array(edited), ball, new_tumour=ball, seed=0, texture=False, levels=False
    )
    full = region.full(ct.shape)
    kept = full & colon & ~ball
    assert kept.sum() > 20
    assert np.array_equal(out.array[kept], ct.array[kept])
    assert record["seam"]["real_voxels_kept"] >= int(kept.sum())
    assert not np.array_equal(out.array[ball], ct.array[ball])


def test_a_tumour_in_a_host_without_a_level_is_not_drawn_below_soft_tissue(oracle_model, real_scan):
    from guidegen.images.levels import SOLID_TUMOUR_FLOOR_HU

    ct, labels = real_scan
    ball, centre, edited = _tumour_ball(labels, "kidney_left", 10.0)
    # The oracle draws tumour at 40 HU, below the floor: raised to it as a whole.
    out, _, record = inpaint_ct(
        oracle_model, ct, labels.with_array(edited), ball, new_tumour=ball, seed=0, texture=False
    )
    (entry,) = record["tumour_levels"]
    assert entry["host"] == "kidney_left" and entry["rule"] == "soft-tissue floor"
    assert entry["target_hu"] == pytest.approx(SOLID_TUMOUR_FLOOR_HU, abs=0.1)
    assert float(out.array[tuple(centre)]) >= SOLID_TUMOUR_FLOOR_HU - 12.0


def test_a_tumour_moved_with_its_host_keeps_the_soft_tissue_floor():
    from guidegen.images.inpaint import _join_to_real
    from guidegen.images.levels import SOLID_TUMOUR_FLOOR_HU

    shape, spacing = (40, 40, 12), (1.0, 1.0, 3.0)
    labels = np.full(shape, ID["spleen"], np.uint8)
    tumour = np.zeros(shape, bool)
    tumour[15:25, 15:25, 4:8] = True
    labels[tumour] = ID["tumour"]
    region = edit_region(tumour, spacing, margin_mm=6.0)
    box = region.box
    generated = np.where(labels == ID["spleen"], 100.0, 60.0).astype(np.float32)[box]
    real = np.full(shape, 40.0, np.float32)[box]  # the real spleen is 60 HU darker than drawn
    entry = {"voxels": int(tumour.sum()), "host": "spleen", "left": "no level"}  # drawn above the floor
    out, _, record = _join_to_real(generated, real, labels[box], region, spacing, tumour, [entry])
    inner = tumour[box] & (np.indices(generated.shape)[2] > 0)
    assert float(out[inner].mean()) == pytest.approx(SOLID_TUMOUR_FLOOR_HU, abs=1.0)  # not 0 HU
    assert record["tumours_raised_to_floor"] == 1
    spleen_near = region.region & (labels[box] == ID["spleen"])
    assert abs(float(out[spleen_near].mean()) - 40.0) < 5.0  # the host itself joined to the real level
