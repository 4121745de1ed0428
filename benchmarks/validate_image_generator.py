"""Held-out check of a trained image generator (a script, not a test).

    .venv/bin/python benchmarks/validate_image_generator.py --model runs/image_generator/model \
        --prepared prepared --case amos-0001-slices [--steps 6] [--out docs/images]

For a prepared case that the model did not train on (the demo recipe holds out amos-0001-slices),
generates a CT from the real label map, then prints per-structure mean HU (generated vs real), the
distribution of adjacent-slice differences (z-consistency: flicker would show as larger generated
differences than real), the time taken, and writes a picture with the real and generated CT.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from guidegen.data.prepare import load_prepared
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.validate import compare_mean_hu
from guidegen.io.nifti import read_nifti


def adjacent_slice_difference(ct: np.ndarray, body: np.ndarray) -> float:
    """Median |HU(k+1) − HU(k)| over voxels inside the body in both slices."""
    inside = body[..., 1:] & body[..., :-1]
    diff = np.abs(np.diff(ct.astype(np.float32), axis=2))[inside]
    return float(np.median(diff)) if diff.size else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prepared", default="prepared")
    parser.add_argument("--case", default="amos-0001-slices")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (guidegen.runtime)")
    parser.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or openvino (guidegen.runtime)")
    parser.add_argument("--out", default=None, help="folder for the comparison picture")
    parser.add_argument(
        "--phase", default=None, help="contrast phase to ask for (default: the prepared case's estimate)"
    )
    args = parser.parse_args()
    entry = next(e for e in load_prepared(args.prepared) if e["case_id"] == args.case)
    model = ConditionalImageGenerator.from_pretrained(args.model)
    real = read_nifti(entry["ct_path"])
    labels = read_nifti(entry["labels_path"], kind="labels")
    started = time.perf_counter()
    generated = model.generate(
        labels,
        seed=args.seed,
        image_steps=args.steps,
        phase=args.phase or entry.get("phase"),
        annotated=entry["annotated"],
        precision=args.precision,
        backend=args.backend,
    )[0]
    seconds = time.perf_counter() - started
    table = compare_mean_hu(generated, real, labels)
    body = (labels.array > 0) & (labels.array != 255)
    result = {
        "case": args.case,
        "phase": args.phase or entry.get("phase"),
        "seconds": round(seconds, 1),
        "slices": labels.shape[2],
        "steps": args.steps or model.config.flow_steps,
        "runtime": generated.meta["runtime"],
        "mean_hu": table,
        "adjacent_slice_median_abs_diff_hu": {
            "real": adjacent_slice_difference(real.array, body),
            "generated": adjacent_slice_difference(generated.array, body),
        },
    }
    print(json.dumps(result, indent=1))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        k = labels.shape[2] // 2
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
        for ax, (title, img) in zip(
            axes,
            [
                ("real CT (held out)", real.array[:, :, k]),
                ("generated CT", generated.array[:, :, k]),
                ("label map", labels.array[:, :, k].astype(float)),
            ],
        ):
            if title == "label map":
                img = np.where(img == 255, 0, img)
                ax.imshow(img.T[::-1, ::-1], cmap="tab20", vmin=0, vmax=20, interpolation="nearest")
            else:
                ax.imshow(img.T[::-1, ::-1], cmap="gray", vmin=-160, vmax=240)
            ax.set_title(title, color="white")
            ax.axis("off")
        fig.tight_layout()
        path = out / f"image_generator_{args.case}.png"
        fig.savefig(path, dpi=90, facecolor="black")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
