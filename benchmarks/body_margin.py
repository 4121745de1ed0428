"""How much tissue lies around the labelled organs? The margin of a derived body outline (issue 28).

    .venv/bin/guidegen prepare data/real --out prepared -q
    .venv/bin/python benchmarks/body_margin.py [--prepared prepared]

A label map without a body class (TotalSegmentator, AMOS, DICOM-SEG maps) gets a body outline
derived from its structures (`guidegen.data.body.derive_body`): the convex hull of the labelled
structures of each axial slice, over a slab of neighbouring slices, grown by a margin. This script
measures that margin on the prepared real maps whose body outline comes from their CT
(`guidegen.data.body.body_outline`): for each case, each slab and each margin it derives the outline
from the case's structures as `guidegen.data.body.derive_body` does (all of them, and without "bone" to
stand for maps that label no bones)
and prints the Dice with the CT's outline, on the slices that hold structures, inside the scan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from guidegen.data.body import grow_in_plane, slice_hulls
from guidegen.io.nifti import read_nifti
from guidegen.labels.vocabulary import ID, UNKNOWN

CASES = ("totalseg-example-a", "totalseg-example-b", "amos-0001-slices", "amos-0013-slices")
MARGINS = np.arange(0.0, 62.5, 2.5)
SLABS = (0.0, 30.0, 100.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path("prepared"))
    args = parser.parse_args()
    entries = {e["case_id"]: e for e in json.loads((args.prepared / "manifest.json").read_text())["cases"]}
    print(
        f"{'case':20s} {'structures':10s} {'slab':>7s} {'best margin':>11s} {'Dice':>5s}   Dice at 20 / 25 / 30 / 35 "
        "/ 40 mm"
    )
    for case in CASES:
        if case not in entries or not entries[case]["has_ct"]:
            print(f"{case:20s} not prepared with its CT: skipped")
            continue
        labels = read_nifti(args.prepared / "cases" / case / "labels.nii.gz", kind="labels")
        array, spacing = labels.array, labels.spacing
        inside_scan = array != UNKNOWN
        real = (array != 0) & inside_scan  # the CT's body outline: body plus every structure
        for variant in ("all", "no bone"):
            shown = array.copy()
            if variant == "no bone":
                if not (array == ID["bone"]).any():
                    continue
                shown[array == ID["bone"]] = ID["body"]
            shown[shown == ID["body"]] = 0  # a map without a body class
            slices = ((shown != 0) & inside_scan).any(axis=(0, 1))
            scored = inside_scan & slices[None, None, :]
            structures = (shown != 0) & inside_scan
            for slab in SLABS:
                hull = slice_hulls(structures, spacing, slab)  # `derive_body`, the hull computed once per slab
                dice = []
                for margin in MARGINS:
                    derived = grow_in_plane(hull, spacing, float(margin)) | structures
                    overlap = np.count_nonzero(derived & real & scored)
                    dice.append(2 * overlap / (np.count_nonzero(derived & scored) + np.count_nonzero(real & scored)))
                best = int(np.argmax(dice))
                at = " / ".join(f"{dice[int(np.flatnonzero(MARGINS == m)[0])]:.3f}" for m in (20, 25, 30, 35, 40))
                print(
                    f"{case:20s} {variant:10s} ±{slab:4.0f} mm {MARGINS[best]:8.1f} mm {dice[best]:.3f}   {at}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
