"""Native-resolution texture: CT noise at the scales a coarse model grid cannot carry.

The image generator draws CT on a 3 mm grid; `generate_ct` resamples it onto the user's grid. On a
finer grid (0.6–1 mm pixels are usual) that is a smooth image: real CT at that resolution has
scanner noise with a grain of about a pixel. This module adds that grain, and only that: a
Gaussian random field shaped like the noise measured in real scans, high-passed so that it holds
no scale the model grid already carries, scaled per tissue.

The noise model (parameters in ``texture_model.json``, fitted by `guidegen.images.texture_fit`
to real scans; see there and ``docs/results/byom_native.txt``):

* **in-plane**: white noise blurred by a Gaussian of σ ``inplane_sigma_mm`` (the noise
  autocorrelation of a soft-tissue reconstruction kernel, a fraction of a millimetre), then
  high-passed by subtracting its Gaussian average of σ = ``highpass_fraction`` × the model's
  in-plane voxel size (3 mm → 1.1 mm: half the power removed at the model grid's Nyquist
  frequency, 1/6 cycles/mm). The model's image keeps everything coarser.
* **through-plane**: slice k is ``ρ·n(k−1) + √(1−ρ²)·ξ(k)``, an AR(1) process with
  ``ρ = exp(−Δz / slice_correlation_mm)`` for slices Δz apart (adjacent reconstructed slices share
  some noise when they overlap, almost none 5 mm apart).
* **amplitude**: ``σ = σ₅ · √(5 mm / Δz)``, the quantum-noise scaling with slice thickness
  (noise variance ∝ 1 / (dose × slice thickness); e.g. Hsieh, *Computed Tomography*, 2nd ed.,
  SPIE 2009, ch. 5), Δz the slice spacing standing in for the unknown slice thickness. σ₅ is the
  noise of the most homogeneous tissue of the fitted scans; in contrast phases some tissues
  (kidney cortex and medulla, enhancing pancreas) are grainier, which the model adds in quadrature
  (``contrast_extra_hu``). Unenhanced tissues all take σ: in an unenhanced scan the grain is
  noise, the same in every organ (measured in ``texture_fit``).

Everything is deterministic given the seed (slice k draws from its own stream, so the result does
not depend on how the volume is split into chunks). Labels are never changed; the HU are
clipped to the stored range. Air at or below −1000 HU (outside the body and outside the model's
field of view) is left as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import fft, ndimage

from guidegen.images.grain import slice_axis
from guidegen.io.volume import HU_MAX, HU_MIN
from guidegen.labels.vocabulary import NAMES, UNKNOWN

__all__ = [
    "AIR_HU",
    "AMPLITUDE_SMOOTHING_MM",
    "TextureModel",
    "add_texture",
    "finer_than",
    "load_texture_model",
    "texture_applies",
    "texture_field",
]

#: Slice thickness (mm) the amplitude σ₅ refers to.
REFERENCE_SLICE_MM = 5.0
#: Δz outside this range (mm) is clipped before scaling the amplitude.
SLICE_MM_RANGE = (0.5, 10.0)
#: Generated HU at or below this stays untouched (air outside the body / outside the model's field of view).
AIR_HU = -1000.0
#: A grid is finer than the model's where a voxel is smaller than this fraction of the model's.
FINER = 0.9
#: σ (mm) of the smoothing of the per-tissue amplitude map, so a label border is no step in grain.
AMPLITUDE_SMOOTHING_MM = 1.0
#: Slices processed together (bounds memory on large volumes).
CHUNK = 16
#: Stream tag of the texture's random numbers (independent of the generator's noise with the same seed).
_STREAM = 0x7E47


@dataclass(frozen=True)
class TextureModel:
    """Fitted parameters of the noise model (module docstring), as stored in ``texture_model.json``.

    Attributes:
        noise_hu: σ₅, full-band noise standard deviation (HU) at 5 mm slices.
        inplane_sigma_mm: σ of the in-plane Gaussian correlation of the noise (mm).
        slice_correlation_mm: ℓ in ρ = exp(−Δz/ℓ) between slices Δz apart (mm).
        highpass_fraction: σ of the high-pass as a fraction of the model's in-plane voxel size.
        contrast_extra_hu: class name → extra grain (HU, added in quadrature) in contrast phases.
        provenance: where the numbers come from (scans, measurements, what was left out and why).
    """

    noise_hu: float
    inplane_sigma_mm: float
    slice_correlation_mm: float
    highpass_fraction: float = 0.375
    contrast_extra_hu: Mapping[str, float] = field(default_factory=dict)
    provenance: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("noise_hu", "inplane_sigma_mm", "slice_correlation_mm", "highpass_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, value in self.contrast_extra_hu.items():
            if name not in NAMES:
                raise ValueError(f"contrast_extra_hu: unknown class {name!r}")
            if not value >= 0:
                raise ValueError(f"contrast_extra_hu[{name!r}] must be >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: Mapping) -> TextureModel:
        keys = (
            "noise_hu",
            "inplane_sigma_mm",
            "slice_correlation_mm",
            "highpass_fraction",
            "contrast_extra_hu",
            "provenance",
        )
        return cls(**{k: data[k] for k in keys if k in data})

    def to_dict(self) -> dict:
        return {
            "noise_hu": self.noise_hu,
            "inplane_sigma_mm": self.inplane_sigma_mm,
            "slice_correlation_mm": self.slice_correlation_mm,
            "highpass_fraction": self.highpass_fraction,
            "contrast_extra_hu": dict(self.contrast_extra_hu),
            "provenance": dict(self.provenance),
        }

    def noise_at(self, slice_mm: float) -> float:
        """σ (HU) of unenhanced tissue for slices ``slice_mm`` apart."""
        dz = min(max(float(slice_mm), SLICE_MM_RANGE[0]), SLICE_MM_RANGE[1])
        return self.noise_hu * math.sqrt(REFERENCE_SLICE_MM / dz)

    def amplitudes(self, slice_mm: float, phase: str | None) -> np.ndarray:
        """(256,) σ (HU) by label id: the noise, plus the contrast extra of each class in a contrast phase."""
        base = self.noise_at(slice_mm)
        table = np.full(256, base, dtype=np.float32)
        if phase not in (None, "non_contrast"):
            for name, extra in self.contrast_extra_hu.items():
                table[NAMES.index(name)] = math.hypot(base, extra)
        table[UNKNOWN] = base
        return table


def _resource_path() -> Path:
    return Path(str(resources.files("guidegen.images").joinpath("texture_model.json")))


@lru_cache(maxsize=4)
def load_texture_model(path: str | None = None) -> TextureModel:
    """The shipped texture model (``guidegen/images/texture_model.json``), or one from ``path``."""
    source = Path(path) if path is not None else _resource_path()
    return TextureModel.from_dict(json.loads(source.read_text(encoding="utf-8")))


def finer_than(spacing: Sequence[float], model_spacing: Sequence[float], axis: int) -> tuple[bool, bool]:
    """(in-plane finer, through-plane finer) than the model grid for a grid with slice axis ``axis``."""
    inplane = [float(spacing[a]) for a in range(3) if a != axis]
    model_inplane = float(min(model_spacing[0], model_spacing[1]))
    return (min(inplane) < FINER * model_inplane, float(spacing[axis]) < FINER * float(model_spacing[2]))


def texture_applies(affine: np.ndarray, model_spacing: Sequence[float]) -> bool:
    """Whether a grid is finer than the model's in-plane (where the model's image lacks the grain)."""
    axis = slice_axis(affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return finer_than(spacing, model_spacing, axis)[0]


def gaussian_kernel(sigma_px: float) -> np.ndarray:
    """A normalised 1-D Gaussian kernel (σ in pixels; a delta below 0.05 px)."""
    if sigma_px < 0.05:
        return np.ones(1)
    radius = max(1, int(math.ceil(4.0 * sigma_px)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


def inplane_filter(pixel_mm: tuple[float, float], inplane_sigma_mm: float, highpass_mm: float | None) -> np.ndarray:
    """The 2-D impulse response that shapes white noise in-plane: the correlation Gaussian, then
    (``highpass_mm`` given) minus its Gaussian average of σ ``highpass_mm``."""
    kernels = []
    for p in pixel_mm:
        shape = gaussian_kernel(inplane_sigma_mm / p)
        if highpass_mm is not None:
            kernels.append((shape, gaussian_kernel(highpass_mm / p)))
        else:
            kernels.append((shape, None))
    (sx, lx), (sy, ly) = kernels
    shaped = np.outer(sx, sy)
    if lx is None:
        return shaped
    pad = (len(lx) // 2, len(ly) // 2)
    shaped = np.pad(shaped, ((pad[0], pad[0]), (pad[1], pad[1])))
    low = ndimage.convolve1d(ndimage.convolve1d(shaped, lx, axis=0, mode="constant"), ly, axis=1, mode="constant")
    return shaped - low


def _filter_slice(white: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """White noise (X, Y) → shaped noise, by FFT convolution with ``kernel`` (periodic, which keeps
    the variance the same everywhere, edges included)."""
    kx, ky = kernel.shape
    padded = np.zeros(white.shape, dtype=np.float64)
    sx, sy = min(kx, white.shape[0]), min(ky, white.shape[1])
    padded[:sx, :sy] = kernel[:sx, :sy]
    padded = np.roll(padded, (-(kx // 2), -(ky // 2)), axis=(0, 1))
    return fft.irfft2(fft.rfft2(white) * fft.rfft2(padded), s=white.shape).astype(np.float32)


def texture_field(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    model: TextureModel,
    model_inplane_mm: float,
    seed: int,
    first: int = 0,
    previous: np.ndarray | None = None,
    stream: int = _STREAM,
) -> np.ndarray:
    """Unit-variance (before the high-pass) noise field of slices ``first … first + Z − 1``.

    Args:
        shape: (X, Y, Z), slices last.
        spacing: voxel size (mm) in that order.
        model: the texture model.
        model_inplane_mm: the model grid's in-plane voxel size (sets the high-pass).
        seed: the seed; slice k's white noise comes from ``SeedSequence([seed, tag, k])``.
        first: index of the first slice (for chunks).
        previous: the AR(1) state, slice ``first − 1`` of the field (``None`` for the first).
        stream: tag of the random stream (another tag: an independent field with the same seed).

    Returns:
        (X, Y, Z) float32.
    """
    kernel = inplane_filter(spacing[:2], model.inplane_sigma_mm, model.highpass_fraction * model_inplane_mm)
    full = inplane_filter(spacing[:2], model.inplane_sigma_mm, None)
    kernel = kernel / math.sqrt(float((full**2).sum()))  # unit variance before the high-pass
    rho = math.exp(-float(spacing[2]) / model.slice_correlation_mm)
    out = np.empty(shape, dtype=np.float32)
    state = previous
    for j in range(shape[2]):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream, first + j]))
        fresh = _filter_slice(rng.standard_normal(shape[:2]), kernel)
        state = fresh if state is None else (rho * state + math.sqrt(1.0 - rho * rho) * fresh).astype(np.float32)
        out[..., j] = state
    return out


def add_texture(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    model_spacing: Sequence[float],
    seed: int,
    phase: str | None = None,
    model: TextureModel | None = None,
) -> tuple[np.ndarray, dict]:
    """Add native-resolution texture to a CT resampled from the model grid onto a finer grid.

    Args:
        hu: (X, Y, Z) CT in HU (float) on the labels' grid, any axis order.
        labels: (X, Y, Z) GuideGen ids (255 unknown) on the same grid; selects each voxel's amplitude.
        affine: the grid's voxel → world affine (gives voxel sizes and the slice axis).
        model_spacing: the model grid's voxel size (mm).
        seed: texture seed.
        phase: contrast phase (``None`` / "non_contrast": no contrast extras).
        model: texture parameters; default the shipped ones.

    Returns:
        (float32 HU clipped to the stored range, a JSON-able record of what was done).
    """
    model = model or load_texture_model()
    if hu.shape != labels.shape:
        raise ValueError(f"hu and labels must have the same shape, got {hu.shape} and {labels.shape}")
    axis = slice_axis(affine)
    spacing_all = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    inplane_finer, _ = finer_than(spacing_all, model_spacing, axis)
    if not inplane_finer:
        return np.clip(hu, HU_MIN, HU_MAX).astype(np.float32), {
            "applied": False,
            "reason": "grid not finer than the model's in-plane",
        }
    out = np.moveaxis(np.clip(hu, HU_MIN, HU_MAX).astype(np.float32), axis, -1).copy()
    lab = np.moveaxis(np.asarray(labels), axis, -1)
    order = [a for a in range(3) if a != axis] + [axis]
    spacing = tuple(float(spacing_all[a]) for a in order)
    table = model.amplitudes(spacing[2], phase)
    smooth = tuple(AMPLITUDE_SMOOTHING_MM / s for s in spacing[:2]) + (0.0,)
    model_inplane = float(min(model_spacing[0], model_spacing[1]))
    state = None
    for start in range(0, out.shape[2], CHUNK):
        stop = min(start + CHUNK, out.shape[2])
        noise = texture_field(out.shape[:2] + (stop - start,), spacing, model, model_inplane, seed, start, state)
        state = noise[..., -1].copy()
        sigma = ndimage.gaussian_filter(table[lab[..., start:stop].astype(np.intp)], smooth, mode="nearest")
        block = out[..., start:stop]
        tissue = block > AIR_HU
        block[tissue] += (sigma * noise)[tissue]
    np.clip(out, HU_MIN, HU_MAX, out=out)
    record = {
        "applied": True,
        "noise_hu": round(model.noise_at(spacing[2]), 2),
        "inplane_sigma_mm": model.inplane_sigma_mm,
        "slice_correlation": round(math.exp(-spacing[2] / model.slice_correlation_mm), 3),
        "highpass_mm": round(model.highpass_fraction * model_inplane, 3),
        "seed": int(seed),
    }
    return np.moveaxis(out, -1, axis), record
