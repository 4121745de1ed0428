"""Load the cases the evaluation suite compares: generated or real CT volumes with their label maps.

Two layouts are understood:

* **A cases folder**: case folders at any depth below it, each holding ``ct.nii.gz`` (HU) and
  ``labels.nii.gz`` (GuideGen class ids, same grid), optionally ``case.json`` (the generator writes
  the prompt, seed … there; a ``"prompt"`` key groups cases for the diversity metrics, an
  ``"annotated"`` list of class names marks the other classes unknown).
* **A prepared dataset** (``guidegen prepare`` output, recognised by its ``manifest.json``): each
  entry's ``"annotated"`` classes are known, every other class is unknown, and voxels with id 255
  (`guidegen.labels.vocabulary.UNKNOWN`) are unknown too. Entries without a CT are skipped.

Every metric ignores unknown voxels and, per case, classes that were not annotated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guidegen.data.prepare import MANIFEST, load_prepared
from guidegen.errors import InputError
from guidegen.io.layouts import read_json_object
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NUM_CLASSES, UNKNOWN

__all__ = [
    "CT_NAME",
    "LABELS_NAME",
    "CASE_JSON",
    "ALL_CLASSES",
    "HU_RANGE",
    "EvalCase",
    "normalise_hu",
    "load_cases",
    "find_case_folders",
]

CT_NAME = "ct.nii.gz"
LABELS_NAME = "labels.nii.gz"
CASE_JSON = "case.json"
#: Every GuideGen class id: the annotation of a generated case, whose label map is complete.
ALL_CLASSES: frozenset[int] = frozenset(range(NUM_CLASSES))
#: The evaluation networks' one fixed input mapping: HU clipped to this window, then linearly to [-1, 1].
#: Fixed (not per image) so that a global HU offset stays visible to the feature networks.
HU_RANGE: tuple[float, float] = (-1024.0, 2000.0)


def normalise_hu(hu: np.ndarray, hu_range: tuple[float, float] = HU_RANGE) -> np.ndarray:
    """HU → [-1, 1]: clip to ``hu_range`` then map linearly (float32, same shape)."""
    low, high = float(hu_range[0]), float(hu_range[1])
    if not high > low:
        raise ValueError(f"hu_range must be increasing, got {hu_range}")
    hu = np.clip(np.asarray(hu, dtype=np.float32), low, high)
    return ((hu - low) * (2.0 / (high - low)) - 1.0).astype(np.float32, copy=False)


@dataclass
class EvalCase:
    """One CT with its label map, as the metrics see it.

    Attributes:
        case_id: name of the case (its folder relative to the cases folder, or the manifest id).
        ct: CT in HU, shape (X, Y, Z), canonical RAS+ orientation.
        labels: GuideGen class ids on the CT's grid; 255 = unknown.
        annotated: ids of the classes whose voxels are all labelled (the others are unknown).
        meta: ``case.json`` or the manifest entry (free form).
    """

    case_id: str
    ct: Volume
    labels: Volume
    annotated: frozenset[int] = ALL_CLASSES
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str | None:
        """The prompt the case was generated from, when ``case.json`` records one."""
        prompt = self.meta.get("prompt")
        return prompt if isinstance(prompt, str) and prompt.strip() else None

    @property
    def known(self) -> np.ndarray:
        """Boolean (X, Y, Z): voxels whose class is known (label ≠ 255)."""
        return self.labels.array != UNKNOWN


def _annotated_ids(path: Path, names: Any) -> frozenset[int]:
    if names is None:
        return ALL_CLASSES
    if not isinstance(names, (list, tuple)):
        raise InputError(path, "'annotated' must be a list of class names")
    ids = set()
    for name in names:
        if name not in ID:
            raise InputError(path, f"'annotated' names an unknown class {name!r}")
        ids.add(ID[name])
    ids.add(ID["background"])  # "none of the annotated classes" is always known
    return frozenset(ids)


def _read_pair(case_id: str, ct_path: Path, labels_path: Path, annotated: frozenset[int], meta: dict) -> EvalCase:
    ct = read_nifti(ct_path, kind="ct")
    labels = read_nifti(labels_path, kind="labels")
    if not labels.same_grid(ct):
        raise InputError(
            labels_path,
            f"is not on the grid of {ct_path.name} (shape {labels.shape} vs {ct.shape} or different affine)",
        )
    bad = np.setdiff1d(np.unique(labels.array), [*range(NUM_CLASSES), UNKNOWN])
    if bad.size:
        raise InputError(
            labels_path, f"holds ids {bad.tolist()[:8]} that are not GuideGen classes (0-{NUM_CLASSES - 1}, 255)"
        )
    return EvalCase(case_id, ct, labels, annotated, meta)


def find_case_folders(folder: str | Path) -> list[Path]:
    """Folders at any depth below ``folder`` (itself included) holding both ct.nii.gz and labels.nii.gz, sorted."""
    folder = Path(folder)
    found = {p.parent for p in folder.rglob(CT_NAME) if (p.parent / LABELS_NAME).is_file()}
    return sorted(found)


def _is_prepared_manifest(path: Path) -> bool:
    """`guidegen prepare`'s manifest, not `guidegen generate`'s (which lists case folders beside it)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let load_prepared report what is wrong with it
    return not (isinstance(meta, dict) and "requested" in meta and "complete" in meta)


def load_cases(folder: str | Path) -> list[EvalCase]:
    """Read every case of a cases folder or a prepared dataset.

    Args:
        folder: a folder of case folders (any depth) or a ``guidegen prepare`` output folder.

    Returns:
        The cases sorted by id, volumes loaded.

    Raises:
        InputError: the folder is missing or holds no case, a file is unreadable, a label map is not
            on its CT's grid or holds ids that are not GuideGen classes, ``case.json`` is not JSON.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "no such folder")
    if not folder.is_dir():
        raise InputError(folder, "is not a folder of cases")
    cases: list[EvalCase] = []
    if (folder / MANIFEST).is_file() and _is_prepared_manifest(folder / MANIFEST):
        try:
            entries = load_prepared(folder)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise InputError(folder / MANIFEST, f"is not a valid prepared-dataset manifest ({exc})") from None
        for entry in entries:
            if not entry.get("ct_path"):
                continue  # a label map without CT (mask-only source): nothing to compare intensities with
            annotated = _annotated_ids(folder / MANIFEST, entry.get("annotated", []))
            cases.append(
                _read_pair(str(entry["case_id"]), Path(entry["ct_path"]), Path(entry["labels_path"]), annotated, entry)
            )
    else:
        for case_dir in find_case_folders(folder):
            meta: dict[str, Any] = {}
            meta_path = case_dir / CASE_JSON
            if meta_path.is_file():
                meta = read_json_object(meta_path)
            annotated = _annotated_ids(meta_path, meta.get("annotated"))
            case_id = case_dir.relative_to(folder).as_posix()
            cases.append(
                _read_pair(
                    folder.name if case_id == "." else case_id,
                    case_dir / CT_NAME,
                    case_dir / LABELS_NAME,
                    annotated,
                    meta,
                )
            )
    if not cases:
        raise InputError(
            folder,
            f"holds no case (expected folders with {CT_NAME} and {LABELS_NAME}, "
            f"or a prepared dataset's {MANIFEST} with CTs)",
        )
    return sorted(cases, key=lambda c: c.case_id)
