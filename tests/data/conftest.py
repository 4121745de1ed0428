"""Fixtures and helpers shared by the tests of `guidegen.data.augment` and `guidegen.data.ops`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from guidegen.data.ops import SOFT_CLASSES, TumourShape, default_tumour_shapes
from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID

SOFT = {ID[n] for n in SOFT_CLASSES}
#: Classes that growth and tumours must leave alone (everything but soft tissue, tumour, unknown).
SOLID = [i for i in range(len(ID)) if i not in SOFT and i != ID["tumour"]]


@pytest.fixture(scope="package")
def cases(tmp_path_factory, real: Path) -> dict[str, dict]:
    """Prepared real label maps on the mask sampler's 6 mm grid.

    masks-only (AMOS 13 + the colon tumour) is left out here: preparing it takes ~9 s and these
    tests need a complete map (TotalSegmentator example) and one with a real unknown region (LiTS).
    """
    out = tmp_path_factory.mktemp("prepared6")
    result = prepare(
        [real / "totalseg-example-a", real / "lits-117-crop"],
        out,
        PrepareConfig(spacing=(6.0, 6.0, 6.0), size_xy=(64, 64)),
        progress=False,
    )
    assert result.failed == []
    return {e["case_id"]: e for e in load_prepared(out)}


@pytest.fixture(scope="package")
def labels(cases) -> Volume:
    return read_nifti(cases["totalseg-example-a"]["labels_path"], kind="labels")


@pytest.fixture(scope="package")
def ct(cases) -> Volume:
    return read_nifti(cases["totalseg-example-a"]["ct_path"])


@pytest.fixture(scope="package")
def bank(real: Path) -> list[TumourShape]:
    return default_tumour_shapes(real)


def counts(volume: Volume | np.ndarray) -> np.ndarray:
    array = volume.array if isinstance(volume, Volume) else volume
    return np.bincount(array.ravel(), minlength=256)


def centroid_x(volume: Volume, class_id: int) -> float:
    return float(volume.world_coordinates(np.argwhere(volume.array == class_id).mean(axis=0))[0])


def brute_diameter(mask: np.ndarray, affine: np.ndarray) -> float:
    """Longest diameter by brute force: the largest distance between two voxel centres, mm."""
    world = np.argwhere(mask) @ affine[:3, :3].T
    return float(np.sqrt(((world[:, None] - world[None]) ** 2).sum(-1).max()))


def toy_site_of(labels: Volume, points: np.ndarray) -> list[str]:
    """Test-only colon segments by position relative to the colon's extent (RAS+: +x = patient right)."""
    world = labels.world_coordinates(np.argwhere(labels.array == ID["colon"]))
    lo, hi = world.min(0), world.max(0)
    mid, size = (lo + hi) / 2, hi - lo
    names = []
    for x, _, z in np.asarray(points):
        if z < lo[2] + 0.25 * size[2]:
            names.append("sigmoid")
        elif x > mid[0] + 0.2 * size[0]:
            names.append("ascending")
        elif x < mid[0] - 0.2 * size[0]:
            names.append("descending")
        else:
            names.append("transverse")
    return names
