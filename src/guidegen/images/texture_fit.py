"""Fit the native-resolution texture model (`guidegen.images.texture`) to real CT scans.

For each scan, `guidegen.images.grain.measure_texture` gives every labelled tissue's fine grain
(HU), its in-plane correlation 1 and 2 pixels apart and its correlation between adjacent slices.
Then:

* **noise floor**: the grain of the scan's most homogeneous tissue (the smallest grain): scanner
  noise is about the same everywhere in a slice, and tissue structure only adds to it.
* **in-plane σ**: the σ (mm) of the Gaussian correlation whose *predicted* correlations of the
  detrended noise at the scan's pixel size (computed exactly from the filters' impulse responses:
  the same detrending as the measurement) best match the floor tissue's, least squares over scans.
* **amplitude**: the floor grain divided by the fraction of full-band noise that the detrending
  keeps at the scan's pixel size (again from the impulse responses), scaled to 5 mm slices by
  √(Δz / 5 mm), averaged over scans.
* **slice correlation length** ℓ: least squares of exp(−Δz/ℓ) against the floor tissue's
  correlation between adjacent slices.
* **contrast extras**: in contrast-enhanced scans, the grain a tissue has above the floor,
  √(grain² − floor²), in full-band HU (same conversion), root-mean-square over the scans that show
  the tissue.

Only scans at their native reconstruction, with a soft-tissue kernel, are fitted (the caller says
which); the others are measured and reported, not fitted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from guidegen.images.grain import FINE_TREND_MM, TissueTexture, measure_texture, slice_axis
from guidegen.images.texture import REFERENCE_SLICE_MM, TextureModel, gaussian_kernel, inplane_filter
from guidegen.io.volume import Volume

__all__ = ["FitScan", "detrended_response", "fit_texture_model", "noise_floor"]

#: Tissues whose grain may serve as the noise floor (homogeneous parenchyma, fluid, blood).
FLOOR_CANDIDATES: tuple[str, ...] = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "pancreas",
    "gallbladder",
    "inferior_vena_cava",
    "portal_vein",
    "urinary_bladder",
)
#: Tissues whose extra grain in contrast phases is fitted.
EXTRA_CANDIDATES: tuple[str, ...] = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "pancreas",
    "gallbladder",
    "inferior_vena_cava",
    "tumour",
)


@dataclass(frozen=True)
class FitScan:
    """A real scan for the fit.

    Attributes:
        name: identifier (e.g. the data folder).
        ct, labels: the CT and its GuideGen label map on the same grid, at native resolution.
        contrast: whether the scan is contrast-enhanced.
        fit: whether it enters the fit (False: measured and reported only).
        note: why (not) fitted, source and licence.
    """

    name: str
    ct: Volume
    labels: Volume
    contrast: bool
    fit: bool
    note: str = ""


def detrended_response(pixel_mm: tuple[float, float], sigma_mm: float, trend_mm: float = FINE_TREND_MM) -> np.ndarray:
    """2-D impulse response of full-band unit noise (correlation σ ``sigma_mm``) after the fine
    detrending of `guidegen.images.grain` (minus its Gaussian average of σ ``trend_mm``)."""
    shaped = inplane_filter(pixel_mm, sigma_mm, None)
    shaped = shaped / math.sqrt(float((shaped**2).sum()))
    lx, ly = gaussian_kernel(trend_mm / pixel_mm[0]), gaussian_kernel(trend_mm / pixel_mm[1])
    padded = np.pad(shaped, ((len(lx) // 2,) * 2, (len(ly) // 2,) * 2))
    low = ndimage.convolve1d(ndimage.convolve1d(padded, lx, axis=0, mode="constant"), ly, axis=1, mode="constant")
    return padded - low


def _predicted(pixel_mm: tuple[float, float], sigma_mm: float) -> tuple[float, float, float]:
    """(kept fraction of the noise std, correlation at 1 px, at 2 px) of detrended noise."""
    h = detrended_response(pixel_mm, sigma_mm)
    energy = float((h**2).sum())
    corr = []
    for lag in (1, 2):
        along = [float((h[lag:] * h[:-lag]).sum()), float((h[:, lag:] * h[:, :-lag]).sum())]
        corr.append(sum(along) / (2 * energy))
    return math.sqrt(energy), corr[0], corr[1]


def noise_floor(stats: dict[str, TissueTexture]) -> tuple[str, TissueTexture]:
    """The floor tissue of a scan: the candidate with the smallest grain."""
    present = {n: s for n, s in stats.items() if n in FLOOR_CANDIDATES}
    if not present:
        raise ValueError(f"no floor tissue among {', '.join(stats)}; need one of {', '.join(FLOOR_CANDIDATES)}")
    name = min(present, key=lambda n: present[n].grain)
    return name, present[name]


def _inplane_pixel(volume: Volume) -> tuple[tuple[float, float], float]:
    axis = slice_axis(volume.affine)
    sp = volume.spacing
    inplane = tuple(sp[a] for a in range(3) if a != axis)
    return inplane, sp[axis]  # type: ignore[return-value]


def fit_texture_model(
    scans: Sequence[FitScan], sigma_grid: Sequence[float] | None = None, length_grid: Sequence[float] | None = None
) -> tuple[TextureModel, dict]:
    """Fit the texture model to the scans marked ``fit``; measure all.

    Returns:
        (the model, with its provenance; a JSON-able report of every scan's measurements).
    """
    sigma_grid = np.arange(0.05, 2.001, 0.01) if sigma_grid is None else np.asarray(sigma_grid)
    length_grid = np.arange(0.25, 20.001, 0.05) if length_grid is None else np.asarray(length_grid)
    report: dict = {}
    fitted = []
    for scan in scans:
        stats = measure_texture(scan.ct, scan.labels)
        floor_name, floor = noise_floor(stats)
        pixel, dz = _inplane_pixel(scan.ct)
        report[scan.name] = {
            "fit": scan.fit,
            "contrast": scan.contrast,
            "note": scan.note,
            "pixel_mm": [round(p, 3) for p in pixel],
            "slice_mm": round(dz, 3),
            "floor": floor_name,
            "tissues": {n: s.to_dict() for n, s in stats.items()},
        }
        if scan.fit:
            fitted.append((scan, stats, floor, pixel, dz))
    if not fitted:
        raise ValueError("no scan is marked fit=True")

    # In-plane correlation σ: least squares over the fitted scans' floor tissues.
    errors = []
    for s in sigma_grid:
        err = 0.0
        for _, _, floor, pixel, _ in fitted:
            _, c1, c2 = _predicted(pixel, float(s))
            m1, m2 = floor.inplane_correlation
            err += (c1 - m1) ** 2 + (c2 - m2) ** 2
        errors.append(err)
    sigma = float(sigma_grid[int(np.argmin(errors))])

    # Amplitude at 5 mm and slice correlation length.
    amplitudes, pairs = [], []
    extras: dict[str, list[float]] = {}
    for scan, stats, floor, pixel, dz in fitted:
        kept = _predicted(pixel, sigma)[0]
        full = floor.grain / kept
        amplitudes.append(full * math.sqrt(dz / REFERENCE_SLICE_MM))
        report[scan.name]["floor_full_band_hu"] = round(full, 3)
        if floor.slice_correlation is not None:
            pairs.append((dz, floor.slice_correlation))
        if scan.contrast:
            for name in EXTRA_CANDIDATES:
                if name in stats:
                    extra = math.sqrt(max(stats[name].grain ** 2 - floor.grain**2, 0.0)) / kept
                    extras.setdefault(name, []).append(extra)
    if pairs:
        errs = [sum((math.exp(-d / ell) - r) ** 2 for d, r in pairs) for ell in length_grid]
        length = float(length_grid[int(np.argmin(errs))])
    else:
        raise ValueError("no fitted scan has two adjacent slices of its floor tissue")
    contrast_extra = {
        n: round(math.sqrt(sum(v * v for v in vals) / len(vals)), 2) for n, vals in sorted(extras.items())
    }
    contrast_extra = {n: v for n, v in contrast_extra.items() if v > 0}
    provenance = {
        "fitted_on": [s.name for s, *_ in fitted],
        "measured_not_fitted": {s.name: s.note for s in scans if not s.fit},
        "notes": {s.name: s.note for s, *_ in fitted},
        "method": "guidegen.images.texture_fit (benchmarks/fit_texture.py); measurements as in guidegen.images.grain",
        "amplitude_per_scan_hu_at_5mm": [round(a, 3) for a in amplitudes],
        "slice_correlation_pairs": [[round(d, 3), round(r, 3)] for d, r in pairs],
    }
    model = TextureModel(
        noise_hu=round(float(np.mean(amplitudes)), 2),
        inplane_sigma_mm=round(sigma, 3),
        slice_correlation_mm=round(length, 3),
        contrast_extra_hu=contrast_extra,
        provenance=provenance,
    )
    return model, report
