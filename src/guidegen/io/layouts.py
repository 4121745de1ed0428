"""Find cases in the folder layouts the field uses, without reading any voxel data.

Supported layouts (detected in this order, recursively below each source given):

* **TotalSegmentator / AbdomenAtlas**: ``CASE/ct.nii.gz`` + ``CASE/segmentations/*.nii.gz``
  (one binary mask per structure, named after it).
* **nnU-Net v2 raw**: ``dataset.json`` (``"labels": {"background": 0, "liver": 1}``) +
  ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz``.
* **Medical Segmentation Decathlon**: ``dataset.json`` (``"labels": {"0": "background", ...}``,
  ``"training": [{"image": ..., "label": ...}]``) + ``imagesTr`` + ``labelsTr``.
* **Plain pair**: a folder with a CT (``ct.nii.gz``, ``image.nii.gz`` or a DICOM folder ``ct/`` or
  ``dicom/``) and labels (``labels.nii.gz``, ``label.nii.gz``, ``seg.nii.gz`` or a DICOM-SEG
  ``*.dcm``). The label vocabulary comes from a ``guidegen-source.json`` sidecar
  (``{"vocabulary": "amos"}``; or a label set, id → GuideGen class, as the ``"vocabulary"`` value or
  as the whole file: `guidegen.labels.label_set`) or from ``prepare(..., vocabulary=...)``. A sidecar may also list
  cases explicitly: ``{"cases": [{"id": ..., "image": ..., "labels": ..., "vocabulary": ...}]}``,
  which is how label maps without a CT are added.
* **DICOM folder**: a folder of DICOM CT files and nothing else: a CT-only case.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from guidegen.errors import InputError

SIDECAR = "guidegen-source.json"
CT_NAMES = ("ct.nii.gz", "ct.nii", "image.nii.gz", "image.nii", "img.nii.gz")
LABEL_NAMES = ("labels.nii.gz", "labels.nii", "label.nii.gz", "label.nii", "seg.nii.gz", "segmentation.nii.gz")
DICOM_DIRS = ("ct", "dicom", "DICOM")
MAX_DEPTH = 4


@dataclass
class CaseSource:
    """Where one case's files are and how its labels are to be read."""

    case_id: str
    layout: str
    image: Path | None = None
    image_format: Literal["nifti", "dicom", None] = None
    labels: Path | None = None
    labels_format: Literal["nifti", "dicom_seg", "structures", None] = None
    structures: dict[str, Path] = field(default_factory=dict)
    vocabulary: str | dict[str, str] | None = None  # a name in guidegen/labels/sources, or a label set (id → class)
    label_names: dict[int, str] | None = None  # the dataset's own id → name table
    notes: str = ""

    def sources(self) -> list[Path]:
        paths = [p for p in (self.image, self.labels) if p is not None]
        return paths + sorted(self.structures.values())


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "case"


def _is_dicom_file(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_dicom_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(_is_dicom_file(p) for p in files[:5])


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return None


def read_json_object(path: str | Path) -> dict:
    """A JSON file holding an object; anything else is an `InputError` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "must hold a JSON object")
    return data


def is_label_table(value: object) -> bool:
    """A label set (`guidegen.labels.label_set`): a non-empty object whose keys are all whole numbers."""
    return isinstance(value, dict) and bool(value) and all(str(k).strip().isdigit() for k in value)


def sidecar_vocabulary(meta: dict) -> str | dict[str, str] | None:
    """A sidecar's vocabulary: its ``"vocabulary"`` value (a name or a label set), or the whole sidecar
    when it is a label set itself."""
    return meta if is_label_table(meta) else meta.get("vocabulary")


def _check_vocabulary(path: Path, value: object, where: str = "") -> None:
    if value is not None and not isinstance(value, str) and not is_label_table(value):
        raise InputError(
            path,
            f"{where}'vocabulary' must be a vocabulary name (see `guidegen list-vocabularies`) or a "
            f'label set ({{"1": "liver", ...}}, see `guidegen list-classes`), got {value!r}',
        )


def _read_json(path: Path) -> dict:
    data = read_json_object(path)
    _check_vocabulary(path, data.get("vocabulary"))
    return data


def _structures_case(folder: Path) -> CaseSource:
    seg = folder / "segmentations"
    masks = {
        re.sub(r"\.nii(\.gz)?$", "", p.name): p for p in sorted(seg.iterdir()) if p.name.endswith((".nii", ".nii.gz"))
    }
    if not masks:
        raise InputError(seg, "holds no .nii.gz structure masks")
    image = _first(folder, CT_NAMES)
    return CaseSource(
        _safe_id(folder.name),
        "totalsegmentator",
        image=image,
        image_format="nifti" if image else None,
        labels_format="structures",
        structures=masks,
    )


def _dataset_json_cases(folder: Path) -> list[CaseSource]:
    meta = _read_json(folder / "dataset.json")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(folder / "dataset.json", "has no 'labels' table")
    # nnU-Net v2 writes name → id, MSD writes id → name.
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):
            names = {int(k): str(v) for k, v in labels.items()}
            layout = "msd"
        else:
            names = {}
            for k, v in labels.items():
                if not isinstance(v, int):
                    raise InputError(
                        folder / "dataset.json",
                        f"label {k!r} is a region ({v!r}); region-based labels are not supported",
                    )
                names[v] = str(k)
            layout = "nnunet"
    except ValueError:
        raise InputError(folder / "dataset.json", "has an unreadable 'labels' table") from None
    ending = str(meta.get("file_ending", ".nii.gz"))
    images, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not labels_dir.is_dir():
        raise InputError(folder, "has dataset.json but no labelsTr folder")
    cases: list[CaseSource] = []
    for label_path in sorted(labels_dir.iterdir()):
        if label_path.name.startswith(".") or not label_path.name.endswith(ending):
            continue
        case = label_path.name[: -len(ending)]
        image = images / f"{case}_0000{ending}" if layout == "nnunet" else images / label_path.name
        if not image.exists():
            alt = images / f"{case}_0000{ending}"
            image = alt if alt.exists() else None
        cases.append(
            CaseSource(
                _safe_id(case),
                layout,
                image=image,
                image_format="nifti" if image else None,
                labels=label_path,
                labels_format="nifti",
                label_names=names,
            )
        )
    if not cases:
        raise InputError(labels_dir, f"holds no label files ending in {ending}")
    return cases


def _sidecar_cases(folder: Path) -> list[CaseSource] | None:
    side = folder / SIDECAR
    if not side.exists():
        return None
    meta = _read_json(side)
    if "cases" not in meta:
        return None
    if not isinstance(meta["cases"], list):
        raise InputError(side, "'cases' must be a list")
    out = []
    for i, entry in enumerate(meta["cases"]):
        if not isinstance(entry, dict) or "labels" not in entry and "image" not in entry:
            raise InputError(side, f"case {i} needs 'labels' and/or 'image'")
        for key in ("id", "image", "labels"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise InputError(side, f"case {i}: {key!r} must be text, got {entry[key]!r}")
        _check_vocabulary(side, entry.get("vocabulary"), f"case {i}: ")
        image = folder / entry["image"] if entry.get("image") else None
        labels = folder / entry["labels"] if entry.get("labels") else None
        for p in (image, labels):
            if p is not None and not p.exists():
                raise InputError(p, f"is listed in {side.name} but does not exist")
        out.append(
            CaseSource(
                _safe_id(entry.get("id", (labels or image).name.split(".")[0])),
                "sidecar",
                image=image,
                image_format=("dicom" if image.is_dir() else "nifti") if image else None,
                labels=labels,
                labels_format=("dicom_seg" if labels and labels.suffix == ".dcm" else "nifti") if labels else None,
                vocabulary=entry.get("vocabulary", meta.get("vocabulary")),
                notes=str(entry.get("notes", "")),
            )
        )
    return out


def _pair_case(folder: Path) -> CaseSource | None:
    image = _first(folder, CT_NAMES)
    image_format: str | None = "nifti" if image else None
    if image is None:
        for name in DICOM_DIRS:
            if _is_dicom_folder(folder / name):
                image, image_format = folder / name, "dicom"
                break
    labels = _first(folder, LABEL_NAMES)
    labels_format: str | None = "nifti" if labels else None
    if labels is None:
        segs = [p for p in sorted(folder.glob("*.dcm"))]
        if len(segs) == 1:
            labels, labels_format = segs[0], "dicom_seg"
    if image is None and labels is None:
        return None
    vocabulary, notes = None, ""
    if (folder / SIDECAR).exists():
        meta = _read_json(folder / SIDECAR)
        vocabulary, notes = sidecar_vocabulary(meta), str(meta.get("notes", ""))
    return CaseSource(
        _safe_id(folder.name),
        "pair",
        image=image,
        image_format=image_format,  # type: ignore[arg-type]
        labels=labels,
        labels_format=labels_format,
        vocabulary=vocabulary,
        notes=notes,
    )  # type: ignore[arg-type]


def discover_cases(source: str | Path, _depth: int = 0) -> list[CaseSource]:
    """All cases below ``source`` (a case folder, a dataset folder, or a folder of those)."""
    source = Path(source)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    if source.is_file():
        raise InputError(
            source, "is a file; give the folder that holds the case (see `guidegen prepare --help` for layouts)"
        )
    sidecar = _sidecar_cases(source)
    if sidecar is not None:
        return sidecar
    if (source / "segmentations").is_dir():
        return [_structures_case(source)]
    if (source / "dataset.json").exists():
        return _dataset_json_cases(source)
    pair = _pair_case(source)
    if pair is not None:
        return [pair]
    if _is_dicom_folder(source):
        return [CaseSource(_safe_id(source.name), "dicom", image=source, image_format="dicom")]
    cases: list[CaseSource] = []
    if _depth < MAX_DEPTH:
        for sub in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            cases.extend(discover_cases(sub, _depth + 1))
    if _depth == 0 and not cases:
        raise InputError(
            source,
            "holds no case in a supported layout (TotalSegmentator, nnU-Net, MSD, CT + labels pair, DICOM folder)",
        )
    return cases
