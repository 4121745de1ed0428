from __future__ import annotations

import numpy as np

from guidegen.labels.vocabulary import (
    CLASSES,
    FALLBACK,
    ID,
    NUM_CLASSES,
    UNKNOWN,
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
