"""How long `guidegen train demo` takes on this CPU, from timed training steps (issue 24; a script, not a test).

    .venv/bin/python benchmarks/train_demo_time.py --prepared PREPARED [--steps 12 24 20]
    benchmarks/avx2_only/run.sh .venv/bin/python benchmarks/train_demo_time.py --prepared PREPARED

``PREPARED``: the output of ``guidegen prepare data/real`` (what `train demo` prepares first; its time is
not included). Runs each training of `guidegen.pipeline.train_demo` as `train demo` runs it, for a few steps, from
scratch in a temporary folder:

1. the mask sampler's first recipe and the image generator at once, one thread each;
2. the mask sampler's fine-tune with one thread beside the image generator (a second run of it), as its
   first ``FINETUNE_STEPS_BESIDE_IMAGES`` steps run;
3. the fine-tune alone with 2 threads, as its other steps run.

The fine-tune's ``init_from`` points at the shipped mask sampler, which has the same network: only
the step time matters here. Seconds per step come from each run's log (cumulative seconds at logged
steps, from its first logged step on), which leaves out start-up, data preparation and the first
step's warm-up. The total is those step times times each recipe's ``steps``: the fine-tune's
two-thread part starts when both the image generator and its one-thread part have ended.
Precision is each recipe's (``auto``: bf16 only where the CPU runs it natively, `guidegen.runtime`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from generate import cpu_line  # a script's folder is on sys.path

from guidegen.paths import REPO_ROOT
from guidegen.pipeline.train_demo import (
    FINETUNE_STEPS_BESIDE_IMAGES,
    IMAGE_RECIPE,
    MASK_FINETUNE_RECIPE,
    MASK_RECIPE,
    chained_recipe,
    train_command,
)


def timed(jobs: dict[str, list[str]], threads: int) -> dict[str, float]:
    """Run the commands at once; seconds each took."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    procs = {name: subprocess.Popen(cmd, env=env, cwd=REPO_ROOT) for name, cmd in jobs.items()}
    seconds = {}
    pending = dict(procs)
    while pending:
        for name, proc in list(pending.items()):
            if proc.poll() is not None:
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed ({' '.join(jobs[name])})")
                seconds[name] = time.perf_counter() - started
                del pending[name]
        time.sleep(0.2)
    return seconds


def seconds_per_step(run: Path) -> float:
    """From a run's log.jsonl (cumulative ``seconds`` at logged steps): after its first logged step."""
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    first, last = lines[0], lines[-1]
    if last["step"] <= first["step"]:
        raise SystemExit(f"{run}: too few logged steps to time")
    return (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, help="output folder of `guidegen prepare data/real`")
    parser.add_argument(
        "--steps",
        type=int,
        nargs=3,
        default=(12, 24, 20),
        metavar=("MASKS", "IMAGES", "FINETUNE"),
        help="steps to time of each (the first two should take about as long: they run at once)",
    )
    args = parser.parse_args()
    print(cpu_line())
    recipes = {name: json.loads(path.read_text()) for name, path in (("masks", MASK_RECIPE), ("images", IMAGE_RECIPE))}
    finetune_recipe = json.loads(MASK_FINETUNE_RECIPE.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        chained = chained_recipe(
            MASK_FINETUNE_RECIPE, REPO_ROOT / "models" / "default" / "mask_sampler", runs / "ft.json"
        )
        n_masks, n_images, n_finetune = args.steps

        def images(run: str) -> list[str]:
            command = train_command("images", IMAGE_RECIPE, runs / run, 1, Path(args.prepared))
            return [*command, "--max-steps", str(n_images)]

        def finetune(run: str, threads: int) -> list[str]:
            return [*train_command("masks", chained, runs / run, threads), "--max-steps", str(n_finetune)]

        masks = [*train_command("masks", MASK_RECIPE, runs / "masks", 1), "--max-steps", str(n_masks)]
        took = timed({"masks": masks, "images": images("images")}, 1)
        took |= timed({"finetune_beside": finetune("finetune_beside", 1), "images_2": images("images_2")}, 1)
        took |= timed({"finetune": finetune("finetune", 2)}, 2)
        print("  wall: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()), flush=True)
        per_step = {name: seconds_per_step(runs / name) for name in ("masks", "images", "finetune_beside", "finetune")}
    beside = FINETUNE_STEPS_BESIDE_IMAGES
    steps = {
        "masks": recipes["masks"]["steps"],
        "images": recipes["images"]["steps"],
        "finetune_beside": beside,
        "finetune": finetune_recipe["steps"] - beside,
    }
    minutes = {k: per_step[k] * steps[k] / 60 for k in steps}
    first_stage = max(minutes["images"], minutes["masks"] + minutes["finetune_beside"])
    print("train demo, from timed steps (prepare not included):")
    names = {
        "masks": f"mask sampler, {MASK_RECIPE.name} (1 thread)",
        "finetune_beside": f"  then its fine-tune, {MASK_FINETUNE_RECIPE.name}, first steps (1 thread)",
        "images": f"image generator, {IMAGE_RECIPE.name} (1 thread, at the same time)",
        "finetune": "fine-tune, the other steps (2 threads)",
    }
    for key, name in names.items():
        print(f"  {name}: {per_step[key]:.2f} s/step × {steps[key]} = {minutes[key]:.0f} min")
        if key == "images":
            print(f"    (until both have ended: {first_stage:.0f} min)")
    print(f"  total: {(first_stage + minutes['finetune']) / 60:.2f} h")


if __name__ == "__main__":
    main()
