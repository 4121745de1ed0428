from __future__ import annotations

import json

import numpy as np
import pytest

from guidegen.errors import InputError
from guidegen.io.nifti import read_nifti
from guidegen.labels.remap import (
    available_vocabularies,
    class_for_name,
    combine_structure_masks,
    load_vocabulary,
    names_from_ids,
    remap_labels,
)
from guidegen.labels.vocabulary import ID, NAMES, PAPER_CLASSES, UNKNOWN


def test_vocabulary_has_the_papers_classes_and_the_extras():
    assert PAPER_CLASSES == (
        "background",
        "spleen",
        "kidney_right",
        "kidney_left",
        "liver",
        "stomach",
        "pancreas",
        "small_bowel",
        "duodenum",
        "colon",
        "urinary_bladder",
        "tumour",
    )
    for extra in ("body", "bone", "aorta", "inferior_vena_cava", "gallbladder"):
        assert extra in NAMES
    assert UNKNOWN not in ID.values()


def test_every_source_maps_to_known_classes():
    for name in available_vocabularies():
        vocab = load_vocabulary(name)
        assert vocab.annotated <= set(NAMES)
        assert 0 not in vocab.map or vocab.map[0] == "background"


def test_totalsegmentator_covers_all_117_ids(real):
    names = json.loads((real / "totalseg-labels.json").read_text())
    vocab = load_vocabulary("totalsegmentator")
    assert set(vocab.map) == {int(k) for k in names}
    assert vocab.map[5] == "liver" and vocab.map[64] == "portal_vein" and vocab.map[28] == "bone"
    assert vocab.map[10] == "lung" and vocab.map[51] == "heart" and vocab.map[88] == "muscle"  # vocabulary 2
    assert vocab.map[65] == "other_artery" and vocab.map[67] == "other_vein"
    assert vocab.map[8] == "background"  # an adrenal gland is annotated as "not one of ours"
    assert "tumour" not in vocab.annotated  # TotalSegmentator does not segment tumours: unknown


def test_totalseg_real_labels(real):
    raw = read_nifti(real / "totalseg-example-a" / "labels.nii.gz", kind="labels")
    out, annotated = remap_labels(raw.array, "totalsegmentator")
    np.testing.assert_array_equal(out == ID["liver"], raw.array == 5)
    vertebrae = np.isin(raw.array, range(25, 51))
    assert np.all(out[vertebrae] == ID["bone"])
    assert "colon" in annotated and "body" not in annotated


def test_amos_real_labels_are_partial(real):
    raw = read_nifti(real / "amos-0013-slices" / "labels.nii.gz", kind="labels")
    out, annotated = remap_labels(raw.array, "amos")
    np.testing.assert_array_equal(out == ID["inferior_vena_cava"], raw.array == 9)
    assert np.all(out[raw.array == 11] == 0)  # adrenal gland: not a GuideGen class
    # AMOS does not annotate bowel: those voxels are not "no colon", they are unknown.
    assert "colon" not in annotated and "small_bowel" not in annotated and "liver" in annotated


def test_lits_tumour(real):
    raw = read_nifti(real / "lits-117-crop" / "labels.nii.gz", kind="labels")
    out, annotated = remap_labels(raw.array, "lits")
    assert annotated == {"liver", "tumour"}
    assert (out == ID["tumour"]).sum() == (raw.array == 2).sum() > 0


def test_unknown_ids_are_refused():
    with pytest.raises(InputError, match="16"):
        remap_labels(np.array([[[0, 16]]]), "amos", path="x.nii.gz")


def test_kits_kidneys_are_split_by_side():
    # Two blobs: the one at larger world x is the patient's right kidney (RAS+).
    array = np.zeros((20, 6, 6), np.uint8)
    array[2:5, 2:4, 2:4] = 1
    array[14:17, 2:4, 2:4] = 1
    array[15, 2, 2] = 2  # tumour inside the right one
    out, annotated = remap_labels(array, "kits", affine=np.eye(4))
    assert np.all(out[2:5, 2:4, 2:4] == ID["kidney_left"])
    assert out[15, 2, 2] == ID["tumour"] and out[14, 2, 2] == ID["kidney_right"]
    assert {"kidney_right", "kidney_left", "tumour"} <= annotated


def test_structure_names():
    assert class_for_name("kidney_right.nii.gz") == "kidney_right"
    assert class_for_name("gall_bladder") == "gallbladder"  # AbdomenAtlas spelling
    assert class_for_name("postcava") == "inferior_vena_cava"
    assert class_for_name("vertebrae_L3") == "bone"
    assert class_for_name("rib_left_7") == "bone"
    assert class_for_name("lung_upper_lobe_left") == "lung"  # vocabulary 2
    assert class_for_name("iliopsoas_left") == "muscle" and class_for_name("iliac_vena_right") == "other_vein"
    assert class_for_name("adrenal_gland_left") is None
    vocab = names_from_ids({1: "Liver", 2: "liver tumor", 3: "hepatic vessel"})
    assert vocab.map == {1: "liver", 2: "tumour", 3: "background"}
    assert vocab.annotated == {"liver", "tumour"}


def test_combine_structures_tumour_wins():
    liver = np.zeros((4, 4, 4), bool)
    liver[1:3, 1:3, 1:3] = True
    tumour = np.zeros_like(liver)
    tumour[1, 1, 1] = True
    out, annotated = combine_structure_masks({"liver_tumor": tumour, "liver": liver, "trachea": ~liver}, np.eye(4))
    assert out[1, 1, 1] == ID["tumour"] and out[2, 2, 2] == ID["liver"] and out[0, 0, 0] == 0
    assert annotated == {"liver", "tumour"}
