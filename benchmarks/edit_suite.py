"""Edits of real scans (`guidegen edit`, issue 25): requested vs measured, the seam, tumour HU.

    .venv/bin/python benchmarks/edit_suite.py --out edit-suite.jsonl          # runs (resumable)
    .venv/bin/python benchmarks/edit_suite.py --out edit-suite.jsonl --summary > docs/results/edit_suite.txt

Every prompt of `PROMPTS` is applied to every scan of `SCANS` with the shipped model (seed 0). A
prompt whose host the scan lacks must be refused in one line (counted, not run). For each edit:

* requested vs measured: the tumours the edit added, measured on the new map as any GuideGen case
  (`guidegen.text.measure`): present in the stated host / colon segment, longest diameter within
  ±25 % of the stated one, count right (`guidegen.text.agreement` with tolerance 0.25);
* the seam (`guidegen.evaluation.edits.seam_jumps`): mean |ΔHU| between face neighbours one inside
  and one outside the regenerated region (and within the margin's blend zone), against neighbours of
  the same labels in the real scan away from the edit, and against the real scan across the same
  border (background air left out);
* each new tumour's interior mean HU and grain (`tumour_texture`), next to the real tumours of the
  bundled LiTS crop (the only real tumour CT bundled; the colon cancer mask has no CT).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from guidegen.errors import InputError
from guidegen.evaluation.edits import seam_jumps, tumour_texture
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.io.volume import canonical
from guidegen.labels.vocabulary import ID
from guidegen.paths import REPO_ROOT
from guidegen.pipeline.edit import edit_scan, read_ct
from guidegen.pipeline.folders import load_labels, model_component

REAL = REPO_ROOT / "data" / "real"
#: (name, CT path, labels path): NIfTI and DICOM, 3 mm / 2 mm / 5 mm slices, non-contrast and contrast.
SCANS = (
    ("totalseg-example-a", REAL / "totalseg-example-a" / "ct.nii.gz", REAL / "totalseg-example-a" / "labels.nii.gz"),
    ("totalseg-example-b", REAL / "totalseg-example-b" / "dicom", REAL / "totalseg-example-b" / "labels.nii.gz"),
    ("amos-0001-slices", REAL / "amos-0001-slices" / "ct.nii.gz", REAL / "amos-0001-slices" / "labels.nii.gz"),
    ("lits-117-crop", REAL / "lits-117-crop" / "ct.nii.gz", REAL / "lits-117-crop" / "labels.nii.gz"),
)
PROMPTS = (
    "add a 2 cm tumour in the liver",
    "add a 3 cm tumour in the liver",
    "add a 4 cm tumour in the liver",
    "add a 5 cm mass in the liver",
    "add two 2 cm tumours in the liver",
    "add a 3 cm tumour in the spleen",
    "add a 2 cm lesion in the spleen",
    "add a 2.5 cm tumour in the pancreas",
    "add a 3 cm mass in the pancreas",
    "add a 3 cm tumour in the left kidney",
    "add a 2 cm tumour in the right kidney",
    "add a 4 cm renal mass",
    "add a 4 cm tumour in the stomach",
    "add a 3 cm tumour in the sigmoid colon",
    "add a 4 cm tumour in the ascending colon",
    "add a 3 cm tumour in the descending colon",
    "add a 3 cm tumour in the transverse colon",
    "add a 4 cm tumour in the caecum",
    "add a 3 cm tumour",
    "add three 1.5 cm tumours in the liver",
    "enlarged spleen",
    "add a 3 cm tumour in the liver and a 3 cm tumour in the spleen",
)


def _run(out: Path, backend: str, precision: str, limit: int | None) -> None:
    from guidegen.settings import GenerationSettings

    done = set()
    if out.exists():
        done = {(r["scan"], r["prompt"]) for r in map(json.loads, out.read_text().splitlines())}
    generator = ConditionalImageGenerator.from_pretrained(model_component(None, "image_generator"))
    settings = GenerationSettings(backend=backend, precision=precision)
    for name, ct_path, labels_path in SCANS:
        ct = read_ct(ct_path)
        labels, annotated = load_labels(labels_path)
        real_c, labels_c = canonical(ct), canonical(labels)
        for prompt in PROMPTS[:limit]:
            if (name, prompt) in done:
                continue
            row: dict = {"scan": name, "prompt": prompt}
            started = time.perf_counter()
            try:
                (case,) = edit_scan(generator, ct, labels, prompt, annotated=annotated, seed=0, settings=settings)
            except InputError as exc:
                row["refused"] = str(exc)
            else:
                edited, new_labels = canonical(case.ct), canonical(case.labels)
                region = case.region
                row["requested"] = [dict(t.__dict__) for t in case.requested.tumours or ()]
                row["measured"] = case.measured
                row["seam"] = seam_jumps(
                    edited.array,
                    real_c.array,
                    new_labels.array,
                    region.distance_mm,
                    case.record["region"]["margin_mm"],
                    region.box,
                    exclude_labels=(ID["background"],),
                )
                new = (new_labels.array == ID["tumour"]) & (labels_c.array != ID["tumour"])
                components, count = ndimage.label(new)
                row["tumours"] = [
                    tumour_texture(edited.array, components == i, edited.spacing) for i in range(1, count + 1)
                ]
                row["levels"] = case.record["inpaint"]["tumour_levels"]
                row["grain"] = case.record["inpaint"].get("tumour_grain")
                row["seam_record"] = case.record["inpaint"].get("seam")  # offset field and kept gas
                row["phase"] = case.record["inpaint"]["phase"]
                row["runtime"] = case.record["inpaint"]["runtime"]
                row["region"] = case.record["region"]
            row["seconds"] = round(time.perf_counter() - started, 1)
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(name, prompt, "refused" if "refused" in row else row["measured"]["agreement"], row["seconds"])


def _real_tumours() -> list[dict]:
    """The LiTS 117 crop's own tumours (components of ≥ 50 voxels): interior mean and grain."""
    ct = read_ct(REAL / "lits-117-crop" / "ct.nii.gz")
    labels, _ = load_labels(REAL / "lits-117-crop" / "labels.nii.gz")
    tumour = canonical(labels).array == ID["tumour"]
    components, count = ndimage.label(tumour)
    hu = canonical(ct).array
    rows = [tumour_texture(hu, components == i, ct.spacing) for i in range(1, count + 1)]
    return [r for r in rows if r["voxels"] >= 50]


def _summary(out: Path) -> None:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    edits = [r for r in rows if "refused" not in r]
    refused = [r for r in rows if "refused" in r]
    print(f"guidegen edit suite: {len(PROMPTS)} prompts × {len(SCANS)} real scans = {len(rows)} requests")
    print(f"  run: {len(edits)} edits; refused: {len(refused)} (host absent from the scan, or no room)")
    tumour_edits = [r for r in edits if r["measured"]["agreement"]]
    fields: dict[str, list[bool]] = {}
    for r in tumour_edits:
        for key, held in r["measured"]["agreement"].items():
            fields.setdefault(key.split(".")[-1], []).append(bool(held))
    whole = [all(r["measured"]["agreement"].values()) for r in tumour_edits]
    print(f"\nrequested vs measured ({len(tumour_edits)} tumour edits; diameter tolerance ±25 %):")
    print(f"  every stated field held: {sum(whole)}/{len(whole)} = {np.mean(whole):.0%}")
    not_placed = [r for r in refused if "has no" not in r["refused"] and "states no edit" not in r["refused"]]
    attempted = len(whole) + len(not_placed)
    print(
        f"  counting the requests refused as not placeable in a host the scan has ({len(not_placed)}) as failures: "
        f"{sum(whole)}/{attempted} = {sum(whole) / max(attempted, 1):.0%}"
    )
    for key, values in sorted(fields.items()):
        print(f"  {key:12s} {sum(values)}/{len(values)} = {np.mean(values):.0%}")
    for r in tumour_edits:
        if not all(r["measured"]["agreement"].values()):
            failed = [k for k, v in r["measured"]["agreement"].items() if not v]
            print(f"    failed: {r['scan']}: {r['prompt']!r}: {', '.join(failed)}; measured {r['measured']['tumours']}")
    organ_edits = [r for r in edits if r["measured"]["organs"]]
    for r in organ_edits:
        for organ, entry in r["measured"]["organs"].items():
            print(
                f"  organ: {r['scan']}: {r['prompt']!r}: {organ} {entry.get('before_ml')} → "
                f"{entry.get('after_ml')} mL, holds {entry.get('holds')}"
            )
    print("\nseam (mean |ΔHU| between face neighbours of the same label; background air left out):")
    print(
        f"  {'scan':20s} {'prompt':48s} {'seam':>6s} {'blend':>6s} {'real':>6s} {'matched':>7s} {'real@seam':>9s}"
        "  pairs   (real: same labels away from the edit; matched: also the same pair directions; "
        "real@seam: the real CT across the same border)"
    )
    ok, ok_matched, ok_in_place = [], [], []
    for r in edits:
        s = r["seam"]
        if s["seam_hu"] is None or s["real_hu"] is None:
            continue
        ok.append(s["seam_hu"] <= s["real_hu"] and (s["blend_hu"] or 0) <= s["real_hu"])
        matched = s.get("real_matched_hu")
        if matched is not None:
            ok_matched.append(s["seam_hu"] <= matched and (s["blend_hu"] or 0) <= max(matched, s["real_hu"]))
        at_seam, in_blend = s.get("real_at_seam_hu"), s.get("real_in_blend_hu")
        if at_seam is not None:
            in_blend = at_seam if in_blend is None else in_blend
            ok_in_place.append(
                s["seam_hu"] <= max(s["real_hu"], at_seam) and (s["blend_hu"] or 0) <= max(s["real_hu"], in_blend)
            )
        print(
            f"  {r['scan']:20s} {r['prompt'][:48]:48s} {s['seam_hu']:6.1f} {s['blend_hu'] or float('nan'):6.1f} "
            f"{s['real_hu']:6.1f} {s.get('real_matched_hu') or float('nan'):7.1f} "
            f"{at_seam if at_seam is not None else float('nan'):9.1f}  {s['seam_pairs']}"
        )
    print(f"  seam and blend zone no rougher than the real scan away from the edit: {sum(ok)}/{len(ok)}")
    if ok_matched:
        print(
            "  ... the seam against pairs of the same labels and directions away from the edit (across 5 mm "
            f"slices neighbours differ more than in-plane): {sum(ok_matched)}/{len(ok_matched)}"
        )
    if ok_in_place:
        print(
            "  ... or than the real scan across the same border and in the same blend zone (where that is "
            f"rougher, e.g. bowel gas beside wall): {sum(ok_in_place)}/{len(ok_in_place)}"
        )
    print("\ntumour HU (interior mean, grain = std of HU minus its 3 mm in-plane average):")
    by: dict[tuple[str, str], list[dict]] = {}
    for r in edits:
        for level, texture in zip(r.get("levels") or [], r.get("tumours") or []):
            by.setdefault((str(level.get("host")), str(r["phase"])), []).append({**texture, **level})
    print(f"  {'host':10s} {'phase':14s} {'n':>3s} {'mean HU (range)':>24s} {'grain HU (range)':>20s}  target")
    for (host, phase), items in sorted(by.items()):
        items = [i for i in items if i["voxels"] >= 20]
        if not items:
            continue
        means = [i["mean_hu"] for i in items]
        grains = [i["grain_hu"] for i in items]
        targets = sorted({i.get("target_hu") for i in items if i.get("target_hu") is not None})
        print(
            f"  {host:10s} {phase:14s} {len(items):3d} {np.mean(means):8.1f} ({min(means):6.1f}–{max(means):6.1f})"
            f" {np.mean(grains):7.1f} ({min(grains):4.1f}–{max(grains):4.1f})  {targets[:3] or 'network level'}"
        )
    real = _real_tumours()
    means = [r["mean_hu"] for r in real]
    grains = [r["grain_hu"] for r in real]
    print(
        f"  real: LiTS 117 liver tumours, portal venous, n={len(real)}: mean {np.mean(means):.1f} "
        f"({min(means):.1f}–{max(means):.1f}), grain {np.mean(grains):.1f} ({min(grains):.1f}–{max(grains):.1f})"
    )
    print("  real colon tumours: none with CT bundled (the MSD colon case is a mask only)")
    seconds = [r["seconds"] for r in edits]
    runtimes = sorted({f"{r['runtime']['backend']} {r['runtime']['precision']}" for r in edits})
    print(f"\nseconds per edit: median {np.median(seconds):.0f}, max {max(seconds):.0f} ({', '.join(runtimes)})")
    print("refusals:")
    for r in refused:
        print(f"  {r['scan']}: {r['prompt']!r}: {r['refused']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("edit-suite.jsonl"))
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    args = parser.parse_args()
    if args.summary:
        _summary(args.out)
    else:
        _run(args.out, args.backend, args.precision, args.limit)


if __name__ == "__main__":
    main()
