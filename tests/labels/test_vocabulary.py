from __future__ import annotations

import numpy as np

from guidegen.labels.vocabulary import (
    CLASSES,
    FALLBACK,
    ID,
    NUM_CLASSES,
    UNKNOWN,
    drawn_as,
    fold_for_drawing,
    fold_for_model,
    fold_names,
    preview_colour,
)


def test_ids_are_positions_and_names_unique():
    assert [c.id for c in CLASSES] == list(range(NUM_CLASSES))
    assert len({c.name for c in CLASSES}) == NUM_CLASSES
    assert len({preview_colour(c.id) for c in CLASSES}) == NUM_CLASSES  # a legend tells every class apart


def test_every_newer_class_folds_to_an_older_one():
    assert ID["portal_vein"] == 17 and ID["lung"] == 18  # ids are only ever appended
    for name, older in FALLBACK.items():
        assert ID[older] < ID[name]


def test_fold_for_model():
    labels = np.array([0, ID["liver"], ID["lung"], ID["heart"], ID["other_vein"], UNKNOWN], np.uint8)
    folded = fold_for_model(labels, 18)
    assert folded.dtype == np.uint8
    assert folded.tolist() == [0, ID["liver"], ID["body"], ID["body"], ID["body"], UNKNOWN]
    assert fold_for_model(labels, NUM_CLASSES) is labels  # nothing to do for a current model
    assert fold_names(["liver", "lung", "body", "heart"], 18) == ["liver", "body"]
    assert fold_names(["liver", "lung"], NUM_CLASSES) == ["liver", "lung"]


def test_fold_for_drawing_draws_a_newer_class_as_the_known_class_it_looks_like():
    labels = np.array(
        [0, ID["liver"], ID["lung"], ID["heart"], ID["muscle"], ID["other_artery"], ID["other_vein"], UNKNOWN],
        np.uint8,
    )
    drawn = fold_for_drawing(labels, 18)
    assert drawn.dtype == np.uint8
    names = ["background", "liver", "background", "aorta", "body", "aorta", "inferior_vena_cava"]
    assert drawn.tolist() == [ID[n] for n in names] + [UNKNOWN]
    assert fold_for_model(labels, 18)[2] == ID["body"]  # training keeps what lungs were labelled as
    assert fold_for_drawing(labels, NUM_CLASSES) is labels
    assert drawn_as(labels, 18) == {
        "lung": "background",
        "heart": "aorta",
        "muscle": "body",
        "other_artery": "aorta",
        "other_vein": "inferior_vena_cava",
    }
    assert drawn_as(labels[:2], 18) == {} and drawn_as(labels, NUM_CLASSES) == {}
    assert fold_names(["liver", "lung", "heart"], 18, drawing=True) == ["liver", "background", "aorta"]
