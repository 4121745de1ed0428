"""A new tumour's grain follows the real host organ of the scan being edited.

Real tumours are not smooth: in the bundled LiTS 117 crop (portal venous), the 52 liver tumours of
at least 50 voxels have a grain (`guidegen.images.grain.lesion_texture`) of 9.2–22.3 HU, median
15.2, against 17.0 HU for the liver around them: a tumour is about as grainy as its host (median
ratio 0.90; 0.90 and 0.89 on the two halves of the tumours sorted by size). An edit's tumour, drawn
by the image generator on its 3 mm grid, carries the network's smooth pattern plus the scanner-noise
texture of `guidegen.images.texture`; on a scan noisier than the texture model's average its
smallest lesions came out smoother than any real one (7.0 HU in a liver of 12.3).

So, after the texture, each new tumour in a host with data (`TUMOUR_GRAIN_FRACTION`) gets
independent extra grain (the same noise field as the texture, from its own random stream), its
amplitude solved so that the tumour's grain comes out at that fraction of the *real* host's grain in
this scan, measured on the host's real voxels outside the edit. Grain is only added, never removed.
The fraction comes from one portal-venous scan; it is applied in every phase (in an unenhanced scan
both grains are mostly noise, so a ratio near one is the expectation). Hosts without real tumour CT
(everything but the liver) keep what the generator and the texture give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from guidegen.images.grain import lesion_residual, lesion_texture
from guidegen.images.texture import AIR_HU, AMPLITUDE_SMOOTHING_MM, load_texture_model, texture_field
from guidegen.labels.vocabulary import ID

__all__ = ["LITS_LIVER_GRAIN_HU", "LITS_TUMOUR_GRAIN_HU", "TUMOUR_GRAIN_FRACTION", "match_tumour_grain"]

#: LiTS 117 crop (portal venous): median grain of its 52 tumours of ≥ 50 voxels, and its liver's grain.
LITS_TUMOUR_GRAIN_HU, LITS_LIVER_GRAIN_HU = 15.2, 17.0
#: Host → a new tumour's grain as a fraction of the real host's grain in the same scan.
TUMOUR_GRAIN_FRACTION: dict[str, float] = {"liver": round(LITS_TUMOUR_GRAIN_HU / LITS_LIVER_GRAIN_HU, 3)}
#: Random stream of the extra grain (independent of the texture's and the generator's noise).
_STREAM = 0x6A41


def _amplitude_for(h: np.ndarray, f: np.ndarray, target: float) -> float:
    """The a ≥ 0 with std(h + a·f) = target, for a lesion's residual ``h`` and the added field's ``f``
    over its interior (the residual is linear in HU): var_h + 2a·cov + a²·var_f is a quadratic in a."""
    h = h.astype(np.float64) - h.mean()
    f = f.astype(np.float64) - f.mean()
    var_h, var_f, cov = float((h * h).mean()), float((f * f).mean()), float((h * f).mean())
    if var_f <= 0.0:
        return 0.0
    disc = cov * cov - var_f * (var_h - target * target)
    return max((-cov + math.sqrt(max(disc, 0.0))) / var_f, 0.0)


def match_tumour_grain(
    hu: np.ndarray,
    components: np.ndarray,
    hosts: Sequence[str | None],
    real: np.ndarray,
    real_labels: np.ndarray,
    spacing: Sequence[float],
    model_inplane_mm: float,
    seed: int,
) -> list[dict]:
    """Raise each new tumour's grain to its host's share (module docstring), in place.

    Args:
        hu: (X, Y, Z) float32 generated CT of the edit's box, slices last; changed in place.
        components: (X, Y, Z) int, new tumour ``i`` where ``components == i`` (1-based), on ``hu``'s grid.
        hosts: host class of each component (``hosts[i - 1]``; ``None``: no host).
        real: the whole real CT (slices last), whose host voxels give the reference grain.
        real_labels: the real scan's label map on ``real``'s grid, with the edit's changed voxels
            not counted as host (e.g. the edited map: new tumour voxels are tumour there).
        spacing: voxel size (mm), the same for both grids.
        model_inplane_mm: the image generator's in-plane voxel size (the texture field's high-pass).
        seed: seed of the extra grain.

    Returns:
        one JSON-able entry per component: host, the real host's grain, the target, the tumour's
        grain before and after (HU), or why nothing was done.
    """
    spacing = tuple(float(s) for s in spacing)
    model = load_texture_model()
    references: dict[str, float | None] = {}
    field: np.ndarray | None = None
    record = []
    for index, host in enumerate(hosts, start=1):
        comp = components == index
        fraction = TUMOUR_GRAIN_FRACTION.get(host or "")
        if fraction is None:
            record.append({"host": host, "left": "no real tumour grain for this host"})
            continue
        if host not in references:
            host_mask = real_labels == ID[host]
            references[host] = lesion_texture(real, host_mask, spacing)[1] if host_mask.sum() >= 20 else None
        reference = references[host]
        if reference is None:
            record.append({"host": host, "left": "too few real host voxels to measure"})
            continue
        target = fraction * reference
        where, residual = lesion_residual(hu, comp, spacing)
        h = residual[where]
        before = after = float(h.std())
        entry = {"host": host, "host_grain_hu": round(reference, 1), "target_hu": round(target, 1)}
        entry["before_hu"] = round(before, 1)
        if before < target:
            if field is None:
                field = texture_field(hu.shape, spacing, model, model_inplane_mm, seed, stream=_STREAM)
            smooth = tuple(AMPLITUDE_SMOOTHING_MM / s for s in spacing[:2]) + (0.0,)
            added = ndimage.gaussian_filter(comp.astype(np.float32), smooth, mode="constant") * field
            added[hu <= AIR_HU] = 0.0  # air stays air, as in the texture
            f = lesion_residual(added, comp, spacing)[1][where]
            amplitude = _amplitude_for(h, f, target)
            hu += amplitude * added
            after = float((h + amplitude * f).std())  # the residual of the sum, by linearity
        entry["after_hu"] = round(after, 1)
        record.append(entry)
    return record
