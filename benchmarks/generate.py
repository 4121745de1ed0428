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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paper", action="store_true", help="also run the paper's procedure (slow: minutes)")
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
    stages = ["masks", "upsample", "images", "report", "write", "total"]
    print(f"{'procedure':38s}" + "".join(f"{s:>10s}" for s in stages))
    for name, times in rows:
        print(f"{name:38s}" + "".join(f"{times[s]:9.1f}s" for s in stages))
    if args.paper:
        print(f"paper / ours (end to end, same process, same case size): {rows[1][1]['total'] / ours['total']:.1f}×"
              f"  (masks {rows[1][1]['masks'] / ours['masks']:.1f}×, CT {rows[1][1]['images'] / ours['images']:.1f}×)")
    print(f"peak resident memory: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
