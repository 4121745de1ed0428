"""Left and right in the default mask sampler's maps (issue 24; a script, not a test).

    .venv/bin/python benchmarks/mask_sides.py [--model models/default/mask_sampler] [--out sides.json]
        [--maps maps.npz]

Samples one map per prompt of `PROMPTS` (seed = prompt index, fp32 torch), once as the network
draws it and once after the placement stage (`guidegen.masks.sampler.apply_statements`, the
default), and prints for each map `guidegen.evaluation.mask_anatomy.side_check` (left kidney left of
the right kidney, spleen left and liver right of the midline, world RAS+ mm), whether the kidney
labels are swapped (`guidegen.text.sides.kidneys_swapped`) and, for prompts stating a kidney tumour,
on which side of the midline the placed tumour lies and what the agreement check says.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = [
    "small renal tumor, 2.5 cm, right kidney",
    "small renal tumor, 2.5 cm, left kidney",
    "3 cm tumour in the right kidney",
    "left renal mass 45 mm",
    "normal CT of the abdomen and pelvis",
    "healthy abdomen, no tumour",
    "enlarged left kidney",
    "mild splenomegaly",
    "68-year-old man, 4 cm sigmoid colon cancer, mild splenomegaly, portal venous phase",
    "hepatocellular carcinoma 6 cm in the right lobe of the liver",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/default/mask_sampler")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the per-map results as JSON here")
    parser.add_argument("--maps", default=None, help="npz of the network's maps: read if it exists, else written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from guidegen.evaluation.mask_anatomy import side_check, wrong_sides
    from guidegen.io.volume import Volume
    from guidegen.labels.vocabulary import ID
    from guidegen.masks.sampler import VolumetricMaskSampler, apply_statements, sampler_grid
    from guidegen.text.agreement import tumour_agreement
    from guidegen.text.measure import measure_labels
    from guidegen.text.parse import parse_prompt
    from guidegen.text.sides import kidneys_swapped, midline_x

    sampler = VolumetricMaskSampler.from_pretrained(args.model)
    start = time.perf_counter()
    network = []
    cached = args.maps is not None and Path(args.maps).exists()
    if cached:  # the network's maps of an earlier run of the same model (the caller's responsibility)
        grid = sampler_grid(sampler.config)
        network = [Volume(a, grid.copy(), "labels", {}) for a in np.load(args.maps)["maps"]]
    for b in range(0, len(PROMPTS) if not cached else 0, args.batch):
        chunk = PROMPTS[b : b + args.batch]
        network += sampler.sample_masks(
            chunk,
            seed=list(range(b, b + len(chunk))),
            tumour_placement="network",
            organ_sizes="network",
            aorta_placement="network",
            precision="fp32",
            backend="torch",
        )
        print(f"  sampled {len(network)}/{len(PROMPTS)} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    if args.maps and not cached:
        np.savez_compressed(args.maps, maps=np.stack([v.array for v in network]))
    rows = []
    for seed, (prompt, raw) in enumerate(zip(PROMPTS, network)):
        attributes = parse_prompt(prompt)
        placed = apply_statements(raw.with_array(raw.array.copy()), attributes, seed)
        row = {"seed": seed, "prompt": prompt}
        for name, volume in (("network", raw), ("placed", placed)):
            sides = side_check(volume)
            row[name] = {"sides": sides, "wrong_side": wrong_sides(sides), "kidneys_swapped": kidneys_swapped(volume)}
        kidney = [t for t in attributes.tumours or () if t.organ in ("kidney_right", "kidney_left")]
        if kidney:
            index = np.argwhere(placed.array == ID["tumour"])
            x = float(placed.world_coordinates(index.mean(axis=0))[0]) if len(index) else None
            midline = midline_x(placed, placed.array)
            row["tumour"] = {
                "stated": kidney[0].organ,
                "world_side": None if x is None or midline is None else ("right" if x > midline else "left"),
                "agreement": tumour_agreement(attributes.tumours, measure_labels(placed).attributes.tumours),
            }
        rows.append(row)

    cfg = sampler.config
    print(
        f"mask sampler {args.model}: {cfg.shape} at {cfg.spacing} mm, {cfg.sample_steps} steps, fp32 torch; "
        f"{len(PROMPTS)} maps in {seconds:.0f} s{' (read from ' + args.maps + ')' if cached else ''}"
    )
    for row in rows:
        net, put = row["network"], row["placed"]
        line = (
            f"  seed {row['seed']}: network wrong side: {', '.join(net['wrong_side']) or 'none'}"
            f"{' (kidney labels swapped)' if net['kidneys_swapped'] else ''}; placed: "
            f"{', '.join(put['wrong_side']) or 'none'}"
        )
        if "tumour" in row:
            t = row["tumour"]
            line += (
                f"; tumour stated {t['stated']}, lies {t['world_side']}, agreement all {all(t['agreement'].values())}"
            )
        print(f"{line}  [{row['prompt']}]")
    for name in ("network", "placed"):
        scored = [r for r in rows if any(v is not None for v in r[name]["sides"].values())]
        wrong = sum(bool(r[name]["wrong_side"]) for r in scored)
        untestable = {k: sum(r[name]["sides"][k] is None for r in rows) for k in rows[0][name]["sides"]}
        print(
            f"{name}: {wrong}/{len(scored)} maps with an organ on the wrong side; per test failing "
            + ", ".join(f"{k} {sum(r[name]['sides'][k] is False for r in rows)}" for k in rows[0][name]["sides"])
            + f"; not testable {untestable}"
        )
    tumours = [r["tumour"] for r in rows if "tumour" in r]
    right = sum(t["world_side"] == t["stated"].split("_")[1] for t in tumours)
    print(f"kidney tumours on the stated side of the patient: {right}/{len(tumours)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
