"""Remapping foreign label maps keeps left and right (issue 24): AMOS, TotalSegmentator and KiTS
ids on real maps, stored as they come, RAS and LPS, land in the GuideGen kidney, liver and spleen
classes on the patient's correct side (world RAS+: +x = patient's right)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.evaluation.mask_anatomy import SIDES, side_check
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume, canonical
from guidegen.labels.remap import remap_labels
from guidegen.labels.vocabulary import ID
from guidegen.text.sides import kidneys_swapped
from tests.sides_maps import stored_lps

STORAGE = {"as stored": lambda v: v, "RAS": canonical, "LPS": lambda v: stored_lps(canonical(v))}


def _remapped(volume: Volume, vocabulary: str) -> Volume:
    array, annotated = remap_labels(volume.array, vocabulary, affine=volume.affine)
    return Volume(array, volume.affine, "labels", {"annotated": sorted(annotated)})


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize(
    "folder, vocabulary", [("amos-0013-slices", "amos"), ("totalseg-example-a", "totalsegmentator")]
)
def test_remapped_real_maps_keep_sides(real, folder, vocabulary, storage):
    stored = read_nifti(real / folder / "labels.nii.gz", kind="labels", reorient=False)
    labels = _remapped(STORAGE[storage](stored), vocabulary)
    assert side_check(labels) == dict.fromkeys(SIDES, True)
    assert not kidneys_swapped(labels)


@pytest.mark.parametrize("storage", STORAGE)
def test_kits_shared_kidney_id_is_split_by_world_position(real, storage):
    # KiTS gives both kidneys one id; the split must agree with TotalSegmentator's own sides.
    stored = STORAGE[storage](read_nifti(real / "totalseg-example-a" / "labels.nii.gz", kind="labels", reorient=False))
    truth = _remapped(stored, "totalsegmentator").array
    kits = np.where(np.isin(stored.array, [2, 3]), 1, 0).astype(np.uint8)  # TotalSegmentator 2, 3: kidneys
    split = _remapped(stored.with_array(kits), "kits").array
    for side in ("kidney_right", "kidney_left"):
        assert np.array_equal(split == ID[side], truth == ID[side]), side


def test_totalsegmentator_kidney_cysts_join_their_own_kidney(real):
    stored = read_nifti(real / "totalseg-example-a" / "labels.nii.gz", kind="labels")
    array = stored.array.copy()
    # A cyst in each kidney, with TotalSegmentator's cyst ids (23 left, 24 right).
    for kidney, cyst in ((3, 23), (2, 24)):
        centre = np.round(np.argwhere(array == kidney).mean(axis=0)).astype(int)
        array[tuple(slice(c - 1, c + 2) for c in centre)] = cyst
    labels = _remapped(stored.with_array(array), "totalsegmentator")
    assert np.all(labels.array[array == 23] == ID["kidney_left"])
    assert np.all(labels.array[array == 24] == ID["kidney_right"])
    x = {cyst: labels.world_coordinates(np.argwhere(array == cyst))[:, 0].mean() for cyst in (23, 24)}
    assert x[24] > x[23]  # the right kidney's cyst at the patient's right: the ids were not mixed up
    assert not kidneys_swapped(labels)
