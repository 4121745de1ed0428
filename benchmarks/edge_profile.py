"""Mean HU of generated structures by distance from their edge, against the real CT.

Why: `phase_check.py` measures each structure's mean inside the label eroded by one voxel. A
generator whose organ edges are softer than real CT pulls those means down, most for thin or small
structures (a sampled map's aorta is 4-6 pixels across), even when the organ's core level is right.
This script separates the two: per structure, the mean HU of the pixels at in-plane distance 1
(the first pixel inside the label), 2, 3-4 and >= 5 pixels from the edge, and the eroded mean that
`phase_check.py` uses; for a real map the real CT's values beside them.

    python benchmarks/edge_profile.py --model models/default --prepared prepared \\
        --case amos-0001-slices --case totalseg-example-a --generated 2 --phase non_contrast

A real map is generated with its own annotated classes (as in training and in
`validate_image_generator.py`); ``--all-annotated`` treats every class as annotated instead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from phase_check import (
    interior,
    interior_mean,
)  # the eroded mean phase_check reports (a script's folder is on sys.path)
from scipy import ndimage

STRUCTURES = ("aorta", "inferior_vena_cava", "liver", "spleen", "kidney_left", "kidney_right")
#: In-plane distance bands [lo, hi) in pixels from outside the label (1 = the first pixel inside).
BANDS = ((1, 2), (2, 3), (3, 5), (5, 10_000))


def edge_profile(ct: np.ndarray, labels: np.ndarray, real: np.ndarray | None = None) -> dict[str, dict]:
    """Per structure: voxels, mean HU per distance band (and of ``real``), eroded-by-one mean."""
    from guidegen.labels.vocabulary import ID

    out = {}
    for name in STRUCTURES:
        mask = labels == ID[name]
        if not mask.any():
            continue
        dist = np.stack([ndimage.distance_transform_edt(mask[..., k]) for k in range(mask.shape[2])], -1)
        bands = []
        for lo, hi in BANDS:
            sel = (dist >= lo) & (dist < hi)
            enough = sel.sum() >= 10
            bands.append(
                (
                    float(ct[sel].mean()) if enough else float("nan"),
                    float(real[sel].mean()) if (real is not None and enough) else float("nan"),
                )
            )
        inner = interior(labels, (name,))
        out[name] = {
            "voxels": int(mask.sum()),
            "bands": bands,
            "eroded": interior_mean(ct, inner),
            "eroded_real": interior_mean(real, inner) if real is not None else float("nan"),
        }
    return out


def print_profile(name: str, profile: dict[str, dict]) -> None:
    print(f"\n{name}")
    head = " | ".join(f"d {lo}" + ("+" if hi > 100 else f"-{hi - 1}" if hi - lo > 1 else "") for lo, hi in BANDS)
    print(f"| structure | voxels | {head} | eroded by 1 |")
    print("|---|---|" + "---|" * (len(BANDS) + 1))
    for s, p in profile.items():
        cells = []
        for g, r in p["bands"]:
            cells.append("–" if np.isnan(g) else (f"{g:.0f}" if np.isnan(r) else f"{g:.0f} ({r:.0f})"))
        e = (
            "–"
            if np.isnan(p["eroded"])
            else f"{p['eroded']:.0f}" + ("" if np.isnan(p["eroded_real"]) else f" ({p['eroded_real']:.0f})")
        )
        print(f"| {s} | {p['voxels']} | " + " | ".join(cells) + f" | {e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--prepared", default="prepared")
    parser.add_argument("--case", action="append", default=[], help="prepared case id (repeatable)")
    parser.add_argument("--generated", type=int, default=0, help="also N label maps drawn by the mask sampler")
    parser.add_argument("--phase", default="non_contrast")
    parser.add_argument("--all-annotated", action="store_true", help="treat every class of a real map as annotated")
    parser.add_argument("--steps", type=int, default=None, help="flow steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from guidegen.data.prepare import load_prepared
    from guidegen.io.nifti import read_nifti
    from guidegen.pipeline import GuideGen

    gg = GuideGen.from_pretrained(args.model)
    entries = {e["case_id"]: e for e in load_prepared(args.prepared)} if args.case else {}
    maps = []
    for case in args.case:
        if case not in entries:
            raise SystemExit(f"error: {args.prepared}: no prepared case {case!r}")
        e = entries[case]
        maps.append(
            (
                f"{case} (real labels; real CT in brackets)",
                read_nifti(e["labels_path"], kind="labels"),
                read_nifti(e["ct_path"], kind="ct").array,
                None if args.all_annotated else e["annotated"],
            )
        )
    if args.generated:
        coarse = gg.mask_sampler.sample_masks(
            "normal abdomen", n=args.generated, seed=[args.seed + i for i in range(args.generated)]
        )
        maps += [(f"sampled map {i}", gg._upsample(c), None, None) for i, c in enumerate(coarse)]
    print(f"model {gg.info.get('model_id')}; phase {args.phase}; seed {args.seed}; steps {args.steps or 'default'}")
    for name, labels, real, annotated in maps:
        start = time.perf_counter()
        ct = gg.image_generator.generate(
            labels, seed=args.seed, phase=args.phase, annotated=annotated, image_steps=args.steps
        )[0]
        print_profile(f"{name}: {time.perf_counter() - start:.0f} s", edge_profile(ct.array, labels.array, real))


if __name__ == "__main__":
    main()
