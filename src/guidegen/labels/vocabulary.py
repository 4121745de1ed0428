"""The GuideGen class vocabulary.

The first twelve classes are the paper's (Dai et al. 2024); the rest help the CT generator draw the
anatomy around the organs (body outline, bone, large vessels, gallbladder, portal vein) and, since
version 2 of the vocabulary (ids 18–22), what every abdominal CT shows beyond the organs: lung bases,
heart, the big muscles and the remaining vessels. Before that these were "body" (soft tissue) and
the generator drew lung bases at about −50 HU. Ids are only ever appended, so a model trained on
the first K classes still reads every map: `fold_for_model` turns a newer class into the class it
was before (`FALLBACK`).

Partial annotation is explicit: a label map comes with the set of classes that were *annotated*.
A voxel with id 0 (background) means "none of the annotated classes"; for a class that was not
annotated we do not know where it is, so it is *unknown*, never background. `UNKNOWN` (255) marks
voxels whose class is not known at all (for example outside a scan's annotated region).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Label id for "class not known here" (ignored by losses and metrics).
UNKNOWN = 255


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str  # snake_case identifier used in files and APIs
    display: str  # words used in reports
    colour: tuple[int, int, int]  # RGB for previews
    organ: bool  # a solid or hollow organ that reports describe


CLASSES: tuple[LabelClass, ...] = (
    LabelClass(0, "background", "background", (0, 0, 0), False),
    LabelClass(1, "spleen", "spleen", (157, 108, 162), True),
    LabelClass(2, "kidney_right", "right kidney", (185, 102, 83), True),
    LabelClass(3, "kidney_left", "left kidney", (185, 102, 83), True),
    LabelClass(4, "liver", "liver", (221, 130, 101), True),
    LabelClass(5, "stomach", "stomach", (216, 132, 105), True),
    LabelClass(6, "pancreas", "pancreas", (249, 180, 111), True),
    LabelClass(7, "small_bowel", "small bowel", (205, 167, 142), True),
    LabelClass(8, "duodenum", "duodenum", (255, 253, 229), True),
    LabelClass(9, "colon", "colon", (204, 168, 143), True),
    LabelClass(10, "urinary_bladder", "urinary bladder", (222, 154, 132), True),
    LabelClass(11, "tumour", "tumour", (255, 0, 0), False),
    LabelClass(12, "body", "body", (80, 80, 80), False),
    LabelClass(13, "bone", "bone", (241, 214, 145), False),
    LabelClass(14, "aorta", "aorta", (224, 97, 76), False),
    LabelClass(15, "inferior_vena_cava", "inferior vena cava", (0, 151, 206), False),
    LabelClass(16, "gallbladder", "gallbladder", (139, 150, 98), True),
    LabelClass(17, "portal_vein", "portal and splenic vein", (0, 112, 165), False),
    # Vocabulary 2 (TotalSegmentator structures; `labels/sources/totalsegmentator.json`).
    LabelClass(18, "lung", "lungs", (170, 215, 255), False),
    LabelClass(19, "heart", "heart", (200, 50, 90), False),
    LabelClass(20, "muscle", "psoas, back and gluteal muscles", (165, 85, 60), False),
    LabelClass(21, "other_artery", "iliac and other arteries", (255, 140, 120), False),
    LabelClass(22, "other_vein", "iliac and other veins", (90, 140, 225), False),
)

#: The class each newer class was before it had its own id: in the maps the older models trained
#: on, these structures were unlabelled tissue inside the body outline, i.e. "body".
FALLBACK: dict[str, str] = {
    "lung": "body",
    "heart": "body",
    "muscle": "body",
    "other_artery": "body",
    "other_vein": "body",
}

#: How a model without a newer class *draws* it in CT: as the class it knows whose tissue looks the
#: same in every contrast phase. Aerated lung as air (background), the heart's blood pool and the
#: other arteries as the aorta (blood, enhancing with it), the other veins as the IVC. Muscle has no
#: such class and stays `FALLBACK`'s body. Why not simply FALLBACK: the older generator draws
#: "body" as a fat/soft-tissue mix, so lung bases came out at about −50 HU instead of −850, and the
#: heart and iliac vessels never enhanced (docs/results/drawn_as.txt). Only for drawing CT from a
#: map (`fold_for_drawing`); training and weight growing keep FALLBACK, what these structures were
#: labelled as in the older maps.
DRAWN_AS: dict[str, str] = {
    "lung": "background",
    "heart": "aorta",
    "other_artery": "aorta",
    "other_vein": "inferior_vena_cava",
}

# Distinct preview colours where anatomy colours coincide (kidneys, hollow organs).
_PREVIEW_OVERRIDES = {3: (230, 140, 60), 5: (255, 190, 0), 7: (120, 200, 120), 9: (60, 160, 255), 10: (255, 255, 0)}

NUM_CLASSES = len(CLASSES)
NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
ID: dict[str, int] = {c.name: c.id for c in CLASSES}
BY_NAME: dict[str, LabelClass] = {c.name: c for c in CLASSES}
#: The paper's twelve classes.
PAPER_CLASSES: tuple[str, ...] = NAMES[:12]
#: Classes that reports measure and the prompt parser understands as organs.
ORGANS: tuple[str, ...] = tuple(c.name for c in CLASSES if c.organ)
#: Organs in which the tumour insertion / reports place tumours.
TUMOUR_HOSTS: tuple[str, ...] = ("liver", "kidney_right", "kidney_left", "pancreas", "colon", "spleen", "stomach")


def fold_for_model(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A label map in the ids of a model that knows only the first ``num_classes`` classes: each
    newer class becomes its `FALLBACK` (unknown, 255, stays). Returns ``labels`` itself when nothing
    needs folding."""
    return _fold(labels, num_classes, _folded_id)


def fold_for_drawing(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """`fold_for_model` for drawing CT: a newer class the model lacks becomes the class it is drawn
    as (`DRAWN_AS`) where the model has that one, else its `FALLBACK`."""
    return _fold(labels, num_classes, _drawn_id)


def drawn_as(labels: np.ndarray, num_classes: int) -> dict[str, str]:
    """Class → the class a model of ``num_classes`` classes draws it as, for the newer classes
    present in ``labels`` (empty when the model knows every class there): for the record."""
    present = np.unique(np.asarray(labels))
    return {
        NAMES[c]: NAMES[_drawn_id(NAMES[c], num_classes)] for c in present.tolist() if num_classes <= c < NUM_CLASSES
    }


def _fold(labels: np.ndarray, num_classes: int, rule) -> np.ndarray:
    arr = np.asarray(labels)
    if num_classes >= NUM_CLASSES or not np.any((arr >= num_classes) & (arr != UNKNOWN)):
        return labels
    table = np.arange(256, dtype=np.int64)
    for cls in CLASSES[num_classes:]:
        table[cls.id] = rule(cls.name, num_classes)
    out = table[arr.astype(np.int64)]
    return out.astype(arr.dtype) if arr.dtype.kind in "ui" else out


def fold_names(names, num_classes: int, drawing: bool = False) -> list[str]:
    """Class names as a model with ``num_classes`` classes knows them (newer ones folded, order kept,
    no repeats); ``drawing``: as `fold_for_drawing` folds them."""
    rule = _drawn_id if drawing else _folded_id
    out: list[str] = []
    for name in names:
        folded = NAMES[rule(name, num_classes)]
        if folded not in out:
            out.append(folded)
    return out


def class_sources(old_num_classes: int, new_num_classes: int) -> list[int]:
    """For each class of a model with ``new_num_classes`` classes, the class of an older model with
    ``old_num_classes`` that stood for it (itself, or its `FALLBACK`): how a network grown to more
    classes inherits its predecessor's weights."""
    if not 2 <= old_num_classes <= new_num_classes <= NUM_CLASSES:
        raise ValueError(f"cannot grow {old_num_classes} classes to {new_num_classes} (vocabulary: {NUM_CLASSES})")
    return [_folded_id(NAMES[c], old_num_classes) for c in range(new_num_classes)]


def _folded_id(name: str, num_classes: int) -> int:
    while ID[name] >= num_classes:
        name = FALLBACK[name]
    return ID[name]


def _drawn_id(name: str, num_classes: int) -> int:
    alike = DRAWN_AS.get(name)
    if ID[name] >= num_classes and alike is not None and ID[alike] < num_classes:
        return ID[alike]
    return _folded_id(name, num_classes)


def class_id(name: str) -> int:
    """Id of a class by name; raises ``ValueError`` naming the valid names."""
    try:
        return ID[name]
    except KeyError:
        raise ValueError(f"unknown class {name!r}; valid classes: {', '.join(NAMES)}") from None


def preview_colour(class_id_: int) -> tuple[int, int, int]:
    return _PREVIEW_OVERRIDES.get(class_id_, CLASSES[class_id_].colour)
