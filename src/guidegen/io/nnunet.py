"""Export CT volumes and label maps as an nnU-Net v2 raw dataset.

The layout is nnU-Net v2's "raw" format, so the folder can be placed (or written) straight into
``$nnUNet_raw`` and planned with ``nnUNetv2_plan_and_preprocess -d <id>``::

    Dataset042_GuideGenAbdomen/
        dataset.json
        imagesTr/{case}_0000.nii.gz   CT, int16 Hounsfield units (channel 0, named "CT")
        labelsTr/{case}.nii.gz        labels, uint8, nnU-Net ids 0..N

One fixed id table for every export: ``dataset.json["labels"]`` declares every class of the
vocabulary, numbered 1..N in increasing id (nnU-Net wants consecutive ids), whichever classes the
cases hold; GuideGen's ids are consecutive, so the nnU-Net ids *are* the GuideGen ids (liver is 4 in
every dataset). Datasets of different runs therefore share their labels and can be merged or
compared with one model. The mapping is also kept in ``dataset.json`` under ``"guidegen"`` (nnU-Net
ignores keys it does not know, so that block travels with the dataset).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from guidegen.errors import InputError
from guidegen.io.atomic import atomic_dir, write_text
from guidegen.io.nifti import write_nifti
from guidegen.io.volume import LabelInfo, Volume

#: nnU-Net's file ending for NIfTI datasets, and the single input channel (CT).
FILE_ENDING = ".nii.gz"
CHANNEL_NAMES = {"0": "CT"}
CHANNEL_SUFFIX = "_0000"
#: Key of our own block inside dataset.json, and the version of its layout.
GUIDEGEN_KEY = "guidegen"
GUIDEGEN_FORMAT = 1
#: Case ids become file names: letters, digits, "_" and "-" only (no dots, no path separators).
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
#: nnU-Net's rule for a dataset name (the part after ``Dataset###_``).
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
#: CT and labels count as one grid when affines agree to this many mm.
GRID_ATOL_MM = 1e-3

#: GuideGen's id for "class not known here" (`guidegen.labels.vocabulary.UNKNOWN`). The io layer
#: sits below the label vocabulary, so callers pass the classes and this id in.
DEFAULT_UNKNOWN_ID = 255

UnknownPolicy = Literal["refuse", "background"]


@dataclass(frozen=True)
class _Vocabulary:
    """The caller's class table, indexed both ways, plus the unknown id."""

    by_id: dict[int, LabelInfo]
    by_name: dict[str, LabelInfo]
    unknown_id: int

    @classmethod
    def build(cls, where: Path, label_classes: Sequence[LabelInfo], unknown_id: int) -> _Vocabulary:
        by_id = {int(c.id): c for c in label_classes}
        by_name = {c.name: c for c in label_classes}
        if len(by_id) != len(label_classes) or len(by_name) != len(label_classes):
            raise InputError(where, "label_classes has repeated ids or names")
        if 0 not in by_id or any(not 0 <= i < 256 for i in by_id):
            raise InputError(where, "label_classes must hold background (id 0) and ids below 256 only")
        if unknown_id in by_id or not 0 < unknown_id < 256:
            raise InputError(where, f"unknown_id {unknown_id} must be an unused id from 1 to 255")
        return cls(by_id, by_name, int(unknown_id))

    def names(self, ids: Iterable[int]) -> str:
        return ", ".join(f"{self.by_id[i].name} ({i})" for i in ids)


@dataclass(frozen=True)
class NnunetCase:
    """One training case.

    Attributes:
        case_id: nnU-Net case identifier, used in file names (letters, digits, "_", "-").
        ct: CT volume of kind "ct", Hounsfield units, shape (X, Y, Z).
        labels: label map of kind "labels" in GuideGen ids (0 = background; the unknown id 255
            allowed only with ``unknown="background"``), on the CT's grid.
    """

    case_id: str
    ct: Volume
    labels: Volume


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``"Dataset042_Name"``: nnU-Net's folder name for a dataset id and name."""
    return f"Dataset{dataset_id:03d}_{name}"


def write_nnunet_dataset(
    cases: Iterable[NnunetCase],
    out_dir: str | Path,
    dataset_id: int,
    name: str,
    *,
    label_classes: Sequence[LabelInfo],
    overwrite: bool = False,
    append: bool = False,
    unknown: UnknownPolicy = "refuse",
    unknown_id: int = DEFAULT_UNKNOWN_ID,
) -> Path:
    """Write (or extend) an nnU-Net v2 raw dataset ``out_dir/DatasetXXX_Name``.

    Label ids: every class of ``label_classes`` is declared, numbered 1..N in increasing id
    (background stays 0), whatever the cases hold, so every export has the same table; with
    GuideGen's vocabulary nnU-Net id = GuideGen id. ``dataset.json["labels"]``
    maps GuideGen class names to these nnU-Net ids, and ``dataset.json["guidegen"]`` records the
    mapping both ways ("nnunet_to_guidegen", "guidegen_to_nnunet"), the classes with their
    display names, the unknown-voxel policy and per-case provenance (source, unknown voxel
    count, when added). `read_nnunet_label_mapping` reads the mapping back.

    Unknown voxels (``unknown_id``, 255: class not known there, e.g. a class the source did not
    annotate) cannot be written as they are: nnU-Net accepts only the declared ids. By default
    (``unknown="refuse"``) a case holding any is refused, because training on them as background
    teaches the network that the unknown organ is absent. ``unknown="background"`` maps them to
    background (0) and records how many voxels were changed in each case's provenance; use it
    only when the unknown voxels are known to be background in practice (e.g. outside the body).

    Append mode (``append=True``) adds cases to an existing dataset written by this function:
    it keeps the existing id mapping (datasets written before the fixed table declared only the
    classes present), refuses cases whose classes are not in it (renumbering
    would invalidate the cases already there), refuses case ids already present, and updates
    ``numTraining``. New files are staged first and moved into place just before dataset.json
    is rewritten; if that fails they are removed again, so the dataset stays as it was.

    Args:
        cases: the training cases; at least one, with unique case ids (also ignoring case, for
            case-insensitive file systems).
        out_dir: parent folder, typically ``$nnUNet_raw``; created if missing.
        dataset_id: nnU-Net dataset id, 1-999.
        name: dataset name after the id (letters, digits, "_", "-").
        label_classes: the label vocabulary, normally `guidegen.labels.vocabulary.CLASSES`
            (passed in because the io layer does not import the vocabulary): id, name and
            display name of every class, background (id 0) included.
        overwrite: replace an existing dataset folder of the same name (new datasets only).
        append: add to an existing dataset instead of creating one.
        unknown: what to do with unknown voxels: ``"refuse"`` or ``"background"``.
        unknown_id: the vocabulary's "unknown" id (`guidegen.labels.vocabulary.UNKNOWN`).

    Returns:
        The dataset folder ``out_dir/DatasetXXX_Name``.

    Raises:
        InputError: bad id, name, case id or option; CT and labels on different grids; a volume
            of the wrong kind; label ids outside the vocabulary; unknown voxels with
            ``unknown="refuse"``; (append) a class outside the existing mapping;
            another folder with the same dataset id; (append) no dataset to
            extend, or one that this function did not write.
        OutputExistsError: the dataset folder exists and neither ``overwrite`` nor ``append``.
    """
    out_dir = Path(out_dir)
    _check_options(out_dir, dataset_id, name, overwrite, append, unknown)
    dataset_dir = out_dir / dataset_folder_name(dataset_id, name)
    vocabulary = _Vocabulary.build(dataset_dir, label_classes, unknown_id)
    cases = list(cases)
    if not cases:
        raise InputError(dataset_dir, "no cases to write")
    _check_case_ids(dataset_dir, [case.case_id for case in cases])
    label_arrays = [_checked_labels(dataset_dir, case, unknown, vocabulary) for case in cases]
    present_by_case = [_present_ids(array, vocabulary) for array in label_arrays]
    present = sorted(set().union(*present_by_case))
    _check_dataset_id_is_free(out_dir, dataset_id, dataset_dir)

    if append:
        dataset_json = _read_existing(dataset_dir, vocabulary)
        block = dataset_json[GUIDEGEN_KEY]
        mapping = {int(k): int(v) for k, v in block["guidegen_to_nnunet"].items() if int(k) != 0}
        declared = sorted(mapping)
        existing = {c.lower() for c in block.get("cases", {})}
        for case in cases:
            if case.case_id.lower() in existing or _case_files_exist(dataset_dir, case.case_id):
                raise InputError(dataset_dir, f"already holds a case {case.case_id!r}")
    else:
        declared = sorted(set(vocabulary.by_id) - {0})
        mapping = {guidegen_id: nnunet_id for nnunet_id, guidegen_id in enumerate(declared, start=1)}

    missing = [gid for gid in present if gid not in mapping]
    if missing:  # only an older dataset (classes present at the time) can lack a class
        offenders = [case.case_id for case, ids in zip(cases, present_by_case) if ids & set(missing)]
        raise InputError(
            dataset_dir,
            f"cases {', '.join(offenders)} hold classes {vocabulary.names(missing)} that are not in the existing "
            f"dataset's labels ({vocabulary.names(declared) or 'background only'}); nnU-Net ids must stay as they "
            "are, so write a new dataset (which declares every class)",
        )

    to_nnunet = np.zeros(256, dtype=np.uint8)  # GuideGen id → nnU-Net id
    for guidegen_id, nnunet_id in mapping.items():
        to_nnunet[guidegen_id] = nnunet_id
    # The unknown id stays 0 (background): only reachable with unknown="background" after the checks.

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    provenance = {
        case.case_id: {
            "source": str(case.ct.meta.get("source", "") or ""),
            "labels_source": str(case.labels.meta.get("source", "") or ""),
            "unknown_voxels_to_background": int(np.count_nonzero(array == vocabulary.unknown_id)),
            "added": now,
        }
        for case, array in zip(cases, label_arrays)
    }

    if append:
        dataset_json["numTraining"] = int(dataset_json["numTraining"]) + len(cases)
        block["cases"] = {**block.get("cases", {}), **provenance}
        block["updated"] = now
        _append_cases(dataset_dir, cases, label_arrays, to_nnunet, dataset_json)
        return dataset_dir

    dataset_json = _dataset_json(name, declared, len(cases), unknown, provenance, now, vocabulary)
    with atomic_dir(dataset_dir, overwrite) as tmp:
        _write_cases(tmp, cases, label_arrays, to_nnunet)
        write_text(tmp / "dataset.json", json.dumps(dataset_json, indent=2) + "\n")
    return dataset_dir


def read_nnunet_label_mapping(dataset_dir: str | Path) -> dict[int, int]:
    """nnU-Net id → GuideGen id of a dataset written by `write_nnunet_dataset` (0 → 0 included).

    Raises:
        InputError: no dataset.json, or one without the GuideGen block.
    """
    block = _read_existing(Path(dataset_dir), None)[GUIDEGEN_KEY]
    return {int(k): int(v) for k, v in block["nnunet_to_guidegen"].items()}


# --- checks -------------------------------------------------------------------------------------


def _check_options(out_dir: Path, dataset_id: int, name: str, overwrite: bool, append: bool, unknown: str) -> None:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise InputError(out_dir, f"nnU-Net dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise InputError(
            out_dir, f"dataset name {name!r} must be 1-100 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if overwrite and append:
        raise InputError(out_dir, "choose overwrite (replace the dataset) or append (add cases), not both")
    if unknown not in ("refuse", "background"):
        raise InputError(out_dir, f"unknown= must be 'refuse' or 'background', got {unknown!r}")


def _check_case_ids(dataset_dir: Path, case_ids: list[str]) -> None:
    seen: dict[str, str] = {}
    for case_id in case_ids:
        if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
            raise InputError(
                dataset_dir,
                f"case id {case_id!r} is not usable in file names: use 1-100 letters, digits, '_' or '-', "
                "starting with a letter or digit",
            )
        key = case_id.lower()  # two ids differing only in case collide on macOS/Windows file systems
        if key in seen:
            raise InputError(dataset_dir, f"case id {case_id!r} is given twice (or as {seen[key]!r})")
        seen[key] = case_id


def _checked_labels(dataset_dir: Path, case: NnunetCase, unknown: UnknownPolicy, vocabulary: _Vocabulary) -> np.ndarray:
    """Check one case; return its label array as uint8 GuideGen ids, shape (X, Y, Z)."""
    where = f"case {case.case_id!r}"
    if not isinstance(case.ct, Volume) or not isinstance(case.labels, Volume):
        raise InputError(dataset_dir, f"{where}: ct and labels must be Volume objects")
    if case.ct.kind != "ct":
        raise InputError(dataset_dir, f"{where}: ct is a volume of kind {case.ct.kind!r}, expected 'ct'")
    if case.labels.kind != "labels":
        raise InputError(dataset_dir, f"{where}: labels is a volume of kind {case.labels.kind!r}, expected 'labels'")
    if not case.ct.same_grid(case.labels, atol=GRID_ATOL_MM):
        raise InputError(
            dataset_dir,
            f"{where}: labels are not on the CT's grid (shape {case.labels.shape} vs {case.ct.shape}, "
            f"spacing {_rounded(case.labels.spacing)} vs {_rounded(case.ct.spacing)} mm, origin "
            f"{_rounded(case.labels.affine[:3, 3])} vs {_rounded(case.ct.affine[:3, 3])} mm)",
        )
    ct = case.ct.array
    if not np.issubdtype(ct.dtype, np.number) or np.issubdtype(ct.dtype, np.complexfloating):
        raise InputError(dataset_dir, f"{where}: CT has voxel type {ct.dtype}, expected Hounsfield units")
    if np.issubdtype(ct.dtype, np.floating) and not np.all(np.isfinite(ct)):
        raise InputError(dataset_dir, f"{where}: CT contains NaN or infinite values")

    array = case.labels.array
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.array_equal(array, np.round(array)):
            raise InputError(dataset_dir, f"{where}: labels have voxel type {array.dtype}, expected integer ids")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(dataset_dir, f"{where}: labels hold ids outside 0-255")
    array = array.astype(np.uint8, copy=False)
    counts = np.bincount(array.ravel(), minlength=256)
    unknown_id = vocabulary.unknown_id
    foreign = [int(i) for i in np.nonzero(counts)[0] if i not in vocabulary.by_id and i != unknown_id]
    if foreign:
        raise InputError(
            dataset_dir,
            f"{where}: labels hold ids {', '.join(map(str, foreign[:10]))} that are not GuideGen classes "
            f"({unknown_id} = unknown); remap them to the GuideGen vocabulary first",
        )
    if counts[unknown_id] and unknown == "refuse":
        raise InputError(
            dataset_dir,
            f"{where}: labels hold {int(counts[unknown_id])} unknown voxels (id {unknown_id}), which nnU-Net "
            "cannot take; pass unknown='background' to write them as background",
        )
    return array


def _present_ids(array: np.ndarray, vocabulary: _Vocabulary) -> set[int]:
    counts = np.bincount(array.ravel(), minlength=256)
    return {int(i) for i in np.nonzero(counts)[0] if i not in (0, vocabulary.unknown_id)}


def _check_dataset_id_is_free(out_dir: Path, dataset_id: int, dataset_dir: Path) -> None:
    """nnU-Net finds datasets by id: two folders with one id make ``-d <id>`` ambiguous."""
    if not out_dir.is_dir():
        return
    others = [
        p.name
        for p in out_dir.glob(f"Dataset{dataset_id:03d}_*")
        if p.is_dir() and p.name != dataset_dir.name and not p.name.startswith(".")
    ]
    if others:
        raise InputError(
            dataset_dir, f"dataset id {dataset_id} is already used by {', '.join(sorted(others))} in {out_dir}"
        )


def _case_files_exist(dataset_dir: Path, case_id: str) -> bool:
    return (dataset_dir / "imagesTr" / f"{case_id}{CHANNEL_SUFFIX}{FILE_ENDING}").exists() or (
        dataset_dir / "labelsTr" / f"{case_id}{FILE_ENDING}"
    ).exists()


def _read_existing(dataset_dir: Path, vocabulary: _Vocabulary | None) -> dict[str, Any]:
    """dataset.json of a dataset this module wrote; its ids checked against ``vocabulary``."""
    path = dataset_dir / "dataset.json"
    if not path.is_file():
        raise InputError(dataset_dir, "has no dataset.json: not an nnU-Net dataset to append to")
    try:
        dataset_json = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not readable JSON ({exc.__class__.__name__}: {exc})") from None
    block = dataset_json.get(GUIDEGEN_KEY) if isinstance(dataset_json, dict) else None
    if not isinstance(block, dict) or "guidegen_to_nnunet" not in block or "nnunet_to_guidegen" not in block:
        raise InputError(path, "was not written by GuideGen (no 'guidegen' id mapping): cannot append safely")
    try:
        pairs = [(int(k), int(v)) for k, v in block["guidegen_to_nnunet"].items()]
    except (AttributeError, TypeError, ValueError):
        raise InputError(path, "has an unreadable 'guidegen' id mapping") from None
    if vocabulary is not None and any(k not in vocabulary.by_id for k, _ in pairs):
        raise InputError(path, "maps ids that are not GuideGen classes in its 'guidegen' block")
    if dataset_json.get("channel_names") != CHANNEL_NAMES or dataset_json.get("file_ending") != FILE_ENDING:
        raise InputError(
            path,
            f"has channel_names {dataset_json.get('channel_names')} and file_ending "
            f"{dataset_json.get('file_ending')!r}, expected {CHANNEL_NAMES} and {FILE_ENDING!r}",
        )
    return dataset_json


# --- writing ------------------------------------------------------------------------------------


def _dataset_json(
    name: str,
    declared: list[int],
    n_cases: int,
    unknown: UnknownPolicy,
    provenance: dict[str, Any],
    now: str,
    vocabulary: _Vocabulary,
) -> dict[str, Any]:
    by_id, unknown_id = vocabulary.by_id, vocabulary.unknown_id
    labels = {"background": 0} | {by_id[gid].name: k for k, gid in enumerate(declared, start=1)}
    nnunet_to_guidegen = {"0": 0} | {str(k): gid for k, gid in enumerate(declared, start=1)}
    return {
        "name": name,
        "description": "Synthetic abdominal CT with label maps generated by GuideGen (not patient data)",
        "channel_names": dict(CHANNEL_NAMES),
        "labels": labels,
        "numTraining": n_cases,
        "file_ending": FILE_ENDING,
        GUIDEGEN_KEY: {
            "format": GUIDEGEN_FORMAT,
            "generator": f"guidegen {_version()}",
            "created": now,
            "updated": now,
            "nnunet_to_guidegen": nnunet_to_guidegen,
            "guidegen_to_nnunet": {str(gid): int(k) for k, gid in nnunet_to_guidegen.items()},
            "classes": [
                {"nnunet_id": k, "guidegen_id": gid, "name": by_id[gid].name, "display": by_id[gid].display}
                for k, gid in enumerate(declared, start=1)
            ],
            "unknown_voxels": (
                f"GuideGen unknown voxels ({unknown_id}) were written as background (0)"
                if unknown == "background"
                else f"cases with GuideGen unknown voxels ({unknown_id}) were refused"
            ),
            "cases": provenance,
        },
    }


def _write_cases(folder: Path, cases: list[NnunetCase], label_arrays: list[np.ndarray], to_nnunet: np.ndarray) -> None:
    """imagesTr/{case}_0000.nii.gz (int16 HU) and labelsTr/{case}.nii.gz (uint8 nnU-Net ids)."""
    for case, array in zip(cases, label_arrays):
        write_nifti(case.ct, folder / "imagesTr" / f"{case.case_id}{CHANNEL_SUFFIX}{FILE_ENDING}")
        # The CT's affine for both files: nnU-Net compares image and label geometry, and the two
        # already agree to GRID_ATOL_MM.
        labels = Volume(array=to_nnunet[array], affine=case.ct.affine, kind="labels")
        write_nifti(labels, folder / "labelsTr" / f"{case.case_id}{FILE_ENDING}")


def _append_cases(
    dataset_dir: Path,
    cases: list[NnunetCase],
    label_arrays: list[np.ndarray],
    to_nnunet: np.ndarray,
    dataset_json: dict[str, Any],
) -> None:
    """Stage the new files beside the dataset, move them in, then rewrite dataset.json."""
    staging = Path(tempfile.mkdtemp(prefix=".guidegen-append-", dir=dataset_dir))
    moved: list[Path] = []
    try:
        _write_cases(staging, cases, label_arrays, to_nnunet)
        for sub in ("imagesTr", "labelsTr"):
            (dataset_dir / sub).mkdir(exist_ok=True)
            for source in sorted((staging / sub).iterdir()):
                target = dataset_dir / sub / source.name
                if target.exists():  # appeared since the check: never replace a case
                    raise InputError(target, "already exists (another writer?)")
                os.replace(source, target)
                moved.append(target)
        write_text(dataset_dir / "dataset.json", json.dumps(dataset_json, indent=2) + "\n", overwrite=True)
    except BaseException:
        for target in moved:  # dataset.json was not updated: leave no uncounted case behind
            target.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _version() -> str:
    try:
        return importlib.metadata.version("guidegen")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _rounded(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)
