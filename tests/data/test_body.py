"""The body outline a label map needs before a CT is generated from it (`guidegen.data.body`, issue 28)."""

from __future__ import annotations

import numpy as np

from guidegen.data.body import DERIVED_BODY_MARGIN_MM, complete_body, derive_body, unknown_as_body
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume, canonical
from guidegen.labels.remap import remap_labels
from guidegen.labels.vocabulary import ID, UNKNOWN


def test_a_real_map_without_a_body_gets_one_around_its_organs(real):
    raw = read_nifti(real / "masks-only" / "amos_0013_labels.nii.gz", kind="labels")
    array, annotated = remap_labels(raw.array, "amos", affine=raw.affine)
    labels = raw.with_array(array)
    done = complete_body(labels, annotated)
    assert done.derived and done.annotated == annotated | {"body"} and done.body_voxels > 0
    body = done.labels.array == ID["body"]
    organs = (array != 0) & (array != UNKNOWN)
    assert np.array_equal(done.labels.array[organs], array[organs])  # the organs are untouched
    # Every slice with organs has a body around them, as wide as an abdomen (AMOS case 13: ~300 mm).
    sx = labels.spacing[0]
    widths = [
        np.ptp(np.nonzero((body | organs)[:, :, k].any(axis=1))[0]) * sx
        for k in range(labels.shape[2])
        if organs[:, :, k].any()
    ]
    assert min(widths) > 100 and 250 < float(np.median(widths)) < 420
    # Nothing further than the margin from the structures' hull: the corners of the slices stay air.
    assert not body[:20, :20].any() and not body[-20:, -20:].any()


def test_derived_body_is_the_same_in_any_array_order():
    array = np.zeros((40, 30, 6), np.uint8)
    array[10:20, 8:14, 1:5] = ID["liver"]
    array[26:30, 18:22, 0:6] = ID["bone"]
    ras = Volume(array, np.diag([6.0, 6.0, 8.0, 1.0]), "labels")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [39, 29]
    lps = Volume(np.ascontiguousarray(array[::-1, ::-1]), ras.affine @ flip, "labels")
    assert lps.orientation == "LPS"
    a, b = complete_body(ras).labels, complete_body(lps).labels
    assert np.array_equal(b.affine, lps.affine) and np.array_equal(canonical(b).array, a.array)
    # The margin is measured in mm, in-plane: 30 mm is 5 voxels of 6 mm beside the hull.
    grown = derive_body(array, ras.spacing)
    assert grown[5:20, 8:14, 2].all() and not grown[4, 11, 2]  # 6 voxels × 6 mm = 36 mm from the liver: outside
    assert DERIVED_BODY_MARGIN_MM == 30.0


def test_background_and_unknown_inside_a_given_body():
    array = np.zeros((20, 20, 3), np.uint8)
    array[2:18, 2:18] = ID["body"]
    array[6:10, 6:10] = 0  # a structure the source mapped to background (a lung)
    array[11:14, 11:14] = UNKNOWN  # a structure the annotator left out
    array[:, 0] = UNKNOWN  # reaching the slice's edge: outside the scan
    labels = Volume(array, np.eye(4), "labels")
    done = complete_body(labels, {"body"})
    assert not done.derived and done.annotated == {"body"}
    assert np.all(done.labels.array[6:10, 6:10] == ID["body"]) and done.body_voxels == 16 * 3
    assert np.all(done.labels.array[11:14, 11:14] == UNKNOWN)  # complete_body leaves unknown alone
    shown = unknown_as_body(done.labels).array
    assert np.all(shown[11:14, 11:14] == ID["body"]) and np.all(shown[:, 0] == UNKNOWN)
