"""Bring your own mask at native resolution: generated vs real CT per structure (issue 28; a script, not a test).

    .venv/bin/python benchmarks/byom_native.py [--model models/default] [--seed 0] [--threads 2]
        [--data data/real] [--shared /work/shared/data] [--skip-secondary] | tee docs/results/byom_native.txt

Maps the shipped image generator never trained on, at their own resolution, with `generate_ct`:

1. **amos-0001-slices** (held out of training; 0.57 mm pixels, 5 mm slices; non-contrast): per
   structure the real CT's mean over all the structure's voxels, interior mean, fine grain, coarse
   grain and adjacent-slice change (`guidegen.images.grain`), the network's CT (``texture=False,
   levels=False``), the default without its border step (``borders=False``: "before") and the
   shipped default (texture, borders and levels on), and the ratios default / real; over all slices and over the
   inner slices (without the first and last input slice, which issue 28 part A treats).
2. **A tumour** (a 30 mm ball in the same map's liver) in every contrast phase: the network's
   tumour and liver levels, the level step's target and result, next to the real references
   (LiTS 117 portal venous; unenhanced colorectal carcinoma, Oto et al. 2003). The default here is
   `guidegen.images.native.finish_native` applied to the network's int16 CT, as `generate_ct` does
   (from its float CT: at most 0.5 HU apart; without its border step, which moves interior means by
   under 2 HU), to save one generation per phase.
3. **s0009** (TotalSegmentator dataset; never trained on by image generators before vocabulary 2,
   a training scan of those after it; 1.5 mm voxels, a sharp bone kernel; non-contrast): a 60 mm
   slab through the spleen, with a 20 mm ball of tumour in the colon where the
   slab has colon; slices here are finer than the model's 3 mm, as in the issue's own map.

Grain, slice change and correlations are defined in `guidegen.images.grain`. Means are interior
means (3 mm in from the border in-plane; tumours 2 mm).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np
import torch
from real_scans import load_scans  # a script's folder is on sys.path
from scipy import ndimage

from guidegen.images.any_grid import generate_ct
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.grain import interior, measure_texture, slice_axis, to_slices_last
from guidegen.images.levels import (
    CARCINOMA_UNENHANCED_HU,
    LITS_LIVER_HU,
    LITS_TUMOUR_HU,
    UNENHANCED_AORTA_HU,
    tumour_hu,
)
from guidegen.images.native import finish_native
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID

STRUCTURES = (
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "aorta",
    "inferior_vena_cava",
    "portal_vein",
    "muscle",
    "pancreas",
    "gallbladder",
    "stomach",
    "colon",
    "bone",
    "tumour",
)
PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown CPU"
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    extra = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(extra) or 'no avx512_bf16 / amx_bf16'})"


def inner_slices(volume: Volume) -> Volume:
    """The volume without its first and last slice along the slice axis."""
    axis = slice_axis(volume.affine)
    index = [slice(None)] * 3
    index[axis] = slice(1, volume.shape[axis] - 1)
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, axis]  # voxel 0 is the old voxel 1
    return Volume(np.ascontiguousarray(volume.array[tuple(index)]), affine, volume.kind, dict(volume.meta))


def fmt(value: float | None, width: int = 6, digits: int = 1) -> str:
    return f"{'—':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{'—':>5}" if a is None or b is None or b == 0 else f"{a / b:5.2f}"


def table(
    title: str,
    labels: Volume,
    real: Volume,
    network: Volume,
    before: Volume,
    final: Volume,
    no_real: tuple[str, ...] = (),
) -> None:
    """Per structure: real, network, before (the default without the border step) and default
    mean over all the structure's voxels ("all") / interior mean / fine grain / coarse grain / slice
    change, ratios default / real (``no_real``: structures the real CT does not have, e.g. an
    inserted tumour)."""
    names = [n for n in STRUCTURES if np.any(labels.array == ID[n])]
    stats = {
        key: measure_texture(vol, labels, names)
        for key, vol in (("network", network), ("before", before), ("final", final))
    }
    stats["real"] = measure_texture(real, labels, [n for n in names if n not in no_real])
    whole = {
        key: {n: float(vol.array[labels.array == ID[n]].mean()) for n in names if key != "real" or n not in no_real}
        for key, vol in (("real", real), ("network", network), ("before", before), ("final", final))
    }
    print(f"\n{title}")
    print(
        f"{'structure':20s} | {'real: all   mean  grain coarse  Δslice':40s} | "
        f"{'network: all  mean grain Δslice':34s} | {'before: all  mean grain Δslice':34s} | "
        f"{'default: all  mean grain Δslice':34s} | grain Δslice ratio (default/real)"
    )
    for name in names:
        r, n, b, f = (stats[k].get(name) for k in ("real", "network", "before", "final"))
        if n is None and f is None:
            continue
        cells = [f"{name:20s}"]
        w = {k: whole[k].get(name) for k in whole}
        cells.append(
            f"{fmt(w['real'])} {fmt(r and r.mean)} {fmt(r and r.grain)} {fmt(r and r.coarse_grain)} "
            f"{fmt(r and r.adjacent_change, 7)} "
            "   "
            if r
            else f"{'(no real reference)':40s}"
        )
        cells.append(
            f"{fmt(w['network'])} {fmt(n and n.mean)} {fmt(n and n.grain)} {fmt(n and n.adjacent_change, 7)}      "
        )
        cells.append(
            f"{fmt(w['before'])} {fmt(b and b.mean)} {fmt(b and b.grain)} {fmt(b and b.adjacent_change, 7)}      "
        )
        cells.append(
            f"{fmt(w['final'])} {fmt(f and f.mean)} {fmt(f and f.grain)} {fmt(f and f.adjacent_change, 7)}      "
        )
        cells.append(f"{ratio(f and f.grain, r and r.grain)} {ratio(f and f.adjacent_change, r and r.adjacent_change)}")
        print(" | ".join(cells))


def ball(labels: Volume, host: str, radius_mm: float, keep_slices: int = 1) -> Volume | None:
    """The label map with a ball of tumour at the point of ``host`` deepest inside it (away from the
    first and last ``keep_slices`` slices), clipped to the host; ``None`` when the host is absent."""
    mask = labels.array == ID[host]
    axis = slice_axis(labels.affine)
    allowed = np.zeros_like(mask)
    index = [slice(None)] * 3
    index[axis] = slice(keep_slices, labels.shape[axis] - keep_slices)
    allowed[tuple(index)] = True
    if not (mask & allowed).any():
        return None
    depth = ndimage.distance_transform_edt(mask, sampling=labels.spacing) * allowed
    centre = np.array(np.unravel_index(np.argmax(depth), mask.shape), dtype=float)
    idx = np.indices(mask.shape, dtype=np.float32)
    r2 = sum(((idx[a] - centre[a]) * labels.spacing[a]) ** 2 for a in range(3))
    out = labels.array.copy()
    out[(r2 < radius_mm**2) & mask] = ID["tumour"]
    return labels.with_array(out)


def tumour_sweep(model, labels: Volume, seed: int, annotated: list[str]) -> None:
    print("\nTumour (30 mm ball in the held-out liver) by requested phase: interior means, HU")
    print(f"{'phase':14s} | network: tumour liver tumour−liver | default: tumour liver tumour−liver | target | seconds")
    axis = slice_axis(labels.affine)
    _, spacing = to_slices_last(labels.array, labels.spacing, axis)
    inner = {
        n: np.moveaxis(interior(to_slices_last(labels.array == ID[n], labels.spacing, axis)[0], spacing, d), -1, axis)
        for n, d in (("tumour", 2.0), ("liver", 3.0))
    }
    for phase in PHASES:
        started = time.perf_counter()
        net = generate_ct(model, labels, seed=seed, phase=phase, annotated=annotated, texture=False, levels=False)
        final, _ = finish_native(
            net.array.astype(np.float32), labels.array, labels.affine, model.config.spacing, seed=seed, phase=phase
        )
        final = np.clip(np.rint(final), -1024, 3071)
        seconds = time.perf_counter() - started
        t_n, l_n = float(net.array[inner["tumour"]].mean()), float(net.array[inner["liver"]].mean())
        t_f, l_f = float(final[inner["tumour"]].mean()), float(final[inner["liver"]].mean())
        print(
            f"{phase:14s} | {t_n:15.1f} {l_n:5.1f} {t_n - l_n:12.1f} | {t_f:15.1f} {l_f:5.1f} {t_f - l_f:12.1f} | "
            f"{tumour_hu('liver', phase):6.1f} | {seconds:5.0f}"
        )
    print(
        f"real references: LiTS 117 (portal venous) tumour {LITS_TUMOUR_HU} HU, liver {LITS_LIVER_HU} HU "
        f"(tumour−liver {LITS_TUMOUR_HU - LITS_LIVER_HU:.1f}); unenhanced colorectal carcinoma "
        f"{CARCINOMA_UNENHANCED_HU} HU "
        "(Oto et al., Eur Radiol 2003); unenhanced liver metastases are darker than the liver (45–65 HU)"
    )


def run_pair(
    model, labels: Volume, seed: int, phase: str, annotated: list[str]
) -> tuple[Volume, Volume, Volume, float, dict]:
    """The network's CT, the default without the border step ("before": ``borders=False``), the
    default, seconds for all three, the default's record."""
    started = time.perf_counter()
    network = generate_ct(model, labels, seed=seed, phase=phase, annotated=annotated, texture=False, levels=False)
    before = generate_ct(model, labels, seed=seed, phase=phase, annotated=annotated, borders=False)
    final = generate_ct(model, labels, seed=seed, phase=phase, annotated=annotated)
    seconds = time.perf_counter() - started
    return network, before, final, seconds, final.meta["native"]


def slab(labels: Volume, ct: Volume, around: str, slices: int) -> tuple[Volume, Volume]:
    axis = slice_axis(labels.affine)
    counts = (labels.array == ID[around]).sum(axis=tuple(a for a in range(3) if a != axis))
    centre = int(np.argmax(counts))
    lo = max(0, min(centre - slices // 2, labels.shape[axis] - slices))
    index = [slice(None)] * 3
    index[axis] = slice(lo, lo + slices)
    affine = labels.affine.copy()
    affine[:3, 3] += lo * affine[:3, axis]
    cut = lambda v: Volume(np.ascontiguousarray(v.array[tuple(index)]), affine, v.kind, dict(v.meta))  # noqa: E731
    return cut(labels), cut(ct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default="data/real")
    parser.add_argument("--shared", default="/work/shared/data")
    parser.add_argument("--skip-secondary", action="store_true", help="only the held-out AMOS map")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"# byom_native.py: {time.strftime('%Y-%m-%d')}, CPU {cpu_name()}, {args.threads} threads, seed {args.seed}; "
        f"load average at the start {load} (a shared machine: the seconds below are not comparable timings)"
    )
    model = ConditionalImageGenerator.from_pretrained(f"{args.model}/image_generator")
    scans = load_scans(args.data, args.shared)
    held = scans["amos-0001-slices"]
    annotated = list(held.labels.meta["annotated"])
    network, before, final, seconds, native = run_pair(model, held.labels, args.seed, "non_contrast", annotated)
    print(
        f"\namos-0001-slices: {held.labels.shape} at {[round(s, 2) for s in held.labels.spacing]} mm, non-contrast, "
        f"{seconds:.0f} s for the three CTs; border step: {native['borders']}; "
        f"slice-level step: {native['slice_levels']}; level step: {native['levels']}; "
        f"texture: {native['texture']}"
    )
    table("held-out AMOS 0001, all 10 slices", held.labels, held.ct, network, before, final)
    table(
        "held-out AMOS 0001, inner 8 slices (first and last left out: issue 28 part A)",
        inner_slices(held.labels),
        inner_slices(held.ct),
        inner_slices(network),
        inner_slices(before),
        inner_slices(final),
    )
    with_tumour = ball(held.labels, "liver", 15.0)
    tumour_sweep(model, with_tumour, args.seed, annotated + ["tumour"])
    lits = scans.get("lits-117-crop")
    if lits is not None:
        ref = measure_texture(lits.ct, lits.labels, ["tumour"])
        print(f"real LiTS 117 tumour (voxel size unknown, stored as 1 mm; portal venous): {ref['tumour'].to_dict()}")
    if args.skip_secondary or "s0009" not in scans:
        return
    s9 = scans["s0009"]
    labels9, ct9 = slab(s9.labels, s9.ct, "spleen", 40)
    with_colon = ball(labels9, "colon", 10.0, keep_slices=3)
    labels9 = with_colon if with_colon is not None else labels9
    network, before, final, seconds, native = run_pair(
        model, labels9, args.seed, "non_contrast", list(s9.labels.meta["annotated"]) + ["tumour"]
    )
    print(
        "\ns0009 (60 mm slab through the "
        f"spleen{', 20 mm tumour ball in the colon' if with_colon is not None else ''}): "
        f"{labels9.shape} at {[round(s, 2) for s in labels9.spacing]} mm, non-contrast, {seconds:.0f} s; "
        f"border step: {native['borders']}; "
        f"slice-level step: {native['slice_levels']}; level step: {native['levels']}; texture: {native['texture']}"
    )
    table(
        "s0009 slab (sharp-kernel real CT; the tumour ball has no real CT: its row shows the generated levels only)",
        labels9,
        ct9,
        network,
        before,
        final,
        no_real=("tumour",),
    )
    print(
        f"targets: unenhanced aorta {UNENHANCED_AORTA_HU:.1f} HU, colon tumour "
        f"{tumour_hu('colon', 'non_contrast'):.1f} HU"
    )


if __name__ == "__main__":
    main()
