"""Bone HU by depth below its surface: real CT against the network's and the level step's (a script, not a test).

    .venv/bin/python benchmarks/bone_profile.py [--model models/default] [--seed 0] [--threads 2] [--fit]
        | tee docs/results/bone_profile.txt

For every bundled real CT with labelled bone (`real_scans.SCANS`: TotalSegmentator s0009,
totalseg-example-a and -b), on two grids: its own, and 3 mm (what `guidegen generate` draws on):

* the real bone's mean HU per depth bin (`guidegen.images.levels.bone_depth`: in-plane depth of the
  voxel centre below the bone's surface) and over all its voxels;
* the network's CT of the scan's label map (`generate_ct` without texture and levels);
* the level step with the profiles pooled from the *other* scans (leave one out: what a scan the
  profiles never saw gets), and with the shipped `BONE_PROFILES` (pooled from all three, so
  in-sample for each scan);
* per scan the mean |ΔHU| over the depth bins, weighted by their voxels, and the whole bone's mean.

The profiles are fitted on grids of 1.5 mm and 3 mm in-plane voxels (each scan resampled there, CT
anti-aliased, labels shape-based; a scan coarser than a grid does not enter it). ``--fit`` prints
them in the form `BONE_PROFILES` takes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from byom_native import cpu_name  # a script's folder is on sys.path
from real_scans import load_scans

from guidegen.data.body import BODY_THRESHOLD_HU
from guidegen.grids.resample import resample_ct, resample_labels
from guidegen.images.any_grid import generate_ct
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.grain import slice_axis, to_slices_last
from guidegen.images.levels import BONE_PROFILES, bone_depth, scan_phase, set_bone_profile
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID

#: Depth bins (mm): the outer 3 mm are cortex and partial volume, deeper is marrow.
EDGES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, np.inf)


#: In-plane voxel sizes (mm) the profiles are fitted on.
GRIDS = (1.5, 3.0)


def slices_last(volume, like) -> tuple[np.ndarray, tuple[float, float, float]]:
    spacing = np.linalg.norm(like.affine[:3, :3], axis=0)
    return to_slices_last(np.asarray(volume.array), spacing, slice_axis(like.affine))


def on_grid(ct: Volume, labels: Volume, size: float | None) -> tuple[Volume, Volume]:
    """CT and labels resampled to ``size`` mm voxels (slices no thinner than they were); ``None``: as they are."""
    spacing = np.linalg.norm(ct.affine[:3, :3], axis=0)
    if size is None or np.allclose(spacing, size):
        return ct, labels
    axis = slice_axis(ct.affine)
    target = np.full(3, size)
    target[axis] = max(size, spacing[axis])
    affine = ct.affine.copy()
    affine[:3, :3] = affine[:3, :3] / spacing * target
    shape = tuple(int(np.floor(n * a / t)) for n, a, t in zip(ct.shape, spacing, target))
    return resample_ct(ct, affine, shape), resample_labels(labels, affine, shape, mark_outside_unknown=False)


def bone_arrays(ct: Volume, labels: Volume):
    hu, spacing = slices_last(ct, ct)
    lab, _ = slices_last(labels, ct)
    bone = lab == ID["bone"]
    return hu.astype(np.float32), lab, bone, bone_depth(bone, spacing), spacing


def binned(hu: np.ndarray, depth: np.ndarray, bone: np.ndarray) -> list[tuple[float, float, int] | None]:
    """Per depth bin: (mean depth, mean HU, voxels), or None when the bin is empty."""
    out: list[tuple[float, float, int] | None] = []
    for low, high in zip(EDGES[:-1], EDGES[1:]):
        sel = bone & (depth >= low) & (depth < high)
        n = int(sel.sum())
        out.append((float(depth[sel].mean()), float(hu[sel].mean()), n) if n else None)
    return out


def pooled(profiles: list[list[tuple[float, float, int] | None]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per bin the mean over the scans that have it (each scan weighted equally)."""
    depths, levels = [], []
    for b in range(len(EDGES) - 1):
        cells = [p[b] for p in profiles if p[b] is not None]
        if cells:
            depths.append(round(float(np.mean([c[0] for c in cells])), 2))
            levels.append(round(float(np.mean([c[1] for c in cells])), 1))
    return tuple(depths), tuple(levels)


def fitted(per_grid: dict[float, dict[str, list]], leave_out: str | None = None) -> tuple:
    """`BONE_PROFILES` pooled from the scans (all but ``leave_out``)."""
    return tuple((size, *pooled([p for n, p in scans.items() if n != leave_out])) for size, scans in per_grid.items())


def error(real: list, other: list) -> float:
    """Mean |ΔHU| over the bins, weighted by the real scan's voxels in each."""
    pairs = [(r[2], abs(o[1] - r[1])) for r, o in zip(real, other) if r is not None and o is not None]
    return sum(n * d for n, d in pairs) / sum(n for n, _ in pairs)


def row(label: str, cells: list, whole: float, err: float | None) -> str:
    text = " ".join(f"{c[1]:6.0f}" if c is not None else f"{'—':>6}" for c in cells)
    return f"  {label:34s} {text} | {whole:7.1f} | {'—' if err is None else f'{err:6.1f}'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fit", action="store_true", help="print the pooled profiles only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scans = {n: s for n, s in load_scans().items() if np.count_nonzero(s.labels.array == ID["bone"]) >= 1000}
    print(f"bone_profile.py: {time.strftime('%Y-%m-%d')}, CPU {cpu_name()}, {args.threads} threads, seed {args.seed}")
    print(f"depth bins (mm): {', '.join(f'{a:g}-{b:g}' for a, b in zip(EDGES[:-1], EDGES[1:]))}")
    per_grid: dict[float, dict[str, list]] = {}
    for size in GRIDS:
        per_grid[size] = {}
        for name, scan in scans.items():
            if min(np.linalg.norm(scan.ct.affine[:3, :3], axis=0)[:2]) > size + 1e-3:
                continue  # coarser than the grid
            hu, _, bone, depth, _ = bone_arrays(*on_grid(scan.ct, scan.labels, size))
            per_grid[size][name] = binned(hu, depth, bone)
            print(
                f"  real {name:22s} {size:g} mm "
                + " ".join(f"{c[1]:6.0f}" if c else f"{'—':>6}" for c in per_grid[size][name])
            )
    profiles = fitted(per_grid)
    print("pooled: BONE_PROFILES = (\n" + "".join(f"    ({p[0]}, {p[1]}, {p[2]}),\n" for p in profiles) + ")")
    if args.fit:
        return
    if profiles != BONE_PROFILES:
        print("NOTE: the shipped profiles differ from the pooled ones above")
    model = ConditionalImageGenerator.from_pretrained(f"{args.model}/image_generator")
    print(f"model {args.model}; per scan and grid: HU per depth bin | whole bone mean | mean |ΔHU| over the bins")
    for name, scan in scans.items():
        native = np.linalg.norm(scan.ct.affine[:3, :3], axis=0)
        for size in (None,) if np.allclose(native, 3.0) else (None, 3.0):
            ct, labels = on_grid(scan.ct, scan.labels, size)
            hu, lab, bone, depth, spacing = bone_arrays(ct, labels)
            phase = scan_phase(hu, lab)
            start = time.perf_counter()
            network = generate_ct(model, labels, seed=args.seed, phase=phase, texture=False, levels=False)
            net = slices_last(network, ct)[0].astype(np.float32)
            left_out, shipped = net.copy(), net.copy()
            set_bone_profile(left_out, bone, spacing, fitted(per_grid, leave_out=name))
            record = set_bone_profile(shipped, bone, spacing)
            drawn = bone & (net > BODY_THRESHOLD_HU)  # outside the model's field of view: air, left
            real = binned(hu, depth, drawn)
            grid = "×".join(f"{s:g}" for s in spacing)
            outside = f"{record.get('left_as_air', 0)} of {int(bone.sum())} bone voxels"
            print(
                f"{name} ({phase}, {grid} mm, {time.perf_counter() - start:.0f} s; {outside} outside the"
                " model's field of view, left out)"
            )
            print(row("real", real, float(hu[drawn].mean()), None))
            for label, vol in (
                ("network", net),
                ("level step, this scan left out", left_out),
                ("level step, shipped (in-sample)", shipped),
            ):
                cells = binned(vol, depth, drawn)
                print(row(label, cells, float(vol[drawn].mean()), error(real, cells)))


if __name__ == "__main__":
    main()
