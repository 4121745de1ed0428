"""How long `guidegen train demo` takes on this CPU, from timed training steps (issue 24; a script, not a test).

    .venv/bin/python benchmarks/train_demo_time.py --prepared PREPARED [--steps 12 24 12]
    benchmarks/avx2_only/run.sh .venv/bin/python benchmarks/train_demo_time.py --prepared PREPARED

``PREPARED``: the output of ``guidegen prepare data/real`` (what `train demo` prepares first; its time is
not included). Runs each training of `guidegen.pipeline.train_demo` as `train demo` runs it, for a few steps, from
scratch in a temporary folder:

1. the mask sampler's first recipe and the image generator at once, one thread each;
2. the mask sampler's fine-tune alone with 2 threads (its ``init_from`` pointed at the shipped mask
   sampler, which has the same network: only the step time matters here).

Seconds per step come from each run's log (cumulative seconds at logged steps, from its first logged
step on), which leaves out start-up, data preparation and the first step's warm-up. The total is
those step times times each recipe's ``steps``: the first stage takes as long as the slower of its
two trainings. Precision is
each recipe's (``auto``: bf16 only where the CPU runs it natively, `guidegen.runtime`).
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
from guidegen.pipeline.train_demo import IMAGE_RECIPE, MASK_FINETUNE_RECIPE, MASK_RECIPE, chained_recipe, train_command


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
        default=(12, 24, 12),
        metavar=("MASKS", "IMAGES", "FINETUNE"),
        help="steps to time of each (the first two should take about as long: they run at once)",
    )
    args = parser.parse_args()
    print(cpu_line())
    recipes = {name: json.loads(path.read_text()) for name, path in (("masks", MASK_RECIPE), ("images", IMAGE_RECIPE))}
    finetune = json.loads(MASK_FINETUNE_RECIPE.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        chained = chained_recipe(
            MASK_FINETUNE_RECIPE, REPO_ROOT / "models" / "default" / "mask_sampler", runs / "ft.json"
        )
        n_masks, n_images, n_finetune = args.steps
        first = {
            "masks": [*train_command("masks", MASK_RECIPE, runs / "masks", 1), "--max-steps", str(n_masks)],
            "images": [
                *train_command("images", IMAGE_RECIPE, runs / "images", 1, Path(args.prepared)),
                "--max-steps",
                str(n_images),
            ],
        }
        took = timed(first, 1)
        ft = [*train_command("masks", chained, runs / "finetune", 2), "--max-steps", str(n_finetune)]
        took |= timed({"finetune": ft}, 2)
        print("  wall: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()), flush=True)
        per_step = {name: seconds_per_step(runs / name) for name in ("masks", "images", "finetune")}
    steps = {"masks": recipes["masks"]["steps"], "images": recipes["images"]["steps"], "finetune": finetune["steps"]}
    minutes = {k: per_step[k] * steps[k] / 60 for k in steps}
    first_stage = max(minutes["masks"], minutes["images"])
    print("train demo, from timed steps (prepare not included):")
    names = {
        "masks": f"mask sampler, {MASK_RECIPE.name}",
        "images": f"image generator, {IMAGE_RECIPE.name}",
        "finetune": f"mask sampler fine-tune, {MASK_FINETUNE_RECIPE.name} (2 threads)",
    }
    for key, name in names.items():
        print(f"  {name}: {per_step[key]:.2f} s/step × {steps[key]} = {minutes[key]:.0f} min")
        if key == "images":
            print(f"    (the first two at once, one thread each: {first_stage:.0f} min)")
    print(f"  total: {(first_stage + minutes['finetune']) / 60:.1f} h")


if __name__ == "__main__":
    main()
