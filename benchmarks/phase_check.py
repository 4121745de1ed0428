"""Does the requested contrast phase show in the generated CT? (a script, not a test; issue 8 part 4)

    .venv/bin/python benchmarks/phase_check.py [--model models/default] [--prepared prepared]
        [--case amos-0001-slices] [--generated N] [--threads 2]
    .venv/bin/python benchmarks/phase_check.py --cases OUT_NC OUT_PV   # measure `guidegen generate` output

Renders the same label maps in every contrast phase and prints, per phase, the mean HU of aorta,
liver, spleen and kidneys in the generated CT next to the published range for that phase. The
label maps are ones the image generator did not train on: the held-out prepared case (the demo
recipe holds out amos-0001-slices) and, with ``--generated N``, N maps drawn by the mask sampler.
With ``--cases``, nothing is generated: the script measures the case folders (``case_*/ct.nii.gz``,
``labels.nii.gz``, ``case.json``) that ``guidegen generate --prompt "…"`` wrote, against the range of
the phase each case was generated in (issue 8: the prompt's phase through the whole pipeline).
Means are taken inside each structure eroded by one voxel, so boundary voxels (partial volume
with fat) do not pull them down.

Ranges: liver and aorta as stated in issue 8 (non-contrast liver 45–65, portal venous 100–130;
aorta non-contrast 30–50, arterial > 250, portal venous 150–200). The others are typical
teaching values (approximate, marked "~"): non-contrast spleen 35–55, kidneys 25–45; arterial
liver 60–90, spleen 90–160, kidney cortex 150–250; portal venous spleen 100–140, kidneys 140–200;
delayed liver 80–110, aorta 100–150, spleen 90–120, kidneys 100–180.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import ndimage

from guidegen.data.phase import PUBLISHED_RANGE_HU as RANGES

CITED = {
    ("non_contrast", "aorta"),
    ("non_contrast", "liver"),
    ("arterial", "aorta"),
    ("portal_venous", "aorta"),
    ("portal_venous", "liver"),
}
STRUCTURES = {
    "aorta": ("aorta",),
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidneys": ("kidney_left", "kidney_right"),
}


#: Fewest voxels for a structure's mean to be reported.
MIN_VOXELS = 20


def interior(labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Voxels of ``classes``, each eroded by one voxel (its rim is partial volume with fat)."""
    from guidegen.labels.vocabulary import ID

    mask = np.zeros(labels.shape, bool)
    for c in classes:
        mask |= ndimage.binary_erosion(labels == ID[c])
    return mask


def interior_mean(ct: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``ct`` over ``mask``; NaN under `MIN_VOXELS`."""
    return float(ct[mask].mean()) if mask.sum() >= MIN_VOXELS else float("nan")


def structure_means(ct: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: interior_mean(ct, interior(labels, classes)) for name, classes in STRUCTURES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--prepared", default="prepared", help="`guidegen prepare` output holding the held-out case")
    parser.add_argument("--case", default="amos-0001-slices")
    parser.add_argument("--generated", type=int, default=0, help="also N label maps drawn by the mask sampler")
    parser.add_argument("--phases", default="non_contrast,arterial,portal_venous,delayed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-steps", type=int, default=None, help="flow steps per slice (default: the model's)")
    parser.add_argument(
        "--steps", type=int, default=None, help="mask sampler steps for --generated maps (default: the model's)"
    )
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (guidegen.runtime)")
    parser.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or openvino (guidegen.runtime)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="the image generator's classifier-free guidance scale (default: the model's config)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        help="measure these `guidegen generate` output folders instead of generating",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cases:
        print_table(measure_cases(args.cases))
        return

    from guidegen.data.prepare import load_prepared
    from guidegen.io.nifti import read_nifti
    from guidegen.pipeline import GenerationSettings, GuideGen
    from guidegen.pipeline.generate import sampled_classes

    gg = GuideGen.from_pretrained(args.model)
    maps = []
    entries = [e for e in load_prepared(args.prepared) if e["case_id"] == args.case] if args.case else []
    for e in entries:
        real_ct = read_nifti(e["ct_path"], kind="ct")
        labels = read_nifti(e["labels_path"], kind="labels")
        maps.append(
            (
                f"{args.case} (real labels)",
                labels,
                structure_means(real_ct.array, labels.array),
                e.get("phase"),
                e["annotated"],
            )
        )
    if args.generated:
        coarse = gg.mask_sampler.sample_masks(
            "normal abdomen",
            n=args.generated,
            seed=[args.seed + i for i in range(args.generated)],
            steps=args.steps,
            precision=args.precision,
            backend=args.backend,
        )
        # As `GuideGen.generate` shows them: every class the sampler draws annotated.
        classes = sampled_classes(gg.mask_sampler.config.num_classes, gg.image_generator.config.num_classes)
        for i, c in enumerate(coarse):
            maps.append((f"sampled map {i}", gg._upsample(c), None, None, classes))
    phases = args.phases.split(",")
    guidance = gg.image_generator.config.guidance_scale if args.guidance is None else args.guidance
    print(
        f"runtime: {gg.warm_up(GenerationSettings(precision=args.precision, backend=args.backend))}; image steps "
        f"{args.image_steps or gg.image_generator.config.flow_steps}"
    )
    print(
        f"model {gg.info.get('model_id')}; label maps: {', '.join(m[0] for m in maps)}; phases: {', '.join(phases)}; "
        f"image guidance {guidance:g}"
    )
    rows = []
    for name, labels, real, real_phase, annotated in maps:
        if real is not None:
            rows.append((name, f"real CT ({real_phase})", real))
        for phase in phases:
            start = time.perf_counter()
            # A partial real map (AMOS: no bones) says which classes it annotates, as in training
            # and in validate_image_generator.py; sampled maps annotate every class of the sampler.
            ct = gg.image_generator.generate(
                labels,
                seed=args.seed,
                phase=phase,
                annotated=annotated,
                image_guidance=args.guidance,
                image_steps=args.image_steps,
                precision=args.precision,
                backend=args.backend,
            )[0]
            rows.append((name, phase, structure_means(ct.array, labels.array)))
            print(f"  {name}, {phase}: {time.perf_counter() - start:.0f} s", flush=True)
    print_table(rows)


def measure_cases(folders: list[str]) -> list[tuple[str, str, dict[str, float]]]:
    """(case, phase it was generated in, structure means) for every case folder under ``folders``."""
    from pathlib import Path

    from guidegen.io.layouts import read_json_object
    from guidegen.io.nifti import read_nifti

    rows = []
    for folder in folders:
        cases = sorted(Path(folder).glob("case_*"))
        if not cases:
            raise SystemExit(f"error: {folder}: no case_* folders (run `guidegen generate --out {folder}` first)")
        for case in cases:
            meta = read_json_object(case / "case.json")
            ct = read_nifti(case / "ct.nii.gz", kind="ct")
            labels = read_nifti(case / "labels.nii.gz", kind="labels")
            name = f"{Path(folder).name}/{case.name}: {meta.get('prompt', '')!r}"
            rows.append((name, meta.get("phase") or "unknown", structure_means(ct.array, labels.array)))
    return rows


def print_table(rows: list[tuple[str, str, dict[str, float]]]) -> None:
    print()
    print("| label map | requested phase | " + " | ".join(f"{s} HU (range)" for s in STRUCTURES) + " | in range |")
    print("|---|---|" + "---|" * (len(STRUCTURES) + 1))
    hits = total = 0
    for name, phase, means in rows:
        cells, inside = [], []
        for s in STRUCTURES:
            value = means[s]
            if phase in RANGES and not math.isnan(value):
                lo, hi = RANGES[phase][s]
                ok = lo <= value <= hi
                inside.append(ok)
                rng = f"{lo:.0f}–{hi:.0f}" if hi != math.inf else f"> {lo:.0f}"
                mark = "" if (phase, s) in CITED else "~"
                cells.append(f"{value:.0f} ({mark}{rng}){' ✓' if ok else ''}")
            else:
                cells.append("–" if math.isnan(value) else f"{value:.0f}")
        if inside:
            hits += sum(inside)
            total += len(inside)
        print(
            f"| {name} | {phase} | " + " | ".join(cells) + f" | {sum(inside)}/{len(inside)} |"
            if inside
            else f"| {name} | {phase} | " + " | ".join(cells) + " | |"
        )
    print(f"\nin range: {hits}/{total} (structure, phase) pairs")


if __name__ == "__main__":
    main()
