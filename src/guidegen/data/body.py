"""Body outline from CT: everything of the patient inside the skin, without table and air."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Soft tissue starts well above -500 HU; air and lung parenchyma (-900 … -700) are below.
BODY_THRESHOLD_HU = -500.0


def body_outline(ct: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """(X, Y, Z) bool body mask.

    Threshold at -500 HU, an in-plane opening of about 5 mm to cut the thin patient table and
    blankets away, keep the largest 3-D component, then fill holes slice by slice (lungs and bowel
    gas are inside the body) and in 3-D.
    """
    mask = ct > BODY_THRESHOLD_HU
    radius = np.maximum(1, np.round(2.5 / np.asarray(spacing[:2]))).astype(int)
    structure = np.zeros((2 * radius[0] + 1, 2 * radius[1] + 1, 1), dtype=bool)
    xx, yy = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
    structure[..., 0] = (xx / radius[0]) ** 2 + (yy / radius[1]) ** 2 <= 1.0
    opened = ndimage.binary_opening(mask, structure=structure)
    components, n = ndimage.label(opened)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    # Undo the opening's erosion of the skin surface inside the kept component.
    body = ndimage.binary_dilation(body, structure=structure) & mask | body
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return ndimage.binary_fill_holes(body)
