"""The GuideGen class vocabulary.

The first twelve classes are the paper's (Dai et al. 2024); the rest help the CT generator draw the
anatomy around the organs (body outline, bone, large vessels, gallbladder, portal vein).

Partial annotation is explicit: a label map comes with the set of classes that were *annotated*.
A voxel with id 0 (background) means "none of the annotated classes"; for a class that was not
annotated we do not know where it is, so it is *unknown*, never background. `UNKNOWN` (255) marks
voxels whose class is not known at all (for example outside a scan's annotated region).
"""

from __future__ import annotations

from dataclasses import dataclass

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
)

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


def class_id(name: str) -> int:
    """Id of a class by name; raises ``ValueError`` naming the valid names."""
    try:
        return ID[name]
    except KeyError:
        raise ValueError(f"unknown class {name!r}; valid classes: {', '.join(NAMES)}") from None


def preview_colour(class_id_: int) -> tuple[int, int, int]:
    return _PREVIEW_OVERRIDES.get(class_id_, CLASSES[class_id_].colour)
