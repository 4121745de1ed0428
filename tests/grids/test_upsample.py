"""Upsampling sampled label maps to the image grid (guidegen.grids.upsample) on real masks."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.data.prepare import load_prepared, prepare
from guidegen.grids.upsample import component_counts, upsample_grid, upsample_labels
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, UNKNOWN

LARGE_ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "urinary_bladder", "colon", "body")


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory, real):
    """Real 3 mm labels, their 6 mm version (the sampler's grid) and that upsampled back to 3 mm."""
    out = tmp_path_factory.mktemp("prepared")
    prepare([real / "totalseg-example-a"], out, progress=False)
    entry = load_prepared(out)[0]
    original = read_nifti(entry["labels_path"], kind="labels")
    coarse = upsample_labels(original, (6.0, 6.0, 6.0), fix_connectivity=False)  # shape-based downsampling
    fine = upsample_labels(coarse, (3.0, 3.0, 3.0))
    return original, coarse, fine


def test_back_on_the_original_grid(round_trip):
    original, coarse, fine = round_trip
    assert coarse.shape == (64, 64, 56)
    assert fine.same_grid(original)
    assert fine.array.dtype == np.uint8


def test_large_organs_survive_the_round_trip(round_trip):
    original, _, fine = round_trip
    for name in LARGE_ORGANS:
        a, b = original.array == ID[name], fine.array == ID[name]
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice >= 0.8, (name, dice)
    # Unknown voxels (outside the scan) stay unknown: the 6 mm grid rounds the 3 mm border shell,
    # upsampling keeps what the coarse map has.
    unknown = original.array == UNKNOWN
    assert ((fine.array == UNKNOWN) & unknown).sum() >= 0.85 * unknown.sum()


def test_upsampling_keeps_the_coarse_unknown_region(round_trip):
    _, coarse, fine = round_trip
    assert (fine.array == UNKNOWN).mean() == pytest.approx((coarse.array == UNKNOWN).mean(), abs=0.01)


def test_no_class_gains_components(round_trip):
    _, coarse, fine = round_trip
    before, after = component_counts(coarse.array), component_counts(fine.array)
    for cls, n in after.items():
        assert n <= before.get(cls, 0), (cls, n, before.get(cls))


def test_connectivity_repair_is_needed_and_works(round_trip):
    _, coarse, _ = round_trip
    raw = upsample_labels(coarse, (3.0, 3.0, 3.0), fix_connectivity=False)
    before, broken = component_counts(coarse.array), component_counts(raw.array)
    assert any(n > before[c] for c, n in broken.items())  # plain shape-based interpolation breaks some


def test_thin_diagonal_vessel_stays_connected():
    arr = np.zeros((12, 12, 12), np.uint8)
    for i in range(2, 10):
        arr[i, i, 6] = ID["aorta"]  # touching only at edges: one 26-connected component
    coarse = Volume(arr, np.diag([6.0, 6.0, 6.0, 1.0]), "labels")
    fine = upsample_labels(coarse, (2.0, 2.0, 2.0))
    assert fine.shape == (36, 36, 36)
    assert component_counts(fine.array)[ID["aorta"]] == 1


def test_grid_follows_the_input_and_arguments_are_checked():
    lps = np.diag([-6.0, -6.0, 6.0, 1.0])
    lps[:3, 3] = (100.0, 50.0, -20.0)
    vol = Volume(np.zeros((10, 8, 6), np.uint8), lps, "labels")
    affine, shape = upsample_grid(vol, (3.0, 3.0, 3.0))
    assert shape == (20, 16, 12)
    assert np.allclose(np.diag(affine)[:3], [-3.0, -3.0, 3.0])
    centre_in = vol.world_coordinates((np.array(vol.shape) - 1) / 2)
    centre_out = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    assert np.allclose(centre_in, centre_out)
    with pytest.raises(ValueError, match="spacing"):
        upsample_labels(vol, (0.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="shape"):
        upsample_labels(vol, affine=np.eye(4))
