"""End-to-end generation speed and memory per precision and backend (a script, not a test).

    .venv/bin/python benchmarks/generate.py [--model models/default] [--threads 2] [--only NAME ...]
        [--paper-estimate]

Prints the CPU's capabilities (what PyTorch and /proc/cpuinfo say: AVX2, AVX-512, AVX512-BF16,
AMX, oneDNN bf16), then one row per configuration, each run in a fresh process so that its peak
resident memory is its own:

* ``previous default``: PyTorch under bf16 autocast with the previous sampling steps (25 mask
  steps guided at every step, 6 flow steps per slice): what the release before issue 23 ran on every CPU. Where bf16
  is not native this is 10-100x slower than fp32, so it is extrapolated from its first mask steps
  and slices (marked), not run to the end;
* ``torch fp32`` at the previous and at the current steps;
* every installed faster backend (``onnxruntime``, ``openvino``) at the current steps, in the
  precision ``auto`` resolves to on this machine;
* ``auto``: what ``guidegen generate`` does by default, and the same with the sampling shipped
  before (25 mask steps instead of 20, mask guidance while t ≥ 0.5 T instead of 0.7 T, 3 flow steps
  per slice instead of 2; the schedule's shift changes no work; same run, so the two compare).

Per row: start-up (import, model load, network compile: a first use exports and checks, later
uses read the cache), the stages of one case (masks, upsample, CT slices, report, writing the case
folder), the case's total, and the peak RSS. Run it alone on the machine: timings of runs that
share the CPU mean nothing.

On a CPU with AVX-512, ``benchmarks/avx2_only/run.sh .venv/bin/python benchmarks/generate.py …``
runs it as an AVX2-only CPU would (CPUID masked: PyTorch, oneDNN, ONNX Runtime, OpenVINO and NumPy
all pick their AVX2 kernels; see ``benchmarks/avx2_only/cpuid_avx2.c`` for what it cannot imitate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "68-year-old man, 4 cm sigmoid colon cancer, mild splenomegaly, portal venous phase"
PREVIOUS_STEPS = (25, 6)  # mask sampler steps, flow steps per slice of the release before issue 23
STAGES = ("masks", "upsample", "images", "report", "write")


def cpu_line() -> str:
    from guidegen.runtime import cpu_capabilities

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown CPU",
        )
    except OSError:
        model = "unknown CPU"
    caps = cpu_capabilities()
    cpuinfo = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    capped = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    return (
        f"CPU: {model}, {os.cpu_count()} logical cores; /proc/cpuinfo: {cpuinfo}; PyTorch: kernels "
        f"{caps['aten_kernels']}, "
        f"AVX512-BF16 {caps['avx512_bf16']}, AMX {caps['amx']}, oneDNN bf16 {caps['onednn_bf16']}"
        + (f"; ISA capped by {capped}" if capped else "")
        + (
            "; CPUID masked to an AVX2-only CPU (benchmarks/avx2_only/run.sh: every library dispatches as there)"
            if "cpuid_avx2" in os.environ.get("LD_PRELOAD", "")
            else ""
        )
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class _Stop(Exception):
    pass


def run_one(args: argparse.Namespace) -> dict:
    """One configuration in this process: start-up, then one case, timed per stage."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from guidegen.pipeline import GenerationSettings, GuideGen
    from guidegen.pipeline.dataset import write_case_folder

    imported = time.perf_counter() - started
    started = time.perf_counter()
    gg = GuideGen.from_pretrained(args.model)
    if args.guidance_min_t is not None:
        gg.mask_sampler.config = dataclasses.replace(gg.mask_sampler.config, guidance_min_t=args.guidance_min_t)
    gg.mask_sampler.text_encoder.encode([PROMPT])
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    runtime = gg.warm_up(GenerationSettings(precision=args.precision, backend=args.backend))
    compiled = time.perf_counter() - started
    steps = args.mask_steps or gg.mask_sampler.config.sample_steps
    image_steps = args.image_steps or gg.image_generator.config.flow_steps
    result = {
        "startup": {"import": imported, "load": loaded, "compile": compiled},
        "runtime": runtime,
        "steps": [steps, image_steps],
        "extrapolated": False,
    }
    if args.extrapolate:
        return extrapolate(gg, args, steps, image_steps, result)
    start = time.perf_counter()
    case = gg.generate(
        PROMPT,
        n=1,
        seed=args.seed,
        steps=steps,
        image_steps=image_steps,
        precision=args.precision,
        backend=args.backend,
    )[0]
    generated = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        settings = GenerationSettings(
            steps=steps, image_steps=image_steps, precision=args.precision, backend=args.backend
        )
        write_case_folder(case, Path(tmp), gg.info, settings, {"mask_steps": steps, "image_steps": image_steps})
    times = {k: case.timings[k] for k in STAGES}
    times["total"] = generated + times["write"]
    result.update(times=times, shape=list(case.ct.shape), peak_rss_gb=peak_rss_gb())
    if args.save:
        import numpy as np

        np.savez_compressed(args.save, ct=case.ct.array, labels=case.labels.array)
    return result


def extrapolate(gg, args: argparse.Namespace, steps: int, image_steps: int, result: dict) -> dict:
    """Time the first mask steps and CT slices and scale to a whole case (each network call costs
    the same whatever the step): for configurations that would take many minutes."""
    timed_steps, timed_slices = min(3, steps), 2

    def stop_masks(i: int, total: int) -> None:
        if i >= timed_steps:
            raise _Stop

    start = time.perf_counter()
    try:
        gg.mask_sampler.sample_masks(
            PROMPT,
            n=1,
            seed=[args.seed],
            steps=steps,
            callback=stop_masks,
            precision=args.precision,
            backend=args.backend,
        )
    except _Stop:
        pass
    masks = (time.perf_counter() - start) / timed_steps * steps
    coarse = gg.mask_sampler.sample_masks(PROMPT, n=1, seed=[args.seed], steps=1, precision="fp32", backend="torch")[0]
    start = time.perf_counter()
    labels = gg._upsample(coarse)
    upsample = time.perf_counter() - start

    def stop_images(k: int, _slices) -> None:
        if k + 1 >= timed_slices:
            raise _Stop

    start = time.perf_counter()
    try:
        gg.image_generator.generate(
            labels,
            seed=args.seed,
            image_steps=image_steps,
            callback=stop_images,
            precision=args.precision,
            backend=args.backend,
        )
    except _Stop:
        pass
    images = (time.perf_counter() - start) / timed_slices * labels.shape[2]
    times = {"masks": masks, "upsample": upsample, "images": images, "report": 0.0, "write": 0.0}
    times["total"] = sum(times.values())
    result.update(times=times, shape=list(labels.shape), peak_rss_gb=peak_rss_gb(), extrapolated=True)
    return result


def configurations(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    from guidegen.runtime import available_backends, native_bf16

    old = ["--mask-steps", str(PREVIOUS_STEPS[0]), "--image-steps", str(PREVIOUS_STEPS[1]), "--guidance-min-t", "0"]
    rows = [
        (
            "previous default (torch bf16, 25/6 steps)",
            ["--precision", "bf16", "--backend", "torch", *old] + ([] if native_bf16("cpu") else ["--extrapolate"]),
        ),
        ("torch fp32, 25/6 steps", ["--precision", "fp32", "--backend", "torch", *old]),
        ("torch fp32", ["--precision", "fp32", "--backend", "torch"]),
    ]
    if native_bf16("cpu"):
        rows.append(("torch bf16", ["--precision", "bf16", "--backend", "torch"]))
    for backend in available_backends()[1:]:
        rows.append((f"{backend} (precision auto)", ["--precision", "auto", "--backend", backend]))
    rows.append(
        (
            "auto, previous sampling (25/3, guided t>=0.5T)",
            [
                "--precision",
                "auto",
                "--backend",
                "auto",
                "--mask-steps",
                "25",
                "--image-steps",
                "3",
                "--guidance-min-t",
                "0.5",
            ],
        )
    )
    rows.append(("auto (the default)", ["--precision", "auto", "--backend", "auto"]))
    if args.paper_estimate:
        rows.append(
            (
                "paper procedure (1000/50 steps, auto)",
                [
                    "--precision",
                    "auto",
                    "--backend",
                    "auto",
                    "--mask-steps",
                    "1000",
                    "--image-steps",
                    "50",
                    "--extrapolate",
                ],
            )
        )
    if args.only:
        rows = [r for r in rows if any(o in r[0] for o in args.only)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="only rows whose name contains one of these")
    parser.add_argument(
        "--paper-estimate",
        action="store_true",
        help="add the paper's sampling procedure (1000 mask steps, 50 per slice), extrapolated",
    )
    # One configuration in this process (what the parent runs in each child):
    parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--mask-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--guidance-min-t", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--extrapolate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision is not None:
        print(json.dumps(run_one(args)))
        return

    print(cpu_line())
    print(f"prompt: {PROMPT!r}, seed {args.seed}, {args.threads} threads; each row in a fresh process")
    header = (
        f"{'configuration':44s} {'networks':34s} {'steps':>6s} {'start-up':>9s}"
        + "".join(f"{s:>9s}" for s in (*STAGES, "total"))
        + "  peak RSS"
    )
    print(header)
    base = [sys.executable, __file__, "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.model:
        base += ["--model", args.model]
    for name, extra in configurations(args):
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        if proc.returncode != 0:
            print(
                f"{name:44s} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
            )
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        masks, images = r["runtime"]["masks"], r["runtime"]["images"]
        nets = f"masks {masks['backend']} {masks['precision']}, images {images['backend']} {images['precision']}"
        nets = nets.replace("onnxruntime", "ort").replace("openvino", "ov")
        startup = sum(r["startup"].values())
        t = r["times"]
        mark = "~" if r["extrapolated"] else " "
        print(
            f"{name:44s} {nets:34s} {r['steps'][0]:>3d}/{r['steps'][1]:<2d} {startup:8.1f}s"
            + "".join(f"{mark}{t[s]:7.1f}s" for s in (*STAGES, "total"))
            + f"  {r['peak_rss_gb']:.2f} GB"
        )
    print(
        "start-up = import + model load + network compile (a first use exports, checks and times the backends; "
        "later uses read the cache); ~ = extrapolated from the first steps and slices"
    )


if __name__ == "__main__":
    main()
