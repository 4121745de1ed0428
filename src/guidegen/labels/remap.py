"""Map public datasets' label ids and structure names onto the GuideGen vocabulary.

Each source vocabulary is data (``labels/sources/*.json``): source id → GuideGen class name, plus the
classes that the source *annotates*. Remapping returns the label array in GuideGen ids together with
that annotated set, because a class the source does not annotate is unknown, not background.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from guidegen.errors import InputError
from guidegen.labels.vocabulary import ID, UNKNOWN

#: Pseudo-class of sources that label both kidneys with one id (KiTS); split by position.
KIDNEY_EITHER_SIDE = "kidney"
#: Pseudo-class of ids whose voxels are not annotated (they become UNKNOWN, 255).
NOT_ANNOTATED = "unknown"


@dataclass(frozen=True)
class SourceVocabulary:
    """A public dataset's label ids and how they map to GuideGen classes."""

    name: str
    description: str
    source_names: dict[int, str]
    map: dict[int, str]  # source id → GuideGen class name ("kidney" to split by side, "unknown" for 255)
    annotated: frozenset[str]

    def lookup_table(self) -> np.ndarray:
        """256-entry table source id → GuideGen id; ids not in the map become UNKNOWN (255)."""
        table = np.full(256, UNKNOWN, dtype=np.uint8)
        table[0] = 0
        for sid, name in self.map.items():
            table[sid] = (
                ID["kidney_right"] if name == KIDNEY_EITHER_SIDE else UNKNOWN if name == NOT_ANNOTATED else ID[name]
            )
        return table


def available_vocabularies() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("guidegen.labels").joinpath("sources").iterdir()
        if p.name.endswith(".json")
    )


@lru_cache(maxsize=None)
def load_vocabulary(name: str) -> SourceVocabulary:
    """Load a source vocabulary by name (``totalsegmentator``, ``amos``, ``msd_liver`` …)."""
    if name not in available_vocabularies():  # only the shipped files: no paths, no odd names
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:60] + "…"
        raise InputError(None, f"unknown label vocabulary {shown}; available: {', '.join(available_vocabularies())}")
    path = resources.files("guidegen.labels").joinpath("sources", f"{name}.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    mapping = {int(k): v for k, v in raw["map"].items()}
    for v in mapping.values():
        if v not in ID and v != KIDNEY_EITHER_SIDE:
            raise ValueError(f"{path}: maps to unknown GuideGen class {v!r}")
    return SourceVocabulary(
        name=raw["name"],
        description=raw["description"],
        source_names={int(k): v for k, v in raw["source_names"].items()},
        map=mapping,
        annotated=frozenset(raw["annotated"]),
    )


def remap_labels(
    array: np.ndarray,
    vocabulary: str | SourceVocabulary,
    path: str | Path | None = None,
    affine: np.ndarray | None = None,
) -> tuple[np.ndarray, frozenset[str]]:
    """Source label ids → GuideGen ids.

    Args:
        array: (X, Y, Z) integer label ids of the source vocabulary.
        vocabulary: name or loaded `SourceVocabulary`.
        path: for error messages.
        affine: voxel → RAS+ affine, needed only to split a shared kidney id into right and left.

    Returns:
        (labels uint8 in GuideGen ids, the annotated GuideGen classes).

    Id 255 means "not annotated" (`UNKNOWN`) in every vocabulary that does not define it itself
    (prepared maps and GuideGen's own output use it), so it stays 255.

    Raises:
        InputError: ids that the vocabulary does not know (the message lists them).
    """
    vocab = load_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary
    present = np.unique(array)
    unknown_ids = [int(i) for i in present if int(i) not in (0, UNKNOWN) and int(i) not in vocab.map]
    if unknown_ids:
        shown = ", ".join(str(i) for i in unknown_ids[:10]) + (" …" if len(unknown_ids) > 10 else "")
        raise InputError(path, f"has label ids {shown} that the {vocab.name} vocabulary does not define")
    out = vocab.lookup_table()[array.astype(np.int64)]
    kidney_ids = [sid for sid, name in vocab.map.items() if name == KIDNEY_EITHER_SIDE]
    if kidney_ids:
        if affine is None:
            raise ValueError("an affine is needed to split kidneys into right and left")
        out = split_kidneys(out, np.isin(array, kidney_ids), affine)
    return out.astype(np.uint8), vocab.annotated


def split_kidneys(labels: np.ndarray, kidney: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Assign each kidney component to the patient's right or left.

    In RAS+ world coordinates x grows towards the patient's right. With two or more components the
    split point is the midpoint between the centroids of the two largest (robust to a scan that is
    not centred on the patient); with a single kidney the body's centre along x is unknown, so the
    volume's centre is used and the choice is only a guess.

    Args:
        labels: (X, Y, Z) GuideGen ids, modified copy returned.
        kidney: (X, Y, Z) bool, voxels of the shared kidney id (tumour and cyst voxels excluded).
        affine: voxel → RAS+ mm.
    """
    labels = labels.copy()
    components, n = ndimage.label(kidney, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return labels
    sizes = ndimage.sum_labels(kidney, components, index=np.arange(1, n + 1))
    centroids = np.array(ndimage.center_of_mass(kidney, components, index=np.arange(1, n + 1)))
    world_x = centroids @ affine[0, :3] + affine[0, 3]
    if n >= 2:
        largest = np.argsort(sizes)[::-1][:2]
        split_x = world_x[largest].mean()
    else:
        centre = (np.array(kidney.shape) - 1) / 2.0
        split_x = float(centre @ affine[0, :3] + affine[0, 3])
    for k in range(n):
        side = "kidney_right" if world_x[k] > split_x else "kidney_left"
        labels[components == k + 1] = ID[side]
    return labels


# Structure names as they appear in per-structure files (TotalSegmentator, AbdomenAtlas), nnU-Net /
# MSD dataset.json label names and DICOM-SEG segment labels, normalised by `normalise_name`.
NAME_ALIASES: dict[str, str] = {
    "spleen": "spleen",
    "kidney right": "kidney_right",
    "right kidney": "kidney_right",
    "kidney r": "kidney_right",
    "kidney left": "kidney_left",
    "left kidney": "kidney_left",
    "kidney l": "kidney_left",
    "kidney cyst right": "kidney_right",
    "kidney cyst left": "kidney_left",
    "kidney": KIDNEY_EITHER_SIDE,
    "kidneys": KIDNEY_EITHER_SIDE,
    "cyst": KIDNEY_EITHER_SIDE,
    "liver": "liver",
    "stomach": "stomach",
    "pancreas": "pancreas",
    "small bowel": "small_bowel",
    "small intestine": "small_bowel",
    "intestine": "small_bowel",
    "duodenum": "duodenum",
    "colon": "colon",
    "rectum": "colon",
    "large bowel": "colon",
    "urinary bladder": "urinary_bladder",
    "bladder": "urinary_bladder",
    "gallbladder": "gallbladder",
    "gall bladder": "gallbladder",
    "aorta": "aorta",
    "inferior vena cava": "inferior_vena_cava",
    "ivc": "inferior_vena_cava",
    "postcava": "inferior_vena_cava",
    "postcava ivc": "inferior_vena_cava",
    "portal vein and splenic vein": "portal_vein",
    "portal vein": "portal_vein",
    "tumour": "tumour",
    "tumor": "tumour",
    "cancer": "tumour",
    "lesion": "tumour",
    "mass": "tumour",
    "liver tumor": "tumour",
    "liver tumour": "tumour",
    "kidney tumor": "tumour",
    "pancreatic tumor": "tumour",
    "pancreas tumor": "tumour",
    "colon cancer primaries": "tumour",
    "colon cancer": "tumour",
    "hepatic tumor": "tumour",
    "neoplasm": "tumour",
    "body": "body",
    "bone": "bone",
    "spine": "bone",
    "vertebra": "bone",
    "vertebrae": "bone",
    "sacrum": "bone",
    "rib": "bone",
    "ribs": "bone",
    "femur": "bone",
    "hip": "bone",
    "pelvis": "bone",
    "skull": "bone",
    "sternum": "bone",
    "humerus": "bone",
    "scapula": "bone",
    "clavicula": "bone",
    "clavicle": "bone",
    "background": "background",
    "lung": "lung",
    "lungs": "lung",
    "heart": "heart",
    "atrial appendage left": "heart",
    "muscle": "muscle",
    "psoas": "muscle",
    "superior vena cava": "other_vein",
    "pulmonary vein": "other_vein",
    "brachiocephalic trunk": "other_artery",
}
_BONE_PREFIXES = ("vertebrae ", "rib ", "femur ", "hip ", "humerus ", "scapula ", "clavicula ")
#: Name prefixes of the vocabulary-2 classes (TotalSegmentator structure files: "lung_upper_lobe_left" …).
_PREFIXES = {
    "lung ": "lung",
    "gluteus ": "muscle",
    "autochthon ": "muscle",
    "iliopsoas ": "muscle",
    "psoas ": "muscle",
    "iliac artery ": "other_artery",
    "common iliac artery ": "other_artery",
    "subclavian artery ": "other_artery",
    "common carotid artery ": "other_artery",
    "iliac vena ": "other_vein",
    "iliac vein ": "other_vein",
    "brachiocephalic vein ": "other_vein",
}


def normalise_name(name: str) -> str:
    """``"Kidney_Right.nii.gz"`` → ``"kidney right"``."""
    base = re.sub(r"\.nii(\.gz)?$", "", name.strip().lower())
    return " ".join(re.split(r"[\s_\-/()]+", base)).strip()


def class_for_name(name: str) -> str | None:
    """The GuideGen class (or ``"kidney"``) for a structure name; ``None`` when it is not one of ours.

    Names of structures we do not model (adrenal glands, trachea …) return ``None``: callers treat them
    as background, since the source did annotate them as *not* any GuideGen class.
    """
    key = normalise_name(name)
    if key in NAME_ALIASES:
        return NAME_ALIASES[key]
    if key.startswith(_BONE_PREFIXES):
        return "bone"
    for prefix, cls in _PREFIXES.items():
        if key.startswith(prefix):
            return cls
    return None


def combine_structure_masks(masks: dict[str, np.ndarray], affine: np.ndarray) -> tuple[np.ndarray, frozenset[str]]:
    """Merge per-structure binary masks (name → (X, Y, Z) bool) into one GuideGen label map.

    Later classes in the GuideGen order win where masks overlap, except that tumour always wins
    over its host organ (a tumour lies inside an organ by construction).
    """
    if not masks:
        raise ValueError("no structure masks given")
    shape = next(iter(masks.values())).shape
    labels = np.zeros(shape, dtype=np.uint8)
    annotated: set[str] = set()
    kidney = np.zeros(shape, dtype=bool)
    by_class: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        cls = class_for_name(name)
        if cls is None or cls == "background":
            continue
        if cls == KIDNEY_EITHER_SIDE:
            kidney |= mask
            annotated.update({"kidney_right", "kidney_left"})
            continue
        by_class[cls] = by_class.get(cls, np.zeros(shape, dtype=bool)) | mask
        annotated.add(cls)
    order = sorted(by_class, key=lambda c: (c == "tumour", ID[c]))
    for cls in order:
        labels[by_class[cls]] = ID[cls]
    if kidney.any():
        free = kidney & (labels == 0)
        labels = split_kidneys(labels, free, affine)
    return labels, frozenset(annotated)


def names_from_ids(ids: dict[int, str]) -> SourceVocabulary:
    """A vocabulary from a dataset's own id → name table (nnU-Net/MSD dataset.json, DICOM-SEG).

    Unrecognised names become background: the dataset annotated them as something that is not a
    GuideGen class.
    """
    mapping: dict[int, str] = {}
    annotated: set[str] = set()
    for sid, name in ids.items():
        cls = class_for_name(name)
        if cls is None or cls == "background":
            mapping[sid] = "background"
            continue
        mapping[sid] = cls
        annotated.update({"kidney_right", "kidney_left"} if cls == KIDNEY_EITHER_SIDE else {cls})
    return SourceVocabulary(
        name="dataset",
        description="from the dataset's own label names",
        source_names=dict(ids),
        map=mapping,
        annotated=frozenset(annotated),
    )
