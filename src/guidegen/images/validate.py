"""Quick validation of generated CT: per-organ mean HU against a real scan of the same label map.

Mean HU per structure is the first thing a radiologist checks (liver 50–60 HU unenhanced, fat
−100, bone > 200 …) and it needs no learned feature extractor. For a held-out prepared case,
generate a CT from its labels and compare organ by organ with the real CT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import NAMES

__all__ = ["compare_mean_hu", "organ_mean_hu", "validate_case"]


def organ_mean_hu(
    ct: Volume, labels: Volume, classes: Sequence[str] | None = None, min_voxels: int = 10
) -> dict[str, float]:
    """Mean HU of every labelled structure (with at least ``min_voxels`` voxels).

    Args:
        ct: CT `Volume` in HU.
        labels: label `Volume` on the same grid (GuideGen ids).
        classes: class names to report; default every class present except background.
        min_voxels: smaller structures are skipped (their mean is noise).
    """
    if not ct.same_grid(labels):
        raise ValueError("ct and labels must share one grid (shape and affine)")
    names = [n for n in NAMES[1:]] if classes is None else list(classes)
    arr = np.asarray(ct.array, dtype=np.float64)
    out: dict[str, float] = {}
    for name in names:
        if name not in NAMES:
            raise ValueError(f"classes: unknown class {name!r}")
        mask = labels.array == NAMES.index(name)
        if int(mask.sum()) >= min_voxels:
            out[name] = float(arr[mask].mean())
    return out


def compare_mean_hu(
    generated: Volume, real: Volume, labels: Volume, min_voxels: int = 10
) -> dict[str, dict[str, float]]:
    """Per-structure mean HU of a generated and a real CT of the same label map.

    Returns:
        ``{name: {"generated": HU, "real": HU, "difference": generated − real}}`` plus an entry
        ``"_summary"`` with ``mean_abs_difference`` (HU) over the structures.
    """
    gen = organ_mean_hu(generated, labels, min_voxels=min_voxels)
    ref = organ_mean_hu(real, labels, min_voxels=min_voxels)
    table = {
        n: {"generated": round(gen[n], 1), "real": round(ref[n], 1), "difference": round(gen[n] - ref[n], 1)}
        for n in ref
        if n in gen
    }
    diffs = [abs(v["difference"]) for v in table.values()]
    table["_summary"] = {"mean_abs_difference": round(float(np.mean(diffs)), 1) if diffs else float("nan")}
    return table


def validate_case(
    model, entry: dict, seed: int = 0, steps: int | None = None, phase: str | int | None = None
) -> dict[str, dict[str, float]]:
    """Generate a CT for a prepared case's labels and compare it with the real CT.

    Args:
        model: a `guidegen.images.generator.ConditionalImageGenerator`.
        entry: a `guidegen.data.prepare.load_prepared` entry with a CT (ideally a held-out case).
        seed, steps, phase: passed to ``model.generate`` (the case's annotated classes are used).
    """
    from guidegen.io.nifti import read_nifti

    if not entry.get("has_ct"):
        raise ValueError(f"case {entry.get('case_id')!r} has no real CT to compare with")
    labels = read_nifti(entry["labels_path"], kind="labels")
    real = read_nifti(entry["ct_path"], kind="ct")
    generated = model.generate(labels, seed, image_steps=steps, phase=phase, annotated=entry.get("annotated"))[0]
    return compare_mean_hu(generated, real, labels)
