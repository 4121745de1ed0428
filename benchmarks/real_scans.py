"""The bundled real CT scans with labels, at native resolution, in GuideGen ids (a helper of
``fit_texture.py`` and ``byom_native.py``; a script's folder is on ``sys.path``).

Each scan carries why it is, or is not, used to fit the texture model: only scans at their native
reconstruction with a soft-tissue kernel are fitted, and ``amos-0001-slices`` is held out (the
shipped image generator never trained on it; it is the acceptance map).
"""

from __future__ import annotations

from pathlib import Path

from guidegen.data.phase import estimate_phase
from guidegen.data.prepare import load_case
from guidegen.images.texture_fit import FitScan
from guidegen.io.layouts import discover_cases
from guidegen.labels.vocabulary import ID

#: scan → (fitted?, why; source and licence). Folders under data/real or the shared data folder.
SCANS: dict[str, tuple[bool, str]] = {
    "amos-0013-slices": (
        True,
        "native 0.78 mm / 5 mm, soft kernel; AMOS 2022 case 13 (Ji et al., NeurIPS 2022), CC BY 4.0",
    ),
    "totalseg-example-b": (
        True,
        "native 0.98 mm / 2 mm DICOM series, soft kernel; TotalSegmentator repository "
        "test data (Wasserthal et al., Radiology: AI 2023), Apache-2.0",
    ),
    "amos-0001-slices": (
        False,
        "held out: the acceptance map (the shipped image generator never trained on it); AMOS 2022 case 1, CC BY 4.0",
    ),
    "s0009": (
        False,
        "sharp (bone) kernel spine CT, resampled to 1.5 mm by the dataset; TotalSegmentator dataset, CC BY 4.0",
    ),
    "totalseg-example-a": (
        False,
        "resampled to 3 mm (not a native reconstruction); TotalSegmentator repository, Apache-2.0",
    ),
    "msd-spleen-8": (False, "downsampled copy (through-plane noise smoothed); MSD Task09 case 8, CC BY-SA 4.0"),
    "lits-117-crop": (False, "voxel spacing unknown (header had none); LiTS 117 via MSD, CC BY-SA 4.0"),
    "dcmqi-ct-3slice": (False, "a DICOM fixture only (its data notes say so); dcmqi test data, BSD-3"),
}


def _contrast(ct, labels) -> bool:
    arr, lab = ct.array, labels.array
    means = {n: float(arr[lab == i].mean()) for n, i in ID.items() if (lab == i).sum() >= 100}
    counts = {n: int((lab == i).sum()) for n, i in ID.items()}
    return estimate_phase(means, counts).phase not in (None, "non_contrast")


def load_scans(data: str | Path = "data/real", shared: str | Path | None = "/work/shared/data") -> dict[str, FitScan]:
    """Every scan of `SCANS` that is present, as `FitScan` (labels in GuideGen ids)."""
    roots = [Path(data)]
    if shared is not None and (Path(shared) / "totalseg-dataset").is_dir():
        roots.append(Path(shared) / "totalseg-dataset")
    out: dict[str, FitScan] = {}
    for root in roots:
        for source in discover_cases(root):
            if source.case_id not in SCANS or source.image is None or source.case_id in out:
                continue
            vocabulary = "totalsegmentator" if source.vocabulary is None and source.case_id.startswith("s0") else None
            case = load_case(source, vocabulary=vocabulary)
            if case.ct is None or case.labels is None:
                continue
            fit, note = SCANS[source.case_id]
            labels = case.labels.with_array(
                case.labels.array, meta={**case.labels.meta, "annotated": sorted(case.annotated)}
            )
            out[source.case_id] = FitScan(source.case_id, case.ct, labels, _contrast(case.ct, labels), fit, note)
    return out
