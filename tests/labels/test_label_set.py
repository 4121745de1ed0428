"""A user's own label set (issue 28): id → GuideGen class JSON, as a file or as a sidecar; id 255."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guidegen.errors import InputError
from guidegen.io.layouts import SIDECAR, discover_cases
from guidegen.labels.label_set import ACCEPTED_NAMES, label_set, read_label_set, vocabulary_for
from guidegen.labels.remap import load_vocabulary, remap_labels
from guidegen.labels.vocabulary import ID, NAMES, UNKNOWN

#: An expert map from outside the project (the ids of issue 28's example, in no shipped vocabulary).
TABLE = {
    "1": "liver",
    "2": "spleen",
    "3": "kidney_right",
    "4": "kidney_left",
    "5": "tumour",
    "6": "bone",
    "7": "aorta",
    "8": "unknown",
    "9": "body",
}


def test_a_label_set_maps_ids_and_annotates_exactly_the_classes_named():
    vocab = label_set(TABLE, "atlas.json")
    array = np.array([[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255]]], dtype=np.uint8)
    out, annotated = remap_labels(array, vocab, path="map.nii.gz")
    assert out.ravel().tolist() == [
        0,
        ID["liver"],
        ID["spleen"],
        ID["kidney_right"],
        ID["kidney_left"],
        ID["tumour"],
        ID["bone"],
        ID["aorta"],
        UNKNOWN,
        ID["body"],
        UNKNOWN,
    ]
    assert annotated == {"liver", "spleen", "kidney_right", "kidney_left", "tumour", "bone", "aorta", "body"}
    assert "stomach" not in annotated  # never labelled: unknown, not absent
    with pytest.raises(InputError, match="map.nii.gz: has label ids 12 that the label set atlas.json vocabulary"):
        remap_labels(np.array([[[1, 12]]], np.uint8), vocab, path="map.nii.gz")


def test_every_name_it_does_not_know_is_listed_in_one_line_naming_the_file():
    with pytest.raises(InputError) as info:
        label_set({"1": "liver", "2": "lungs", "3": "Spleen", "4": 7}, "my_atlas.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("my_atlas.json: ")
    assert "2: 'lungs'" in message and "3: 'Spleen'" in message and "4: 7" in message and "1: " not in message
    assert "list-classes" in message
    with pytest.raises(InputError, match="whole numbers 0–255; got 'liver', '300'"):
        label_set({"liver": 1, "300": "spleen"}, "x.json")  # nnU-Net's name → id order is not a label set
    with pytest.raises(InputError, match="only background / unknown"):
        label_set({"1": "unknown", "0": "background"}, "x.json")
    assert set(ACCEPTED_NAMES) == {*NAMES, "unknown"}


def test_a_label_set_file_or_sidecar_with_the_table(tmp_path):
    plain = tmp_path / "set.json"
    plain.write_text(json.dumps(TABLE))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"vocabulary": TABLE, "notes": "in-house atlas"}))
    assert read_label_set(plain).map == read_label_set(wrapped).map == label_set(TABLE).map
    with pytest.raises(InputError, match="no such file"):
        read_label_set(tmp_path / "missing.json")
    assert vocabulary_for("amos").name == "amos" and vocabulary_for(TABLE).map[8] == "unknown"
    # As a case folder's sidecar, for `prepare`: the whole file, or its "vocabulary" value.
    for name, content in (("a", TABLE), ("b", {"vocabulary": TABLE})):
        case = tmp_path / name
        case.mkdir()
        (case / "labels.nii.gz").write_bytes(b"")
        (case / SIDECAR).write_text(json.dumps(content))
        assert discover_cases(case)[0].vocabulary == TABLE
    (tmp_path / "b" / SIDECAR).write_text(json.dumps({"vocabulary": 7}))
    with pytest.raises(InputError, match="'vocabulary' must be a vocabulary name .* or a label set"):
        discover_cases(tmp_path / "b")


def test_id_255_is_unknown_in_every_vocabulary():
    array = np.array([[[0, 4, 255]]], np.uint8)
    for name in ("guidegen", "amos", "totalsegmentator"):
        out, _ = remap_labels(array, load_vocabulary(name))
        assert out[0, 0, 2] == UNKNOWN and out[0, 0, 0] == 0
