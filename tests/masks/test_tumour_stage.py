"""The learned tumour stage (`guidegen.masks.tumour_stage`): its inputs, drawing, training and the
sampler's ``tumour_placement="learned"``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from guidegen.errors import InputError
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, TUMOUR_HOSTS, UNKNOWN
from guidegen.masks.sampler import VolumetricMaskSampler, draw_learned_tumours
from guidegen.masks.tumour_stage import (
    TumourStage,
    TumourStageConfig,
    centre_map,
    condition_channels,
    group_diameters,
    host_region,
    tumour_vector,
    window_around,
)
from guidegen.masks.tumour_stage_train import TumourExamples, train_tumour_stage
from guidegen.text.attributes import Attributes, Tumour
from tests.conftest import REPO
from tests.pipeline.conftest import tiny_mask_config


def tiny_stage_config(**changes) -> TumourStageConfig:
    options = dict(shape=(16, 16, 8), spacing=(24.0, 24.0, 40.0), window=(8, 8, 8), channels=(8, 16))
    return TumourStageConfig(**{**options, **changes})


def toy_map(shape=(16, 16, 8)) -> Volume:
    """Body everywhere, a liver block on the patient's right and a spleen block on the left."""
    array = np.full(shape, ID["body"], dtype=np.uint8)
    array[:, :, -1] = ID["background"]
    array[1:6, 3:12, 1:6] = ID["liver"]
    array[11:15, 5:10, 2:6] = ID["spleen"]
    affine = np.diag([24.0, 24.0, 40.0, 1.0])
    return Volume(array, affine, "labels")


def test_the_tumour_vector_holds_host_size_and_count():
    v = tumour_vector("liver", 30.0, 3)
    assert v[TUMOUR_HOSTS.index("liver")] == 1 and v[: len(TUMOUR_HOSTS)].sum() == 1
    i = len(TUMOUR_HOSTS)
    assert v[i] == 1 and v[i + 1] == pytest.approx(0.0) and v[i + 2] == pytest.approx(0.75)
    unknown = tumour_vector("spleen", None, None)  # no size stated; "multiple" reads as two
    assert unknown[i] == 0 and unknown[i + 1] == 0 and unknown[i + 2] == pytest.approx(0.5)
    assert tumour_vector("colon", 60.0, 9)[i + 1] == pytest.approx(np.log(2.0))
    assert tumour_vector("colon", 60.0, 9)[i + 2] == 1.0


def test_condition_channels_split_the_map_and_the_window_stays_inside():
    labels = toy_map()
    labels.array[0, 0, 0] = UNKNOWN
    host = labels.array == ID["liver"]
    channels = condition_channels(labels, host)
    assert channels.shape == (4, 16, 16, 8)
    assert np.array_equal(channels[0] == 1, host)
    assert channels.sum(0).max() == 1  # each voxel is one thing only
    assert channels[3, 0, 0, 0] == 1 and channels[3, :, :, -1].all()  # unknown and background: outside
    assert channels[2][labels.array == ID["spleen"]].all()  # another organ: not where a tumour goes
    assert channels[1][labels.array == ID["body"]].all()  # body: soft tissue the tumour may reach
    box = window_around(host, (8, 8, 8))
    assert [(s.start, s.stop) for s in box] == [(0, 8), (3, 11), (0, 8)]
    corner = np.zeros_like(host)
    corner[15, 15, 7] = True
    assert [(s.start, s.stop) for s in window_around(corner, (8, 8, 8), jitter=np.array([3, 3, 3]))] == [
        (8, 16),
        (8, 16),
        (0, 8),
    ]


def test_the_host_region_is_the_stated_colon_segment(real):
    from guidegen.io.nifti import read_nifti
    from guidegen.labels.remap import remap_labels

    raw = read_nifti(real / "totalseg-dataset" / "s0001" / "labels.nii.gz", kind="labels")
    labels = raw.with_array(remap_labels(raw.array, "totalsegmentator", affine=raw.affine)[0])
    colon = labels.array == ID["colon"]
    sigmoid = host_region(labels, "colon", "sigmoid")
    caecum = host_region(labels, "colon", "caecum")
    assert 0 < sigmoid.sum() < colon.sum() and 0 < caecum.sum() < colon.sum()
    assert not (sigmoid & caecum).any() and (sigmoid <= colon).all()
    # The caecum lies on the patient's right (RAS+: larger x), the sigmoid on the left.
    x_world = lambda m: labels.world_coordinates(np.argwhere(m))[:, 0].mean()  # noqa: E731
    assert x_world(caecum) > x_world(sigmoid)
    assert np.array_equal(host_region(labels, "colon"), colon)
    assert np.array_equal(host_region(labels, "spleen", None), labels.array == ID["spleen"])


def test_config_is_checked():
    with pytest.raises(ValueError, match="window"):
        tiny_stage_config(window=(7, 8, 8))  # not divisible by 2 ** (levels - 1)
    with pytest.raises(ValueError, match="fit"):
        tiny_stage_config(window=(8, 8, 16))
    with pytest.raises(ValueError, match="p_whole_host"):
        tiny_stage_config(p_whole_host=1.5)
    with pytest.raises(ValueError, match="threshold"):
        tiny_stage_config(threshold=1.0)


def test_group_diameters_keep_the_stated_one_as_the_largest():
    rng = np.random.default_rng(0)
    assert group_diameters("liver", 40.0, 1, rng) == [40.0]
    three = group_diameters("liver", 40.0, 3, rng)
    assert three[0] == 40.0 and len(three) == 3 and all(10.0 <= d <= 40.0 for d in three[1:])
    assert len(group_diameters("liver", 40.0, None, rng)) == 2  # "multiple": two
    unstated = [group_diameters("pancreas", None, 1, rng)[0] for _ in range(50)]
    assert 10.0 <= min(unstated) and max(unstated) <= 40.0 and np.std(unstated) > 3  # the training range


def test_the_centre_map_peaks_at_the_centre():
    m = centre_map((8, 8, 8), np.array([2, 5, 7]))
    assert m.shape == (8, 8, 8) and m[2, 5, 7] == 1.0 and np.unravel_index(m.argmax(), m.shape) == (2, 5, 7)
    assert m[3, 5, 7] == pytest.approx(np.exp(-0.5))


def test_drawing_changes_only_tumour_voxels_inside_the_window_and_is_seeded(tmp_path):
    torch.manual_seed(0)
    stage = TumourStage(tiny_stage_config())
    with torch.no_grad():  # MONAI zero-initialises the output convs: make the untrained nets say something
        for p in stage.model.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    labels = toy_map()
    tumours = (Tumour(organ="liver", diameter_mm=40.0), Tumour(organ="pancreas", diameter_mm=20.0))
    out, record = stage.draw(labels, tumours, seed=3)
    changed = out.array != labels.array
    assert changed.any() and (out.array[changed] == ID["tumour"]).all()
    box = window_around(labels.array == ID["liver"], (8, 8, 8))
    outside = np.ones(labels.shape, bool)
    outside[box] = False
    assert not (changed & outside).any()
    assert record["groups"][0]["organ"] == "liver" and record["groups"][0]["drawn"]
    assert record["groups"][1] == {"organ": "pancreas", "drawn": False, "why": "no such host organ in the map"}
    assert record["groups"][0]["voxels"] >= int(changed.sum())
    again, _ = stage.draw(labels, tumours, seed=3)
    assert np.array_equal(again.array, out.array)
    stage.save_pretrained(tmp_path / "tumour_stage")
    loaded, _ = TumourStage.from_pretrained(tmp_path / "tumour_stage").draw(labels, tumours, seed=3)
    assert np.array_equal(loaded.array, out.array)
    with pytest.raises(InputError, match="grid"):
        stage.draw(Volume(np.zeros((8, 8, 8), np.uint8), np.eye(4), "labels"), tumours, seed=0)


def test_the_sampler_draws_learned_tumours_only_with_a_stage(tmp_path):
    torch.manual_seed(0)
    sampler = VolumetricMaskSampler(tiny_mask_config())
    sampler.save_pretrained(tmp_path / "model" / "mask_sampler")
    loaded = VolumetricMaskSampler.from_pretrained(tmp_path / "model" / "mask_sampler")
    calls = []
    with pytest.raises(InputError, match="tumour stage"):  # refused before any sampling step
        loaded.sample_masks(
            "4 cm tumour in the liver", seed=0, tumour_placement="learned", callback=lambda i, n: calls.append(i)
        )
    assert calls == []
    TumourStage(tiny_stage_config()).save_pretrained(tmp_path / "model" / "tumour_stage")
    kwargs = dict(tumour_placement="learned", organ_sizes="network", aorta_placement="network")
    (volume,) = loaded.sample_masks("4 cm tumour in the liver", seed=0, **kwargs)
    record = volume.meta["tumour_placement"]
    assert record["mode"] == "learned" and record["stated"] and len(record["groups"]) == 1
    (silent,) = loaded.sample_masks("CT of the abdomen", seed=0, **kwargs)
    assert "groups" not in silent.meta["tumour_placement"] and not (silent.array == ID["tumour"]).any()
    with pytest.raises(ValueError, match="grid"):
        loaded.use_tumour_stage(TumourStage(tiny_stage_config(shape=(16, 16, 16))))


def test_learned_placement_removes_the_networks_tumours_first():
    labels = toy_map()
    labels.array[2, 5, 3] = ID["tumour"]
    labels.array[12, 6, 3] = ID["tumour"]
    stage = TumourStage(tiny_stage_config())  # untrained: the zero output conv (p = 0.5) draws nothing
    out = draw_learned_tumours(labels, Attributes(tumours=()), seed=0, stage=stage)
    assert not (out.array == ID["tumour"]).any()
    assert out.array[2, 5, 3] == ID["liver"] and out.array[12, 6, 3] == ID["spleen"]
    assert out.meta["tumour_placement"] == {"mode": "learned", "stated": True, "removed_voxels": 2}


def test_training_examples_and_resume(tmp_path):
    config = tiny_stage_config(
        shape=(24, 24, 16),
        spacing=(16.0, 16.0, 20.0),
        window=(16, 16, 16),
        steps=3,
        batch_size=2,
        checkpoint_every=2,
        pool_size=2,
        prepared_cache=str(tmp_path / "cache"),
        data_sources=("data/real/totalseg-example-a",),
        min_extent_mm=100.0,
    )
    run = train_tumour_stage(config, tmp_path / "run", progress=False, max_steps=2, root=REPO)
    assert not (run / "model").exists() and (run / "pool.npz").exists()
    train_tumour_stage(config, tmp_path / "run", progress=False, root=REPO)
    lines = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all(line["site"] > 0 and 0 < line["dice"] <= 1 and line["bce"] > 0 for line in lines)
    stage = TumourStage.from_pretrained(run / "model")
    assert stage.config == config
    # The examples: the map before insertion as input; the group's centres as the site target; one
    # tumour's centre, diameter and voxels for the shape network; all in the window.
    examples = TumourExamples(np.load(run / "pool.npz")["pool"], config)
    for i in range(6):
        item = examples[i]
        assert item["condition"].shape == (4, 16, 16, 16) and item["target"].shape == (16, 16, 16)
        assert item["host"] in TUMOUR_HOSTS
        host, target, mask = item["condition"][0] == 1, item["target"], item["mask"] == 1
        assert (target & host).any()  # a tumour sits in its host region
        assert mask.any() and (mask <= target).all()  # the shape target is one of the group's tumours
        assert item["site"].sum() == pytest.approx(1.0) or item["site"].sum() == 0
        assert target[item["site"] > 0].all()  # every centre lies in a tumour
        centre = np.unravel_index(item["centre"].argmax(), item["centre"].shape)
        assert mask[centre]  # the shape network is told the centre of the tumour it must draw
        assert item["shape_vector"][len(TUMOUR_HOSTS)] == 1  # its diameter is always known
    with pytest.raises(InputError, match="another configuration"):
        train_tumour_stage(replace(config, lr=0.5), tmp_path / "run", progress=False, root=REPO)


def test_command_line_refuses_bad_recipes_in_one_line(tmp_path, capsys):
    from guidegen.config import save_config
    from tests.test_cli import run

    code, _, err = run(["train", "tumours", "--config", str(tmp_path / "missing.json"), "-q"], capsys)
    assert code == 2 and "missing.json" in err and "Traceback" not in err
    recipe = tmp_path / "r.json"
    save_config(tiny_stage_config(), recipe)
    recipe.write_text(recipe.read_text().replace('"p_whole_host": 0.3', '"p_whole_host": 3.0'))
    code, _, err = run(["train", "tumours", "--config", str(recipe), "--run", str(tmp_path / "run"), "-q"], capsys)
    assert code == 2 and "p_whole_host" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
