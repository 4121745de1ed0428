"""End-to-end generation speed and memory with a model folder (a script, not a test).

    .venv/bin/python benchmarks/generate.py [--model models/default] [--threads 2] [--paper]

Prints the per-stage times of one case (load, masks, upsample, CT slices, report, writing the case
folder), the peak resident memory, and with ``--paper`` the same case generated with the paper's
sampling procedure at the same size: 1000 ancestral mask steps (full T, no striding) and 50
network evaluations per CT slice (the paper's 50 DDIM steps; our generator is a rectified flow,
so these are 50 Euler steps), measured in the same process, with the ratio of the two.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "68-year-old man, 4 cm sigmoid colon cancer, mild splenomegaly, portal venous phase"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def one_case(gg, seed: int, steps: int | None, image_steps: int | None) -> tuple[dict[str, float], object]:
    from guidegen.pipeline.dataset import write_case_folder

    start = time.perf_counter()
    case = gg.generate(PROMPT, n=1, seed=seed, steps=steps, image_steps=image_steps)[0]
    total = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"steps": steps or gg.mask_sampler.config.sample_steps, "guidance": gg.mask_sampler.config.guidance_scale,
                    "image_steps": image_steps or gg.image_generator.config.flow_steps,
                    "image_guidance": gg.image_generator.config.guidance_scale}
        write_case_folder(case, Path(tmp), gg.info, settings)
    times = dict(case.timings)
    times["total"] = total + times["write"]
    return times, case


class _Stop(Exception):
    pass


def paper_estimate(gg, seed: int, ours: dict[str, float], case) -> dict[str, float]:
    """Time the first 20 mask steps of the 1000-step ancestral sampler and the first 4 slices at 50
    flow steps, in this process, and scale by the number of steps / slices of a whole case. Each
    network evaluation costs the same whatever the schedule, so this is a linear extrapolation of
    measured evaluations, not a full run (``--paper`` runs it in full)."""
    ms = gg.mask_sampler.config
    timed_steps, timed_slices = 20, 4

    def stop_masks(i: int, total: int) -> None:
        if i >= timed_steps:
            raise _Stop

    start = time.perf_counter()
    try:
        gg.mask_sampler.sample_masks(PROMPT, n=1, seed=seed, steps=ms.num_timesteps, callback=stop_masks)
    except _Stop:
        pass
    masks = (time.perf_counter() - start) / timed_steps * ms.num_timesteps

    def stop_images(k: int, _slices) -> None:
        if k + 1 >= timed_slices:
            raise _Stop

    labels = case.labels
    start = time.perf_counter()
    try:
        gg.image_generator.generate(labels, seed=seed, steps=50, callback=stop_images)
    except _Stop:
        pass
    images = (time.perf_counter() - start) / timed_slices * labels.shape[2]
    out = dict(ours, masks=masks, images=images)
    out["total"] = sum(out[k] for k in ("masks", "upsample", "images", "report", "write"))
    print(f"paper procedure extrapolated from {timed_steps} of {ms.num_timesteps} mask steps and {timed_slices} of "
          f"{labels.shape[2]} slices at 50 steps each")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paper", action="store_true", help="also run the paper's procedure in full (slow: ~20 min here)")
    parser.add_argument("--paper-estimate", action="store_true",
                        help="time the first steps of the paper's procedure and extrapolate (minutes → seconds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    from guidegen.pipeline import GuideGen

    imported = time.perf_counter() - start
    start = time.perf_counter()
    gg = GuideGen.from_pretrained(args.model)
    gg.mask_sampler.text_encoder.encode([PROMPT])  # load the text encoder (part of start-up, not of a case)
    loaded = time.perf_counter() - start
    ms, ig = gg.mask_sampler.config, gg.image_generator.config
    print(f"model {gg.info.get('model_id')} {gg.info.get('version')}: masks {ms.shape} at {ms.spacing} mm "
          f"({ms.sample_steps} strided steps, guidance {ms.guidance_scale}); CT {ig.image_size}² at {ig.spacing} mm "
          f"({ig.flow_steps} flow steps per slice, {ig.precision}); {args.threads} threads")
    print(f"start-up: import {imported:.1f} s, load models + text encoder {loaded:.1f} s")
    ours, case = one_case(gg, args.seed, None, None)
    print(f"case: CT {case.ct.shape} voxels at {tuple(round(s, 2) for s in case.ct.spacing)} mm")
    rows = [("ours", ours)]
    if args.paper:
        paper, _ = one_case(gg, args.seed, ms.num_timesteps, 50)
        rows.append((f"paper ({ms.num_timesteps} mask steps, 50/slice)", paper))
    if args.paper_estimate and not args.paper:
        rows.append(("paper (extrapolated, see below)", paper_estimate(gg, args.seed, ours, case)))
    stages = ["masks", "upsample", "images", "report", "write", "total"]
    print(f"{'procedure':38s}" + "".join(f"{s:>10s}" for s in stages))
    for name, times in rows:
        print(f"{name:38s}" + "".join(f"{times[s]:9.1f}s" for s in stages))
    if args.paper or args.paper_estimate:
        print(f"paper / ours (end to end, same process, same case size): {rows[1][1]['total'] / ours['total']:.1f}×"
              f"  (masks {rows[1][1]['masks'] / ours['masks']:.1f}×, CT {rows[1][1]['images'] / ours['images']:.1f}×)")
    print(f"peak resident memory: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
