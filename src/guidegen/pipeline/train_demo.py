"""`guidegen train demo`: the shipped default model, reproducibly, from the bundled real data.

Recipe (recipes/mask_sampler_demo.json + recipes/image_generator_demo.json):

1. ``guidegen prepare data/real --out RUNS/prepared`` (3 mm, 128² in-plane) for the image generator;
   the mask sampler prepares its own 8 mm cache from its config's ``data_sources``.
2. Both trainings at once, one CPU thread each (on 2 cores this is faster than one after the
   other with 2 threads each: neither network keeps two threads busy).
3. The two EMA models are copied into ``OUT/mask_sampler`` and ``OUT/image_generator`` with
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

from guidegen import __version__
from guidegen.errors import InputError
from guidegen.io.atomic import atomic_dir
from guidegen.io.layouts import read_json_object
from guidegen.paths import REPO_ROOT

REPO = REPO_ROOT  # the recipes and data of a source checkout
MASK_RECIPE = REPO / "recipes" / "mask_sampler_demo.json"
IMAGE_RECIPE = REPO / "recipes" / "image_generator_demo.json"
DATA = REPO / "data" / "real"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train_demo(
    out: str | Path = REPO / "models" / "default",
    runs: str | Path = REPO / "runs" / "demo",
    *,
    data: str | Path = DATA,
    mask_recipe: str | Path = MASK_RECIPE,
    image_recipe: str | Path = IMAGE_RECIPE,
    model_id: str = "guidegen-demo",
    overwrite: bool = False,
    log=print,
) -> Path:
    """Prepare, train both stages in parallel, and assemble the model folder ``out``."""
    out, runs, data = Path(out), Path(runs), Path(data)
    mask_recipe, image_recipe = Path(mask_recipe), Path(image_recipe)
    for recipe in (mask_recipe, image_recipe):
        if not recipe.is_file():
            raise InputError(recipe, "recipe not found")
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace the model)")
    started = time.perf_counter()
    prepared = runs / "prepared"
    guidegen = [sys.executable, "-m", "guidegen"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log(f"preparing {data} → {prepared}")
    subprocess.run([*guidegen, "prepare", str(data), "--out", str(prepared), "-q"], check=True, env=env, cwd=REPO)
    jobs = {
        "mask_sampler": [
            *guidegen,
            "train",
            "masks",
            "--config",
            str(mask_recipe),
            "--run",
            str(runs / "mask_sampler"),
            "--threads",
            "1",
            "-q",
        ],
        "image_generator": [
            *guidegen,
            "train",
            "images",
            "--config",
            str(image_recipe),
            "--prepared",
            str(prepared),
            "--run",
            str(runs / "image_generator"),
            "--threads",
            "1",
            "-q",
        ],
    }
    procs = {}
    for name, cmd in jobs.items():
        log(f"training {name}: {' '.join(cmd[2:])} (log: {runs / (name + '.log')})")
        runs.mkdir(parents=True, exist_ok=True)
        handle = open(runs / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        procs[name] = (subprocess.Popen(cmd, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT), handle)
    failed = []
    for name, (proc, handle) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        handle.close()
    if failed:
        raise InputError(runs, f"training failed for {', '.join(failed)}; see the .log files there (rerun to resume)")
    return assemble_model(
        out,
        runs / "mask_sampler" / "model",
        runs / "image_generator" / "model",
        mask_recipe=mask_recipe,
        image_recipe=image_recipe,
        data=data,
        model_id=model_id,
        seconds=time.perf_counter() - started,
        overwrite=overwrite,
    )


def assemble_model(
    out: str | Path,
    mask_model: str | Path,
    image_model: str | Path,
    *,
    mask_recipe: Path,
    image_recipe: Path,
    data: Path,
    model_id: str,
    seconds: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy two trained stage folders into one model folder with its ``model.json``."""
    out, mask_model, image_model = Path(out), Path(mask_model), Path(image_model)
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
            "mask_sampler": {"file": mask_recipe.name, "sha256_16": _digest(mask_recipe)},
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
