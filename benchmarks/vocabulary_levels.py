"""Lungs, heart, muscles, bone and vessels in CT drawn from real label maps (issue 24; a script, not a test).

    .venv/bin/python benchmarks/vocabulary_levels.py [--models models/default OTHER ...]
        [--maps data/real/totalseg-dataset/s0006 data/real/totalseg-dataset/s0012] [--seed 0]

For each TotalSegmentator label map given (folders with ``labels.nii.gz``; the defaults are the two
complete maps that no shipped network trains on), the slab from the kidneys' lower pole to 30 mm above
the liver dome (lung bases, heart, liver, spleen, kidneys, spine, ribs, psoas and back muscles) is
remapped to GuideGen ids and given to each model's image generator (`generate_ct`, texture and data
levels on, as `guidegen generate-ct` runs) in two contrast phases. Printed: every structure's
interior mean HU (eroded by one voxel) per model and phase, next to a typical range for CT.

A model trained before vocabulary 2 (18 classes) is shown lungs, heart, muscles and the other vessels
as "body", as it was trained (`guidegen.labels.vocabulary.fold_for_model`): its row shows what
`generate-ct` drew for them before these classes existed.

Typical ranges (teaching values, approximate): aerated lung −900 to −700 HU; skeletal muscle 35–60
non-contrast, 45–75 portal venous; bone (vertebrae, ribs, pelvis as labelled: cortex and marrow
together) 200–600; heart blood pool 30–50 non-contrast, 120–200 portal venous; the portal vein, iliac
arteries like the aorta (`guidegen.data.phase`), iliac veins like the IVC.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guidegen.images.any_grid import generate_ct  # noqa: E402
from guidegen.images.generator import ConditionalImageGenerator  # noqa: E402
from guidegen.io.nifti import read_nifti  # noqa: E402
from guidegen.io.volume import Volume, canonical  # noqa: E402
from guidegen.labels.remap import remap_labels  # noqa: E402
from guidegen.labels.vocabulary import ID, NAMES  # noqa: E402
from guidegen.settings import GenerationSettings  # noqa: E402

STRUCTURES = (
    "lung",
    "heart",
    "muscle",
    "bone",
    "liver",
    "spleen",
    "kidney_right",
    "aorta",
    "inferior_vena_cava",
    "portal_vein",
    "other_artery",
    "other_vein",
    "body",
)
RANGES = {
    "non_contrast": {
        "lung": (-900, -700),
        "heart": (30, 50),
        "muscle": (35, 60),
        "bone": (200, 600),
        "liver": (45, 65),
        "spleen": (35, 55),
        "kidney_right": (25, 45),
        "aorta": (30, 50),
        "inferior_vena_cava": (30, 50),
        "portal_vein": (30, 50),
        "other_artery": (30, 50),
        "other_vein": (30, 50),
    },
    "portal_venous": {
        "lung": (-900, -700),
        "heart": (120, 200),
        "muscle": (45, 75),
        "bone": (200, 600),
        "liver": (100, 130),
        "spleen": (100, 140),
        "kidney_right": (140, 200),
        "aorta": (150, 200),
        "inferior_vena_cava": (100, 160),
        "portal_vein": (150, 200),
        "other_artery": (150, 200),
        "other_vein": (100, 160),
    },
}


def abdominal_slab(labels: Volume) -> Volume:
    """The z range from the kidneys' lower pole to 30 mm above the liver dome (RAS+ canonical)."""
    x = canonical(labels)
    arr = x.array
    z_kidney = np.nonzero(np.isin(arr, [ID["kidney_right"], ID["kidney_left"]]).any(axis=(0, 1)))[0]
    z_liver = np.nonzero((arr == ID["liver"]).any(axis=(0, 1)))[0]
    lo = int(z_kidney.min()) if z_kidney.size else 0
    hi = int(z_liver.max()) + int(round(30.0 / x.spacing[2])) if z_liver.size else arr.shape[2] - 1
    hi = min(hi, arr.shape[2] - 1)
    affine = x.affine.copy()
    affine[:3, 3] = x.world_coordinates(np.array([0, 0, lo]))
    return Volume(np.ascontiguousarray(arr[:, :, lo : hi + 1]), affine, "labels", dict(x.meta))


def interior_means(ct: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    out = {}
    for name in STRUCTURES:
        inner = ndimage.binary_erosion(labels == ID[name])
        if np.count_nonzero(inner) >= 20:
            out[name] = float(ct[inner].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["models/default"])
    parser.add_argument(
        "--maps", nargs="+", default=["data/real/totalseg-dataset/s0006", "data/real/totalseg-dataset/s0012"]
    )
    parser.add_argument("--phases", nargs="+", default=["non_contrast", "portal_venous"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"# vocabulary_levels.py: {time.strftime('%Y-%m-%d')}, seed {args.seed}, load average {load}")
    models = {m: ConditionalImageGenerator.from_pretrained(f"{m}/image_generator") for m in args.models}
    for folder in args.maps:
        raw = read_nifti(Path(folder) / "labels.nii.gz", kind="labels")
        ids, annotated = remap_labels(raw.array, "totalsegmentator", affine=raw.affine)
        slab = abdominal_slab(raw.with_array(ids))
        print(f"\n## {folder}: slab {slab.shape} at {[round(s, 2) for s in slab.spacing]} mm")
        for phase in args.phases:
            ranges = RANGES.get(phase, {})
            header = f"{'structure':20s} {'typical':>12s} " + " ".join(f"{Path(m).name[:14]:>14s}" for m in models)
            print(f"\n{phase}\n{header}")
            rows: dict[str, list[str]] = {name: [] for name in STRUCTURES}
            for model in models.values():
                settings = GenerationSettings(phase=phase)
                t0 = time.perf_counter()
                ct = generate_ct(model, slab, seed=args.seed, annotated=sorted(annotated), settings=settings)
                means = interior_means(canonical(ct).array, slab.array)
                for name in STRUCTURES:
                    rows[name].append(f"{means[name]:14.0f}" if name in means else f"{'—':>14s}")
                print(f"  ({time.perf_counter() - t0:.0f} s)", end="")
            print()
            for name in STRUCTURES:
                lo_hi = ranges.get(name)
                typical = f"{lo_hi[0]}…{lo_hi[1]}" if lo_hi else ""
                print(f"{name:20s} {typical:>12s} " + " ".join(rows[name]))
    print(f"\nclasses: {', '.join(NAMES[18:])} are vocabulary 2 (ids 18–22)")


if __name__ == "__main__":
    main()
