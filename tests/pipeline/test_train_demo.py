"""`guidegen train demo` chains the shipped mask sampler's two recipes (trainings replaced by fakes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import guidegen.pipeline.train_demo as train_demo_module
from guidegen.errors import InputError
from guidegen.pipeline.train_demo import FINETUNE_STEPS_BESIDE_IMAGES, MASK_FINETUNE_RECIPE, MASK_RECIPE, train_demo


class _FakeTraining:
    """Stands in for a `guidegen train …` process: writes its run's model folder at once."""

    started: list[tuple[str, list[str], str]] = []
    fail: set[str] = set()

    def __init__(self, cmd, env, cwd, stdout, stderr):
        run = Path(cmd[cmd.index("--run") + 1])
        recipe = json.loads(Path(cmd[cmd.index("--config") + 1]).read_text())
        self.name = run.name
        _FakeTraining.started.append((run.name, cmd, env["OMP_NUM_THREADS"]))
        (run / "model").mkdir(parents=True, exist_ok=True)
        (run / "model" / "model.safetensors").write_text(run.name)
        (run / "model" / "config.json").write_text(json.dumps(recipe))

    def wait(self):
        return 1 if self.name in _FakeTraining.fail else 0


@pytest.fixture
def fake_training(monkeypatch):
    _FakeTraining.started, _FakeTraining.fail = [], set()
    monkeypatch.setattr(train_demo_module.subprocess, "run", lambda *a, **k: None)  # `guidegen prepare`
    monkeypatch.setattr(train_demo_module.subprocess, "Popen", _FakeTraining)
    return _FakeTraining


def test_train_demo_fine_tunes_the_first_mask_sampler_with_the_totalseg_recipe(fake_training, tmp_path):
    runs = tmp_path / "runs"
    out = train_demo(tmp_path / "model", runs, data=tmp_path, log=lambda *a: None)
    names = [name for name, _, _ in fake_training.started]
    assert names == ["mask_sampler", "image_generator", "mask_sampler_finetune", "mask_sampler_finetune"]
    # The fine-tune's first steps run with one thread beside the image generator, the rest with two.
    _, beside_cmd, beside_threads = fake_training.started[2]
    assert beside_cmd[beside_cmd.index("--threads") + 1] == "1" and beside_threads == "1"
    assert beside_cmd[beside_cmd.index("--max-steps") + 1] == str(FINETUNE_STEPS_BESIDE_IMAGES)
    _, finetune_cmd, threads = fake_training.started[3]
    assert finetune_cmd[finetune_cmd.index("--threads") + 1] == "2" and threads == "2"
    assert "--max-steps" not in finetune_cmd
    assert beside_cmd[beside_cmd.index("--run") + 1] == finetune_cmd[finetune_cmd.index("--run") + 1]
    chained = json.loads(Path(finetune_cmd[finetune_cmd.index("--config") + 1]).read_text())
    recipe = json.loads(MASK_FINETUNE_RECIPE.read_text())
    assert chained["init_from"] == str((runs / "mask_sampler" / "model").resolve()) != recipe["init_from"]
    assert {k: v for k, v in chained.items() if k != "init_from"} == {
        k: v for k, v in recipe.items() if k != "init_from"
    }
    assert 0 < FINETUNE_STEPS_BESIDE_IMAGES < recipe["steps"]
    # The model ships the fine-tune, and model.json names the chain of recipes it came from.
    assert (out / "mask_sampler" / "model.safetensors").read_text() == "mask_sampler_finetune"
    entry = json.loads((out / "model.json").read_text())["recipes"]["mask_sampler"]
    assert entry["file"] == MASK_FINETUNE_RECIPE.name and entry["init_from"]["file"] == MASK_RECIPE.name
    assert "init_from" not in entry["init_from"]


@pytest.mark.parametrize("done", [300, FINETUNE_STEPS_BESIDE_IMAGES, 1700])
def test_a_rerun_splits_the_fine_tune_at_the_same_step(fake_training, tmp_path, done):
    """An interrupted `train demo` resumes: the one-thread part stops at the same step as before."""
    runs = tmp_path / "runs"
    checkpoint = runs / "mask_sampler_finetune" / "checkpoints" / f"step_{done:08d}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checksums.json").write_text("{}")
    train_demo(tmp_path / "model", runs, data=tmp_path, log=lambda *a: None)
    finetune = [cmd for name, cmd, _ in fake_training.started if name == "mask_sampler_finetune"]
    if done < FINETUNE_STEPS_BESIDE_IMAGES:
        assert finetune[0][finetune[0].index("--max-steps") + 1] == str(FINETUNE_STEPS_BESIDE_IMAGES - done)
    assert len(finetune) == (2 if done < FINETUNE_STEPS_BESIDE_IMAGES else 1)
    assert "--max-steps" not in finetune[-1]


def test_train_demo_without_a_fine_tune_ships_the_first_mask_sampler(fake_training, tmp_path):
    out = train_demo(tmp_path / "model", tmp_path / "runs", data=tmp_path, mask_finetune_recipe=None, log=print)
    assert [name for name, _, _ in fake_training.started] == ["mask_sampler", "image_generator"]
    assert (out / "mask_sampler" / "model.safetensors").read_text() == "mask_sampler"
    assert json.loads((out / "model.json").read_text())["recipes"]["mask_sampler"]["file"] == MASK_RECIPE.name


def test_train_demo_starts_no_fine_tune_when_the_first_mask_sampler_fails(fake_training, tmp_path):
    fake_training.fail = {"mask_sampler"}
    with pytest.raises(InputError, match="mask_sampler"):
        train_demo(tmp_path / "model", tmp_path / "runs", data=tmp_path, log=lambda *a: None)
    assert [name for name, _, _ in fake_training.started] == ["mask_sampler", "image_generator"]
    assert not (tmp_path / "model").exists()


def test_train_demo_stops_before_the_two_thread_fine_tune_when_the_image_generator_fails(fake_training, tmp_path):
    fake_training.fail = {"image_generator"}
    with pytest.raises(InputError, match="image_generator"):
        train_demo(tmp_path / "model", tmp_path / "runs", data=tmp_path, log=lambda *a: None)
    names = [name for name, _, _ in fake_training.started]
    assert names == ["mask_sampler", "image_generator", "mask_sampler_finetune"]  # the one-thread part only
    assert not (tmp_path / "model").exists()


def test_a_fine_tune_recipe_needs_init_from(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"_class": "MaskSamplerConfig", "steps": 3}))
    with pytest.raises(InputError, match="init_from"):
        train_demo_module.chained_recipe(recipe, tmp_path, tmp_path / "chained.json")
