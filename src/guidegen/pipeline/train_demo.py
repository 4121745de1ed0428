"""`guidegen train demo`: the shipped default model, reproducibly, from the bundled real data.

Recipes (recipes/mask_sampler_demo.json, recipes/mask_sampler_totalseg.json,
recipes/image_generator_demo.json):

1. ``guidegen prepare data/real --out RUNS/prepared`` (3 mm, 128² in-plane) for the image generator;
   the mask sampler prepares its own 8 mm cache from its config's ``data_sources``.
2. The mask sampler's first recipe and the image generator at once, one CPU thread each (on 2 cores
   this is faster than one after the other with 2 threads each: neither network keeps two threads
   busy).
3. The shipped mask sampler is a fine-tune of that first one on the TotalSegmentator maps: the
   fine-tune recipe (written as run to ``RUNS/mask_sampler_finetune.json``, its ``init_from``
   pointed at the first run's model) starts as soon as the first mask run ends, with one thread,
   beside the image generator, which trains longer; its first `FINETUNE_STEPS_BESIDE_IMAGES` steps
   use the core the first mask run freed. After those steps and the image generator have both
   ended, it resumes from its checkpoint with 2 threads. The split is a fixed step count, not
   "until the image generator ends", so the weights never depend on which training was faster.
4. The two EMA models are copied into ``OUT/mask_sampler`` and ``OUT/image_generator`` with
   ``OUT/model.json`` (model id, version, recipes, data, steps, seconds).

Each training resumes from its last checkpoint, so an interrupted `train demo` continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from guidegen import __version__
from guidegen.errors import InputError
from guidegen.io.atomic import atomic_dir
from guidegen.io.layouts import read_json_object
from guidegen.paths import REPO_ROOT
from guidegen.training import latest_step

REPO = REPO_ROOT  # the recipes and data of a source checkout
MASK_RECIPE = REPO / "recipes" / "mask_sampler_demo.json"
MASK_FINETUNE_RECIPE = REPO / "recipes" / "mask_sampler_totalseg.json"
IMAGE_RECIPE = REPO / "recipes" / "image_generator_demo.json"
DATA = REPO / "data" / "real"
#: Fine-tune steps run with one thread beside the image generator (step 3 of the module's docstring).
#: On an AVX2-only CPU (fp32) the image generator trains 26-28 min longer than the first mask run, 650-800
#: one-thread fine-tune steps; natively (bf16) about as long (`docs/results/train_demo_time.txt`).
FINETUNE_STEPS_BESIDE_IMAGES = 600


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train_command(stage: str, recipe: Path, run: Path, threads: int, prepared: Path | None = None) -> list[str]:
    """``guidegen train STAGE`` of ``recipe`` into ``run`` with ``threads`` threads, as this module runs it."""
    command = [sys.executable, "-m", "guidegen", "train", stage, "--config", str(recipe), "--run", str(run)]
    if prepared is not None:
        command += ["--prepared", str(prepared)]
    return [*command, "--threads", str(threads), "-q"]


def _start(name: str, cmd: list[str], runs: Path, env: dict[str, str], log) -> tuple[subprocess.Popen, Any]:
    """Start one training, logging to ``RUNS/NAME.log``."""
    runs.mkdir(parents=True, exist_ok=True)
    log(f"training {name}: {' '.join(cmd[2:])} (log: {runs / (name + '.log')})")
    handle = open(runs / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115 (closed in _finish)
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT), handle


def _finish(running: dict[str, tuple[subprocess.Popen, Any]]) -> list[str]:
    """Wait for the started trainings; the names of those that failed."""
    failed = []
    for name, (proc, handle) in running.items():
        if proc.wait() != 0:
            failed.append(name)
        handle.close()
    return failed


def _raise_if_failed(failed: list[str], runs: Path) -> None:
    if failed:
        raise InputError(runs, f"training failed for {', '.join(failed)}; see the .log files there (rerun to resume)")


def _run_together(jobs: dict[str, list[str]], runs: Path, env: dict[str, str], log) -> None:
    """Run the commands at once, each logging to ``RUNS/NAME.log``; an error names the failed ones."""
    _raise_if_failed(_finish({name: _start(name, cmd, runs, env, log) for name, cmd in jobs.items()}), runs)


def chained_recipe(recipe: Path, init_from: Path, out: Path) -> Path:
    """Write ``recipe`` with its ``init_from`` replaced by the model folder ``init_from`` to ``out``."""
    config = read_json_object(recipe)
    if "init_from" not in config:
        raise InputError(recipe, "is not a fine-tune recipe (no init_from)")
    config["init_from"] = str(Path(init_from).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return out


def train_demo(
    out: str | Path = REPO / "models" / "default",
    runs: str | Path = REPO / "runs" / "demo",
    *,
    data: str | Path = DATA,
    mask_recipe: str | Path = MASK_RECIPE,
    mask_finetune_recipe: str | Path | None = MASK_FINETUNE_RECIPE,
    image_recipe: str | Path = IMAGE_RECIPE,
    model_id: str = "guidegen-demo",
    overwrite: bool = False,
    log=print,
) -> Path:
    """Prepare, train both stages (the mask sampler in two recipes), and assemble the model folder ``out``.

    ``mask_finetune_recipe=None`` ships the first mask sampler recipe's model as it is.
    """
    out, runs, data = Path(out), Path(runs), Path(data)
    mask_recipe, image_recipe = Path(mask_recipe), Path(image_recipe)
    finetune = None if mask_finetune_recipe is None else Path(mask_finetune_recipe)
    for recipe in (mask_recipe, image_recipe, finetune):
        if recipe is not None and not recipe.is_file():
            raise InputError(recipe, "recipe not found")
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace the model)")
    started = time.perf_counter()
    prepared = runs / "prepared"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log(f"preparing {data} → {prepared}")
    subprocess.run(
        [sys.executable, "-m", "guidegen", "prepare", str(data), "--out", str(prepared), "-q"],
        check=True,
        env=env,
        cwd=REPO,
    )
    first_masks = train_command("masks", mask_recipe, runs / "mask_sampler", 1)
    first = {"mask_sampler": _start("mask_sampler", first_masks, runs, env, log)}
    image_job = train_command("images", image_recipe, runs / "image_generator", 1, prepared)
    beside_images = {"image_generator": _start("image_generator", image_job, runs, env, log)}
    failed = _finish(first)
    mask_model = runs / "mask_sampler" / "model"
    mask_recipes = [mask_recipe]
    finetune_run = runs / "mask_sampler_finetune"
    chained = None if finetune is None else chained_recipe(finetune, mask_model, runs / "mask_sampler_finetune.json")
    beside = FINETUNE_STEPS_BESIDE_IMAGES - latest_step(finetune_run)  # a rerun resumes where the last one stopped
    if chained is not None and not failed and beside > 0:
        cmd = [*train_command("masks", chained, finetune_run, 1), "--max-steps", str(beside)]
        beside_images["mask_sampler_finetune"] = _start("mask_sampler_finetune", cmd, runs, env, log)
    _raise_if_failed(failed + _finish(beside_images), runs)
    if chained is not None:
        job = {"mask_sampler_finetune": train_command("masks", chained, finetune_run, 2)}
        _run_together(job, runs, dict(env, OMP_NUM_THREADS="2"), log)
        mask_model = finetune_run / "model"
        mask_recipes.append(finetune)
    return assemble_model(
        out,
        mask_model,
        runs / "image_generator" / "model",
        mask_recipe=mask_recipes,
        image_recipe=image_recipe,
        data=data,
        model_id=model_id,
        seconds=time.perf_counter() - started,
        overwrite=overwrite,
    )


def _recipe_chain(recipes: list[Path]) -> dict[str, Any]:
    """The last recipe's file and digest; a fine-tune's ``init_from`` is the entry of the recipe before it."""
    entry: dict[str, Any] = {}
    for recipe in recipes:
        entry = {"file": recipe.name, "sha256_16": _digest(recipe), **({"init_from": entry} if entry else {})}
    return entry


def assemble_model(
    out: str | Path,
    mask_model: str | Path,
    image_model: str | Path,
    *,
    mask_recipe: Path | list[Path],
    image_recipe: Path,
    data: Path,
    model_id: str,
    seconds: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy two trained stage folders into one model folder with its ``model.json``.

    ``mask_recipe``: the mask sampler's recipe, or its chain (each a fine-tune of the one before).
    """
    out, mask_model, image_model = Path(out), Path(mask_model), Path(image_model)
    mask_recipes = [Path(r) for r in mask_recipe] if isinstance(mask_recipe, list) else [Path(mask_recipe)]
    for folder in (mask_model, image_model):
        if not (folder / "model.safetensors").is_file():
            raise InputError(folder, "no trained model here (model.safetensors missing)")
    cases = sorted(p.parent.name for p in Path(data).glob("*/guidegen-source.json"))
    mask_cfg = read_json_object(mask_model / "config.json")
    image_cfg = read_json_object(image_model / "config.json")
    held_out = sorted(image_cfg.get("holdout_cases") or [])
    info = {
        "model_id": model_id,
        "version": __version__,
        "recipes": {
            "mask_sampler": _recipe_chain(mask_recipes),
            "image_generator": {"file": image_recipe.name, "sha256_16": _digest(image_recipe)},
        },
        "training_data": {
            "mask_sampler": [Path(d).name for d in mask_cfg.get("data_sources", [])],
            "image_generator": [c for c in cases if c not in held_out],
            "held_out_from_image_generator": held_out,
            "sources_and_licences": "data/real/SOURCES.md",
        },
        "training_seconds": None if seconds is None else round(seconds),
        "intended_use": "research only; not for diagnosis",
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, folder in (("mask_sampler", mask_model), ("image_generator", image_model)):
            shutil.copytree(folder, tmp / name, ignore=shutil.ignore_patterns("training.*"))
        (tmp / "model.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        card = Path(out) / "MODEL_CARD.md"
        if card.exists():
            shutil.copy(card, tmp / "MODEL_CARD.md")  # the card is written by hand from measurements: keep it
    return out
