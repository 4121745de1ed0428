"""CT resampled onto a finer grid without blending tissue across label borders.

`guidegen.grids.resample.resample_ct` interpolates linearly: on a grid finer than the source, a
voxel near an organ's border takes a mixture of the organ and its neighbour (fat, air) over a band as
wide as one source voxel. On the model's 3 mm grid that band is the partial-volume effect a 3 mm CT
really has; resampled onto a user's 0.6 mm grid it is not: real CT at 0.6 mm keeps an organ at its
own HU up to its border. Measured on the held-out AMOS 0001 map (0.57 mm pixels), the generated
liver's mean over all its voxels was 33 HU where its interior was 48 HU (real: 50 and 54).

`resample_ct_within_classes` interpolates each target voxel only from source voxels of its own
class, and prefers the class's *interior* source voxels, because the model's border voxels are
themselves mixtures (it was trained on CT downsampled with the same partial volume):

- inside a class, where every source voxel the linear interpolation uses is interior to that class,
  the result is `resample_ct`'s value exactly (the texture the model drew is kept);
- elsewhere a voxel takes ``A + (1 - B) · F``: ``A`` and ``B`` are the linear interpolation's
  weighted sum of, and total weight on, the interior voxels of its class, and ``F`` fills the rest
  of the weight with the class's interior values carried outwards (a normalised Gaussian of the
  interior, σ = one source voxel) or, for a structure too thin to have an interior, the mean of its
  own border voxels (normalised convolution, Knutsson & Westin 1993);
- a voxel whose class the source grid does not have nearby keeps `resample_ct`'s value.

Structures whose border looks different from their inside for real (bone's cortex, a bowel wall
around gas, the kidney's cortex after contrast, a tumour's rim) are named outside ``fill``: they are
still interpolated only from their own voxels, but border voxels count like any other.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from scipy import ndimage

from guidegen.grids.resample import resample_ct
from guidegen.io.volume import HU_MIN, Volume
from guidegen.labels.vocabulary import UNKNOWN

__all__ = ["PSF_SIGMA_MM", "point_spread", "resample_ct_within_classes"]

#: Width (source voxels) of the Gaussian that carries a class's interior values out to its border.
FILL_SIGMA = 1.0
#: Weight of a thin structure's own border voxels against its carried interior values in ``F``.
BORDER_WEIGHT = 0.01
#: scipy's Gaussian truncation (radius = truncate · σ); also how far purity is eroded for it.
_TRUNCATE = 4.0
#: Target voxels processed at once (each costs ~8 float64 coordinates and values).
_CHUNK = 1 << 21
_IMPURE = np.int16(-1)
#: A scanner's point-spread (Gaussian σ, mm): a soft-tissue kernel blurs an edge over about a
#: millimetre, so a border copied from a (possibly staircased) label map is softened that much.
PSF_SIGMA_MM = 0.5


def _prefilter_sigma(matrix: np.ndarray) -> np.ndarray:
    # The anti-aliasing of `resample_ct`: downsampled source axes are smoothed before interpolating.
    step = np.linalg.norm(matrix, axis=1)
    return np.where(step > 1.5, 0.4 * step, 0.0)


def _interior(labels: np.ndarray, fill: Collection[int] | None) -> np.ndarray:
    """(X, Y, Z) int16: a voxel's class where its six neighbours share it or its class is not in
    ``fill`` (``None``: every class is), else -1 (a border voxel of a ``fill`` class)."""
    source = labels.astype(np.int16)
    out = source.copy()
    padded = np.pad(source, 1, mode="edge")
    core = (slice(1, -1),) * 3
    for axis in range(3):
        for shift in (-1, 1):
            index = list(core)
            index[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            out = np.where(padded[tuple(index)] == source, out, _IMPURE)
    if fill is not None:
        keep = ~np.isin(source, np.fromiter(fill, dtype=np.int16, count=len(fill)))
        out[keep] = source[keep]
    return out


def _pure_cells(interior: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Label of each interpolation cell whose 8 corners (and prefilter support) are one class's interior, else -1."""
    hi = lo = interior
    for axis in range(3):
        # Window [i - r, i + 1 + r] for cell i: its two corners and the prefilter's radius r.
        size = 2 + 2 * (int(_TRUNCATE * sigma[axis] + 0.5) if sigma[axis] > 0 else 0)
        hi = ndimage.maximum_filter1d(hi, size, axis=axis, mode="nearest", origin=-1)
        lo = ndimage.minimum_filter1d(lo, size, axis=axis, mode="nearest", origin=-1)
    cells = np.where(hi == lo, lo, _IMPURE)
    return cells[:-1, :-1, :-1] if min(cells.shape) > 1 else cells


def resample_ct_within_classes(
    ct: Volume,
    ct_labels: np.ndarray,
    target_labels: np.ndarray,
    target_affine: np.ndarray,
    plain: np.ndarray | None = None,
    fill: Collection[int] | None = None,
) -> np.ndarray:
    """Resample ``ct`` onto the grid of ``target_labels`` without mixing classes at their borders.

    Args:
        ct: CT on a source grid (any affine).
        ct_labels: (same shape as ``ct``) the class of each source voxel (the map the CT was drawn
            from, on that grid).
        target_labels: (X, Y, Z) class of each target voxel, in the same ids; `UNKNOWN` voxels keep
            the plain value.
        target_affine: the target grid's affine.
        plain: `resample_ct`'s result on the target grid, if already computed.
        fill: the classes whose interior values are carried out to their border (``None``: all);
            the others are interpolated from all their own voxels, border included.

    Returns:
        (X, Y, Z) float32 HU on the target grid.
    """
    if ct_labels.shape != ct.shape:
        raise ValueError(f"ct_labels {ct_labels.shape} must have the CT's shape {ct.shape}")
    shape = tuple(int(s) for s in target_labels.shape)
    if plain is None:
        plain = resample_ct(ct, target_affine, shape).array
    out = np.array(plain, dtype=np.float32, copy=True)
    m = np.linalg.inv(ct.affine) @ target_affine
    matrix, offset = m[:3, :3], m[:3, 3]
    sigma = _prefilter_sigma(matrix)
    data = np.maximum(ct.array.astype(np.float32), HU_MIN)
    interior = _interior(ct_labels, fill)
    # The cell containing a target voxel: floor of its source coordinate (order-0 rounds, hence -0.5).
    cells = _pure_cells(interior, sigma)
    target_cell = ndimage.affine_transform(
        cells, matrix, offset - 0.5, output_shape=shape, order=0, mode="constant", cval=int(_IMPURE)
    )
    target = np.asarray(target_labels)
    work = (target.astype(np.int16) != target_cell) & (target != UNKNOWN)
    del target_cell
    for c in np.unique(target[work]):
        points = np.nonzero(work & (target == c))
        _fill_class(out, points, data, ct_labels == c, interior == c, matrix, offset, sigma)
    return out


def _fill_class(
    out: np.ndarray,
    points: tuple[np.ndarray, ...],
    data: np.ndarray,
    member: np.ndarray,
    inner: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    sigma: np.ndarray,
) -> None:
    """Write the within-class values of one class's target ``points`` into ``out``."""
    if not member.any():
        return
    # Work in a box of the source grid around the class (plus every kernel's reach), not all of it.
    reach = 2 + int(_TRUNCATE * (FILL_SIGMA + float(sigma.max())) + 0.5)
    idx = np.argwhere(member)
    lo = np.maximum(idx.min(0) - reach, 0)
    hi = np.minimum(idx.max(0) + reach + 1, member.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    values, wi, wa = data[box], inner[box].astype(np.float32), member[box].astype(np.float32)
    channels = [values * wi, wi, values * wa, wa]
    channels += [ndimage.gaussian_filter(values * wi, FILL_SIGMA), ndimage.gaussian_filter(wi, FILL_SIGMA)]
    if np.any(sigma > 0):
        channels = [ndimage.gaussian_filter(ch, sigma, mode="nearest") for ch in channels]
    box_offset = offset - lo
    for start in range(0, len(points[0]), _CHUNK):
        chunk = tuple(p[start : start + _CHUNK] for p in points)
        coords = matrix @ np.stack(chunk).astype(np.float64) + box_offset[:, None]
        a_int, b_int, a_all, b_all, s_num, s_den = (
            ndimage.map_coordinates(ch, coords, order=1, mode="constant", cval=0.0) for ch in channels
        )
        f_den = s_den + BORDER_WEIGHT * b_all
        ok = f_den > 1e-6
        fill = np.divide(s_num + BORDER_WEIGHT * a_all, f_den, out=np.zeros_like(f_den), where=ok)
        value = a_int + (1.0 - b_int) * fill
        out[chunk] = np.where(ok, value, out[chunk]).astype(np.float32)


def point_spread(hu: np.ndarray, spacing: np.ndarray | tuple[float, float, float]) -> np.ndarray:
    """``hu`` blurred by the scanner point-spread `PSF_SIGMA_MM` along each axis (none along axes
    whose voxels are so coarse that the blur would be below a quarter voxel)."""
    sigma = PSF_SIGMA_MM / np.asarray(spacing, dtype=np.float64)
    sigma = np.where(sigma >= 0.25, sigma, 0.0)
    if not np.any(sigma > 0):
        return np.asarray(hu, dtype=np.float32)
    return ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), sigma, mode="nearest")
