"""The mask sampler's quality on the fixed prompt suite (a script, not a test; issue 3's acceptance).

    .venv/bin/python benchmarks/mask_suite.py [--model models/default/mask_sampler] [--batch 8]
        [--diversity 4] [--steps 25] [--out suite.json] [--tumour-placement both] [--maps maps.npz]

Samples one label map per prompt of `guidegen.evaluation.prompt_suite.PROMPT_SUITE` (seed = prompt
index), plus ``--diversity`` maps of three prompts for the mean pairwise Dice, and prints
`guidegen.evaluation.masks.check_masks`: organs in one main component, anatomical relations, text
adherence, the organs each prompt leaves unchanged (normal volume, whole inside the grid:
`guidegen.evaluation.mask_unstated`), diversity; per-class volumes against the training maps' distribution when
``--reference`` names a `guidegen prepare` folder at the sampler's grid (the recipe's
``prepared_cache``). The network's maps are scored as drawn ("network") and after the sampler's
placement stage ("insert": stated tumours placed, their hosts grown to hold them, stated organ sizes
given, `guidegen.masks.placement`, the default), from one sampling run. ``--organ-sizes network``
leaves the organs as drawn in the "insert" maps. ``--tumour-placement all`` (or ``learned``) adds the
network's maps with their tumours drawn by the learned tumour stage (`guidegen.masks.tumour_stage`,
``--tumour-stage``, default the ``tumour_stage`` folder beside the model) and nothing else changed:
the two networks alone, without the placement stage's rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/default/mask_sampler")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument(
        "--guidance-min-t",
        type=float,
        default=None,
        help="guidance only while t >= this fraction of the diffusion time (default: the model's config)",
    )
    parser.add_argument(
        "--real-start", type=float, default=None, help="start from a deformed real map of the bank (SDEdit strength)"
    )
    parser.add_argument("--diversity", type=int, default=4, help="samples per diversity prompt (0 = skip)")
    parser.add_argument("--reference", default=None, help="prepared folder with the training maps (volume check)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (guidegen.runtime)")
    parser.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or openvino (guidegen.runtime)")
    parser.add_argument("--out", default=None, help="write the full report as JSON here")
    parser.add_argument(
        "--tumour-placement",
        choices=["insert", "network", "both", "learned", "all"],
        default="both",
        help="score maps with stated tumours inserted, the network's own maps, both, the network's maps with "
        "the learned tumour stage's tumours, or all three (one sampling)",
    )
    parser.add_argument("--tumour-stage", default=None, help="tumour stage folder (default: beside the model)")
    parser.add_argument(
        "--final-decode",
        choices=["argmax", "matched"],
        default=None,
        help="last sampling step (default: the model's MaskSamplerConfig.final_decode)",
    )
    parser.add_argument(
        "--organ-sizes",
        choices=["all", "scale", "network"],
        default=None,
        help="organ sizes in the placed maps (default: the model's organ_sizes)",
    )
    parser.add_argument(
        "--aorta-placement",
        choices=["tube", "network"],
        default=None,
        help="the aorta in the placed maps (default: the model's aorta_placement)",
    )
    parser.add_argument(
        "--maps",
        default=None,
        help="npz of the network's maps: read if it exists (no sampling), else written after sampling",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import numpy as np

    from guidegen.evaluation.mask_volumes import volume_statistics
    from guidegen.evaluation.masks import check_masks
    from guidegen.evaluation.prompt_suite import PROMPT_SUITE
    from guidegen.io.volume import Volume
    from guidegen.masks.sampler import VolumetricMaskSampler, apply_statements, sampler_grid
    from guidegen.text.parse import parse_prompt

    sampler = VolumetricMaskSampler.from_pretrained(args.model)
    if args.guidance_min_t is not None:
        sampler.config = dataclasses.replace(sampler.config, guidance_min_t=args.guidance_min_t)
    prompts = list(PROMPT_SUITE[: args.limit])
    diversity_prompts = ["healthy abdomen, no tumour", "4 cm tumour in the sigmoid colon", "enlarged spleen"]
    jobs = [(p, i) for i, p in enumerate(prompts)]
    for j, p in enumerate(diversity_prompts if args.diversity else []):
        jobs += [(p, 1000 + 100 * j + k) for k in range(args.diversity)]
    start = time.perf_counter()
    samples = []
    cached = Path(args.maps) if args.maps else None
    loaded = cached is not None and cached.exists()
    if loaded:
        # The network's maps of an earlier run (same model and settings: the caller's responsibility).
        arrays = np.load(cached)["maps"]
        if len(arrays) != len(jobs):
            raise SystemExit(f"{cached}: holds {len(arrays)} maps, this suite needs {len(jobs)}")
        samples = [
            Volume(a, sampler_grid(sampler.config), "labels", {"prompt": p, "seed": s})
            for a, (p, s) in zip(arrays, jobs)
        ]
    else:
        for b in range(0, len(jobs), args.batch):
            chunk = jobs[b : b + args.batch]
            samples += sampler.sample_masks(
                [p for p, _ in chunk],
                n=1,
                seed=[s for _, s in chunk],
                steps=args.steps,
                guidance=args.guidance,
                real_start=args.real_start,
                tumour_placement="network",
                organ_sizes="network",
                aorta_placement="network",
                final_decode=args.final_decode,
                precision=args.precision,
                backend=args.backend,
            )
            print(f"  sampled {len(samples)}/{len(jobs)} ({time.perf_counter() - start:.0f} s)", flush=True)
        if cached is not None:
            np.savez_compressed(cached, maps=np.stack([v.array for v in samples]))
    seconds = time.perf_counter() - start
    # The placement stage as `sample_masks(tumour_placement="insert")` runs it (stated organ sizes as
    # the model's `organ_sizes` or --organ-sizes says): same per-map random stream.
    placed_start = time.perf_counter()
    sizes_mode = args.organ_sizes or sampler.config.organ_sizes
    sizes = sizes_mode in ("scale", "all")
    tube = (args.aorta_placement or sampler.config.aorta_placement) == "tube"
    inserted = [
        apply_statements(v, parse_prompt(p), s, organs=sizes, unstated=sizes_mode == "all", aorta=tube)
        for v, (p, s) in zip(samples, jobs)
    ]
    placed_seconds = time.perf_counter() - placed_start
    reference = None
    if args.reference:
        from guidegen.data.prepare import load_prepared
        from guidegen.io.nifti import read_nifti

        maps = [read_nifti(e["labels_path"], kind="labels") for e in load_prepared(args.reference)]
        reference = {k: list(v) for k, v in volume_statistics(maps).items()}
    cfg = sampler.config
    print(
        f"mask sampler {args.model}: {cfg.shape} at {cfg.spacing} mm, {args.steps or cfg.sample_steps} steps, "
        f"guidance {cfg.guidance_scale if args.guidance is None else args.guidance} "
        f"(while t >= {cfg.guidance_min_t:g} T), "
        f"start {'noise' if args.real_start is None else f'real map at strength {args.real_start}'}; "
        f"{len(jobs)} samples in "
        f"{seconds:.0f} s "
        f"({seconds / len(jobs):.1f} s per map, batches of {args.batch}{f', read from {cached}' if loaded else ''}); "
        f"last step {args.final_decode or cfg.final_decode}; "
        f"placement stage (organ sizes {sizes_mode if sizes else 'as drawn'}, aorta {'tube' if tube else 'as drawn'}) "
        f"{placed_seconds / len(jobs):.2f} s per map"
    )
    modes = {"both": ["insert", "network"], "all": ["insert", "network", "learned"]}.get(
        args.tumour_placement, [args.tumour_placement]
    )
    scored = {"insert": inserted, "network": samples}
    if "learned" in modes:
        from guidegen.masks.sampler import draw_learned_tumours
        from guidegen.masks.tumour_stage import TumourStage

        stage = TumourStage.from_pretrained(args.tumour_stage) if args.tumour_stage else sampler.tumour_stage()
        learned_start = time.perf_counter()
        scored["learned"] = [draw_learned_tumours(v, parse_prompt(p), s, stage) for v, (p, s) in zip(samples, jobs)]
        print(f"learned tumour stage: {(time.perf_counter() - learned_start) / len(jobs):.2f} s per map")
    reports = {}
    for mode in modes:
        report = check_masks(scored[mode], [p for p, _ in jobs], reference_stats=reference)
        reports[mode] = report.to_dict()
        print(f"--- tumour_placement={mode!r}" + (" (the sampler's default)" if mode == cfg.tumour_placement else ""))
        for line in report.summary_lines():
            print(line)
    if args.out:
        Path(args.out).write_text(
            json.dumps(reports if len(modes) > 1 else reports[modes[0]], indent=1), encoding="utf-8"
        )


if __name__ == "__main__":
    main()
