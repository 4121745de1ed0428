"""Bring your own mask on the bundled real maps: body, HU per structure, unknown voxels (issue 28).

    .venv/bin/guidegen generate-ct -l data/real/totalseg-example-a/labels.nii.gz -o byom/ts-a
    .venv/bin/python benchmarks/byom_labels.py --outputs byom/ts-a [more generate-ct folders]
    .venv/bin/python benchmarks/byom_labels.py --unknown [--model models/default] [--slices 30]

``--outputs``: for each `guidegen generate-ct` output folder, the median HU of every structure of
its ``labels.nii.gz`` in the generated CT and, where the input map has a real CT beside it
(``ct.nii.gz`` in the same folder, on the same grid), in the real one; for "body" also the share of
its voxels that are fat (−190 … −30 HU) and soft tissue (−30 … 150 HU); and the slices whose
labelled voxels came out all air. Unknown voxels (255) are reported as "unknown".

``--unknown``: the lungs of totalseg-example-a (TotalSegmentator ids 10–14; the upper ``--slices``
slices, where the lung bases lie beside liver and spleen) marked "unknown" with a label set, then
generated twice: as `generate_ct` does (unknown voxels inside the body shown as "body") and as
before issue 28 (shown to the model as 255, which in training only ever marked voxels outside the
scan). Prints the HU of those voxels in both CTs and in the real CT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from guidegen.io.nifti import read_nifti
from guidegen.labels.vocabulary import ID, NAMES, UNKNOWN

FAT_HU, SOFT_HU = (-190.0, -30.0), (-30.0, 150.0)


def _share(values: np.ndarray, window: tuple[float, float]) -> float:
    return float(np.mean((values >= window[0]) & (values < window[1]))) if values.size else float("nan")


def measure_output(folder: Path) -> None:
    case = json.loads((folder / "case.json").read_text())
    ct = read_nifti(folder / "ct.nii.gz", kind="ct", reorient=False).array
    labels = read_nifti(folder / "labels.nii.gz", kind="labels", reorient=False).array
    source = Path(case["labels"])
    real = None
    if (source.parent / "ct.nii.gz").exists():
        real = read_nifti(source.parent / "ct.nii.gz", kind="ct", reorient=False).array
    elif source.suffix == ".dcm" and (source.parent / "ct").is_dir():  # a DICOM-SEG beside its CT series
        from guidegen.io.dicom import read_dicom_series

        series = read_dicom_series(source.parent / "ct")
        generated = read_nifti(folder / "ct.nii.gz", kind="ct", reorient=False)
        real = series.array if series.same_grid(generated, atol=1e-2) else None
    if real is not None and real.shape != ct.shape:
        real = None
    print(
        f"\n{folder}: {case['labels']} {tuple(case['shape'])} {case['orientation']}, body {case['body']}, "
        f"phase {case['phase']}, {case['unknown_voxels']} unknown voxels ({case['unknown_voxels_in_body']} inside "
        "the body)"
    )
    print(f"  {'structure':22s} {'voxels':>9s} {'generated HU':>12s} {'real HU':>8s}")
    for cls in np.unique(labels):
        if cls == 0:
            continue
        where = labels == cls
        name = "unknown" if cls == UNKNOWN else NAMES[cls]
        real_hu = f"{np.median(real[where]):8.0f}" if real is not None else "       –"
        print(f"  {name:22s} {int(where.sum()):9d} {np.median(ct[where]):12.0f} {real_hu}")
    body = labels == ID["body"]
    line = f"  body: fat {_share(ct[body], FAT_HU):.0%}, soft tissue {_share(ct[body], SOFT_HU):.0%} of its voxels"
    if real is not None:
        line += f" (real: fat {_share(real[body], FAT_HU):.0%}, soft tissue {_share(real[body], SOFT_HU):.0%})"
    print(line)
    labelled = (labels != 0) & (labels != UNKNOWN)
    air_slices = [
        k for k in range(ct.shape[2]) if labelled[..., k].any() and np.all(ct[..., k][labelled[..., k]] <= -900)
    ]
    print(
        f"  slices whose labelled voxels are all air: {air_slices or 'none'} of {ct.shape[2]}; "
        f"CT above −500 HU in {np.mean(ct[labelled] > -500):.0%} of the labelled voxels"
    )


def unknown_check(model_dir: Path, slices: int, seed: int) -> None:
    import guidegen.images.generator as generator_module
    from guidegen.images.any_grid import generate_ct
    from guidegen.images.generator import ConditionalImageGenerator
    from guidegen.io.volume import canonical
    from guidegen.labels.label_set import label_set
    from guidegen.labels.remap import load_vocabulary, remap_labels

    root = Path(__file__).resolve().parents[1] / "data" / "real" / "totalseg-example-a"
    raw = canonical(read_nifti(root / "labels.nii.gz", kind="labels", reorient=False))
    real = canonical(read_nifti(root / "ct.nii.gz", kind="ct", reorient=False))
    top = slice(raw.shape[2] - slices, raw.shape[2])
    table = {str(k): v for k, v in load_vocabulary("totalsegmentator").map.items()}
    table.update({str(k): "unknown" for k in range(10, 15)})  # the five lung lobes
    array, annotated = remap_labels(raw.array[..., top], label_set(table, "lungs-unknown"), affine=raw.affine)
    affine = raw.affine.copy()
    affine[:3, 3] = raw.world_coordinates(np.array([0, 0, top.start]))
    labels = raw.with_array(array, affine=affine)
    model = ConditionalImageGenerator.from_pretrained(
        model_dir / "image_generator" if (model_dir / "image_generator").is_dir() else model_dir
    )
    lungs = array == UNKNOWN
    real_hu = real.array[..., top][lungs]
    print(
        f"totalseg-example-a, upper {slices} slices: {int(lungs.sum())} lung voxels marked unknown (label set), seed "
        f"{seed}"
    )
    now = generate_ct(model, labels, seed=seed, annotated=sorted(annotated), phase="portal_venous")
    shown_as = generator_module.unknown_as_body
    generator_module.unknown_as_body = lambda volume: volume  # what the model was shown before issue 28: 255
    try:
        before = generate_ct(model, labels, seed=seed, annotated=sorted(annotated), phase="portal_venous")
    finally:
        generator_module.unknown_as_body = shown_as
    for name, values in (
        ("shown as body (now)", now.array[lungs]),
        ("shown as 255 (before)", before.array[lungs]),
        ("real CT", real_hu),
    ):
        print(
            f"  {name:22s} median {np.median(values):6.0f} HU, mean {np.mean(values):6.0f}, "
            f"fat {_share(values, FAT_HU):.0%}, soft tissue {_share(values, SOFT_HU):.0%}, below −500: "
            f"{np.mean(values < -500):.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", type=Path, nargs="*", default=[])
    parser.add_argument("--unknown", action="store_true")
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for folder in args.outputs:
        measure_output(folder)
    if args.unknown:
        unknown_check(args.model, args.slices, args.seed)


if __name__ == "__main__":
    main()
