"""A small synthetic abdomen with known sides, for the left/right tests (issue 24).

Organs are ellipsoids at their usual places in RAS+ world millimetres (+x = patient's right): liver
and right kidney at +x, spleen and left kidney at -x, aorta just left of the midline. Small enough
(5 mm voxels) that placement, measurement and the mask checks run on it in well under a second.
The left kidney is drawn small, the right one normal, so a measurement that follows label names
instead of positions reports the wrong kidney small on a map whose kidney labels are swapped.
"""

from __future__ import annotations

import numpy as np

from guidegen.io.volume import Volume, reorient_like
from guidegen.labels.vocabulary import ID

SHAPE = (56, 44, 36)
SPACING = 5.0
#: name → (centre mm, semi-axes mm), drawn in this order (later ones win).
ORGANS = {
    "liver": ((60.0, 10.0, 40.0), (70.0, 60.0, 45.0)),
    "spleen": ((-80.0, -20.0, 45.0), (30.0, 35.0, 40.0)),
    "kidney_right": ((55.0, -45.0, -10.0), (28.0, 25.0, 50.0)),
    "kidney_left": ((-55.0, -45.0, 0.0), (22.0, 20.0, 42.0)),  # small (< 100 mL): its side shows
}


def ras_affine() -> np.ndarray:
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 * SPACING
    return affine


def abdomen(swap_kidneys: bool = False, aorta: bool = True) -> Volume:
    """The synthetic abdomen, stored RAS; ``swap_kidneys``: the kidney labels on the wrong sides
    (the "left kidney" drawn on the patient's right, as a sampled map of issue 24 had it)."""
    affine = ras_affine()
    index = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), axis=-1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    x, y = world[..., 0], world[..., 1]
    array = np.zeros(SHAPE, np.uint8)
    array[(x / 130.0) ** 2 + (y / 100.0) ** 2 <= 1.0] = ID["body"]
    for name, (centre, axes) in ORGANS.items():
        inside = (((world - np.array(centre)) / np.array(axes)) ** 2).sum(axis=-1) <= 1.0
        label = name
        if swap_kidneys and name.startswith("kidney"):
            label = "kidney_left" if name == "kidney_right" else "kidney_right"
        array[inside] = ID[label]
    if aorta:
        array[(x + 15.0) ** 2 + (y + 40.0) ** 2 <= 10.0**2] = ID["aorta"]
    return Volume(array, affine, "labels", {})


def stored_lps(volume: Volume) -> Volume:
    """The same map with its array stored in LPS order (world positions unchanged): the x and y
    axes of a RAS-stored map reversed, as a DICOM-derived NIfTI often comes."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [volume.shape[0] - 1, volume.shape[1] - 1]
    out = reorient_like(volume, volume.affine @ flip)
    assert out.orientation == "LPS", out.orientation
    return out
