"""Realism of sampled label maps against held-out real ones (issue 24; a script, not a test).

    .venv/bin/python benchmarks/mask_realism.py [--model models/default] [-n 16] [--seed 0]
        [--prompt "normal CT of the abdomen and pelvis"] [--vocabulary totalsegmentator]
        [--real s0006/labels.nii.gz s0012/labels.nii.gz ...] [--maps maps.npz]
        [--picture docs/images/mask_realism_default.png] [--out realism.json]
        | tee docs/results/mask_realism_default.txt

Samples ``n`` label maps of one prompt from the model's mask sampler (seeds ``seed … seed + n - 1``)
and reads the real maps (any supported vocabulary: ``--vocabulary`` or ``--labels-json``, else a
``guidegen-source.json`` beside the map; see `guidegen.pipeline.folders.load_labels`). Each real map
is resampled (shape-based, `guidegen.evaluation.mask_realism.on_spacing`) to the sampler's voxel
spacing over its own extent, so that both sets are measured at one spacing; a real map's solid
organs and stomach that its field of view cuts are left out of the real statistics
(`guidegen.evaluation.mask_shape.CUT_SENSITIVE`). Then

1. the shape statistics of `guidegen.evaluation.mask_shape` per organ, sampled vs real: the table of
   `guidegen.evaluation.mask_realism.compare_shapes` (real range, sampled median and range, maps in
   range, Cohen's d), the energy distance of the standardised feature vectors with its permutation
   p-value, and the colon's continuity;
2. the organs the prompt leaves unchanged (`guidegen.evaluation.mask_unstated`): normal volume and
   whole inside the grid, as `guidegen.evaluation.masks.check_masks` reports them;
3. a picture: each real map beside sampled maps, axial / coronal / sagittal planes through each
   map's landmark (the kidneys' midpoint), on one millimetre scale.

Both the maps as the sampler delivers them (each organ's main component kept, the placement stage
with the model's settings: ``sample_masks`` defaults) and the network's own maps (no cleaning, no
placement) are scored, from one sampling run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from byom_native import cpu_name  # a script's folder is on sys.path

SHARED = Path("/work/shared/data/totalseg-dataset")
DEFAULT_REAL = [str(SHARED / s / "labels.nii.gz") for s in ("s0006", "s0012", "s0328")]


def picture(path: Path, real: list, sampled: list, names: list[str], title: str) -> None:
    """Rows: the real maps, then as many sampled maps; columns: axial, coronal, sagittal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from guidegen.evaluation.mask_shape import landmark_mm
    from guidegen.labels.vocabulary import CLASSES, ID, UNKNOWN, preview_colour

    hidden = {0, UNKNOWN, ID["body"], ID["bone"]}
    lut = np.zeros((256, 3))
    for c in CLASSES:
        if c.id not in hidden:
            lut[c.id] = np.asarray(preview_colour(c.id)) / 255.0
    lut[UNKNOWN] = (0.25, 0.25, 0.25)
    maps = [(f"real {n}", v) for n, v in zip(names, real)] + [
        (f"sampled #{v.meta.get('seed', i)}", v) for i, v in enumerate(sampled)
    ]
    half = 190.0  # mm either side of the landmark
    fig, axes = plt.subplots(len(maps), 3, figsize=(9, 3 * len(maps)), facecolor="black")
    for row, (label, volume) in enumerate(maps):
        centre = landmark_mm(volume)
        inverse = np.linalg.inv(volume.affine)
        index = np.round(inverse[:3, :3] @ centre + inverse[:3, 3]).astype(int)
        index = np.clip(index, 0, np.array(volume.shape) - 1)
        array = volume.array
        sx, sy, sz = volume.spacing
        ox, oy, oz = volume.world_coordinates(np.zeros(3)) - centre
        # RAS arrays shown as radiologists read them: patient's right on the image's left, anterior
        # and superior up.
        panels = {
            "axial": (array[:, :, index[2]].T, (ox, oy), (sx, sy)),
            "coronal": (array[:, index[1], :].T, (ox, oz), (sx, sz)),
            "sagittal": (array[index[0], :, :].T, (oy, oz), (sy, sz)),
        }
        for col, (plane, (image, (o0, o1), (s0, s1))) in enumerate(panels.items()):
            ax = axes[row, col]
            extent = (o0 - s0 / 2, o0 + s0 * (image.shape[1] - 0.5), o1 - s1 / 2, o1 + s1 * (image.shape[0] - 0.5))
            ax.imshow(lut[image], origin="lower", extent=extent, interpolation="nearest")
            ax.set_xlim(half, -half)  # patient's right / anterior on the image's left
            ax.set_ylim(-half, half)
            ax.set_facecolor("black")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(plane, color="white")
            if col == 0:
                ax.set_ylabel(label, color="white")
    shown = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "stomach", "small_bowel", "duodenum")
    shown += ("colon", "urinary_bladder", "aorta", "inferior_vena_cava", "gallbladder", "portal_vein")
    handles = [Patch(facecolor=lut[ID[n]], label=n.replace("_", " ")) for n in shown]
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False, labelcolor="white", fontsize=8)
    fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/default", help="model folder (or its mask_sampler/)")
    parser.add_argument("--prompt", default="normal CT of the abdomen and pelvis")
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument(
        "--real-start", type=float, default=None, help="start from a deformed real map of the bank (SDEdit strength)"
    )
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--real", nargs="+", default=DEFAULT_REAL, help="held-out real label maps")
    parser.add_argument("--vocabulary", default="totalsegmentator", help="the real maps' vocabulary ('' = sidecar)")
    parser.add_argument("--labels-json", default=None, help="the real maps' own label set instead")
    parser.add_argument("--organ-sizes", choices=["all", "scale", "network"], default=None, help="default: the model's")
    parser.add_argument("--maps", default=None, help="npz of the network's maps: read if present, else written")
    parser.add_argument("--picture", default=None, help="PNG of real beside sampled maps")
    parser.add_argument("--picture-samples", type=int, default=3)
    parser.add_argument("--out", default=None, help="full results as JSON")
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from guidegen.evaluation.mask_realism import compare_shapes, on_spacing
    from guidegen.evaluation.mask_shape import CUT_SENSITIVE, map_shapes
    from guidegen.evaluation.masks import check_masks
    from guidegen.io.volume import Volume
    from guidegen.masks.sampler import VolumetricMaskSampler, apply_statements, keep_main_components, sampler_grid
    from guidegen.pipeline.folders import load_labels
    from guidegen.text.parse import parse_prompt

    folder = Path(args.model)
    folder = folder / "mask_sampler" if (folder / "mask_sampler").is_dir() else folder
    sampler = VolumetricMaskSampler.from_pretrained(folder)
    cfg = sampler.config
    seeds = [args.seed + i for i in range(args.n)]
    cached = Path(args.maps) if args.maps else None
    start = time.perf_counter()
    if cached is not None and cached.exists():
        arrays = list(np.load(cached)["maps"])
        if len(arrays) != args.n:
            raise SystemExit(f"{cached}: holds {len(arrays)} maps, not {args.n}")
        how = f"read from {cached}"
    else:
        arrays = []
        for b in range(0, args.n, args.batch):
            chunk = seeds[b : b + args.batch]
            arrays += [
                v.array
                for v in sampler.sample_masks(
                    args.prompt,
                    n=len(chunk),
                    seed=chunk,
                    steps=args.steps,
                    guidance=args.guidance,
                    real_start=args.real_start,
                    precision=args.precision,
                    clean=False,
                    tumour_placement="network",
                    organ_sizes="network",
                    aorta_placement="network",
                )
            ]
            print(f"  sampled {len(arrays)}/{args.n} ({time.perf_counter() - start:.0f} s)", flush=True)
        if cached is not None:
            np.savez_compressed(cached, maps=np.stack(arrays))
        how = f"{(time.perf_counter() - start) / args.n:.1f} s per map"
    affine = sampler_grid(cfg)
    attributes = parse_prompt(args.prompt)
    network = [Volume(a, affine.copy(), "labels", {"prompt": args.prompt, "seed": s}) for a, s in zip(arrays, seeds)]
    # What `sample_masks` delivers with its defaults: main components kept, then the placement stage.
    sizes = args.organ_sizes or cfg.organ_sizes
    delivered = [
        apply_statements(
            v.with_array(keep_main_components(v.array)),
            attributes,
            v.meta["seed"],
            tumours=cfg.tumour_placement == "insert",
            organs=sizes in ("scale", "all"),
            unstated=sizes == "all",
            aorta=cfg.aorta_placement == "tube",
        )
        for v in network
    ]
    start = time.perf_counter()
    real = []
    for path in args.real:
        labels, annotated = load_labels(path, args.vocabulary or None, args.labels_json)
        real.append(on_spacing(labels, cfg.spacing))
        real[-1].meta["annotated"] = sorted(annotated)
    names = [Path(p).parent.name if Path(p).name.startswith("labels") else Path(p).name for p in args.real]
    real_shapes = [map_shapes(v, skip_cut=CUT_SENSITIVE) for v in real]
    print(
        f"mask realism: {folder} ({cfg.shape} at {cfg.spacing} mm, {args.steps or cfg.sample_steps} steps, "
        f"start {'noise' if args.real_start is None else f'real map at strength {args.real_start}'}, guidance "
        f"{cfg.guidance_scale if args.guidance is None else args.guidance}); prompt {args.prompt!r}, {args.n} maps "
        f"(seeds {seeds[0]}-{seeds[-1]}, {how}); real maps {', '.join(names)} resampled to {cfg.spacing} mm "
        f"({time.perf_counter() - start:.0f} s); CPU {cpu_name()}, torch threads {args.threads}, machine shared"
    )
    for name, shape in zip(names, real_shapes):
        print(f"  real {name}: cut by its field of view, left out: {', '.join(shape.cut) or 'none'}")
    results = {"prompt": args.prompt, "n": args.n, "seeds": seeds, "real": names, "model": str(folder)}
    for label, maps in (("delivered", delivered), ("network", network)):
        comparison = compare_shapes(real_shapes, [map_shapes(v) for v in maps], permutations=args.permutations)
        report = check_masks(maps, [args.prompt] * len(maps))
        title = (
            "as delivered (main components kept, placement stage: the sampler's defaults)"
            if label == "delivered"
            else "the network's maps (no cleaning, no placement)"
        )
        print(f"\n=== {label}: {title}")
        for line in comparison.table_lines():
            print(line)
        for line in report.summary_lines()[1:3] + [s for s in report.summary_lines() if "unstated" in s]:
            print(line)
        volumes = {
            name: [s.unstated[name].volume_ml for s in report.samples]
            for name in ("liver", "spleen", "kidney_right", "kidney_left", "pancreas")
        }
        for name, values in volumes.items():
            shown = ", ".join("–" if v is None else f"{v:.0f}" for v in values)
            print(f"  {name} mL per map: {shown}")
        results[label] = {"comparison": comparison.to_dict(), "unstated": report.unstated}
    results["real_shapes"] = {n: s.to_dict() for n, s in zip(names, real_shapes)}
    if args.picture:
        shown = delivered[: args.picture_samples]
        picture(Path(args.picture), real, shown, names, f"real (held out) vs sampled: {args.prompt!r}, as delivered")
        print(f"\npicture: {args.picture}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
