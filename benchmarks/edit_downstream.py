"""Do edited real scans help a tumour segmenter? (issue 25, `guidegen evaluate downstream` for tumours)

    .venv/bin/python benchmarks/edit_downstream.py --work edit-downstream [--steps 1000] [--seeds 0,1,2]

1. The bundled real scans with labels and no tumours (`TRAIN`) are prepared at the generator's 3 mm
   (`guidegen prepare`), and the LiTS 117 crop (liver + real tumours) as the held-out test case.
2. Each training scan gets edited copies with liver tumours added (`EDITS`, `guidegen edit` with the
   shipped model), written as case folders (``ct.nii.gz``, ``labels.nii.gz``, ``case.json`` with the
   annotated classes: tumour is annotated in an edited copy).
3. `guidegen.evaluation.downstream.run_downstream` trains the small segmenter on real only and on
   real + edited copies, once per seed, and scores tumour Dice on the LiTS crop. Scored on tumours,
   the segmenter follows `guidegen.evaluation.downstream.focus_config` (tumour slices oversampled,
   Dice + cross-entropy, a soft-tissue window).

Without edits the real training scans hold no tumour at all, so "real only" cannot segment tumours:
the comparison says whether the edited tumours teach a segmenter anything that transfers to real ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.evaluation.downstream import run_downstream
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.io.nifti import read_nifti, write_nifti
from guidegen.paths import REPO_ROOT
from guidegen.pipeline.edit import edit_scan
from guidegen.pipeline.folders import model_component

REAL = REPO_ROOT / "data" / "real"
TRAIN = ("totalseg-example-a", "totalseg-example-b", "amos-0013-slices")
TEST = ("lits-117-crop",)
EDITS = ("add two 2 cm tumours in the liver", "add a 3 cm tumour in the liver")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("edit-downstream"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--copies", type=int, default=8, help="edited copies per scan and prompt")
    args = parser.parse_args()
    work = args.work
    config = PrepareConfig()
    for name, sources in (("train", TRAIN), ("test", TEST)):
        if not (work / name / "manifest.json").exists():
            result = prepare([REAL / s for s in sources], work / name, config, progress=False)
            if result.failed:
                raise SystemExit(f"prepare failed: {result.failed}")
    generator = ConditionalImageGenerator.from_pretrained(model_component(None, "image_generator"))
    edited_dir = work / "edited"
    for entry in load_prepared(work / "train"):
        ct = read_nifti(entry["ct_path"], kind="ct")
        labels = read_nifti(entry["labels_path"], kind="labels")
        annotated = frozenset(entry["annotated"])
        for p, prompt in enumerate(EDITS):
            folder = edited_dir / f"{Path(entry['ct_path']).parent.name}_{p}"
            if (folder / f"edit_{args.copies - 1:03d}" / "case.json").exists():
                continue
            cases = edit_scan(generator, ct, labels, prompt, n=args.copies, seed=100 * p, annotated=annotated)
            for case in cases:
                out = folder / f"edit_{case.index:03d}"
                out.mkdir(parents=True, exist_ok=True)
                write_nifti(case.ct, out / "ct.nii.gz", overwrite=True)
                write_nifti(case.labels, out / "labels.nii.gz", overwrite=True)
                (out / "case.json").write_text(
                    json.dumps({"prompt": prompt, "annotated": case.record["annotated"], "measured": case.measured})
                )
            print(folder.name, prompt, [c.measured["agreement"] for c in cases])
    seeds = [int(s) for s in args.seeds.split(",")]
    result = run_downstream(
        work / "train",
        edited_dir,
        work / "result",
        test_dir=work / "test",
        seeds=seeds,
        steps=args.steps,
        overwrite=True,
        classes=("tumour",),
        settings_run=("real", "real+synthetic"),
    )
    print((work / "result" / "downstream.md").read_text())
    print(json.dumps(result["settings"], indent=1))


if __name__ == "__main__":
    main()
