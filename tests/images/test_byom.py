"""Bring your own mask (issue 28): every slice, the input's array order, unknown voxels, the body outline.

The `ClassOracle` draws each class at a fixed HU, so the CT shows which label the network was shown
where; the maps are phantoms built in world coordinates, so the same anatomy can be stored in any
orientation and spacing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidegen.errors import InputError
from guidegen.images.any_grid import generate_ct
from guidegen.images.levels import MUSCLE_HU
from guidegen.io.volume import Volume, canonical
from guidegen.labels.vocabulary import ID, NAMES, UNKNOWN
from tests.images.conftest import ORACLE_HU

#: Axis directions of the orientations tested (no axis swaps: "oblique-free").
SIGNS = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1), "LAI": (-1, 1, -1)}


def phantom(orientation: str = "RAS", spacing=(8.0, 8.0, 10.0), shape=(44, 36, 14), body: bool = True) -> Volume:
    """An abdomen of ellipses and boxes centred on the world origin: body, liver on the right, a spine."""
    signs = np.array(SIGNS[orientation], dtype=float)
    affine = np.diag([*(signs * np.asarray(spacing)), 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    ijk = np.indices(shape).reshape(3, -1).T
    x, y, z = (ijk @ affine[:3, :3].T + affine[:3, 3]).T
    labels = np.zeros(len(x), np.uint8)
    if body:
        labels[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = ID["body"]
    labels[(x > 25) & (x < 115) & (y > -35) & (y < 65) & (z > -15)] = ID["liver"]  # the patient's right (RAS+ x)
    labels[(x / 25) ** 2 + ((y + 70) / 25) ** 2 <= 1] = ID["bone"]
    return Volume(labels.reshape(shape), affine, "labels", {"source": f"phantom-{orientation}"})


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def drawn_as_labelled(ct: np.ndarray, labels: np.ndarray, classes: list[int] | None = None) -> float:
    """Share of the voxels two voxels or more inside their structure that the oracle drew at that
    structure's HU (edges are blurred by resampling from and to the 12 mm model grid)."""
    from scipy import ndimage

    hits, total = 0, 0
    for cls in np.unique(labels) if classes is None else classes:
        interior = ndimage.binary_erosion(labels == cls, iterations=2)
        hu = ORACLE_HU.get(NAMES[cls], 40.0) if cls != UNKNOWN else -1024.0
        hits += np.count_nonzero(np.abs(ct[interior] - hu) <= 3)
        total += np.count_nonzero(interior)
    return hits / total


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LAI"])
def test_ct_lines_up_with_the_input_voxel_for_voxel(oracle_model, orientation):
    labels = phantom(orientation)
    ct = generate_ct(oracle_model, labels, seed=0, texture=False, levels=False)
    assert ct.shape == labels.shape and np.array_equal(ct.affine, labels.affine)
    assert drawn_as_labelled(ct.array, labels.array) == 1.0
    assert dice(ct.array > -500, labels.array != 0) > 0.95
    # Reversed along x or z (the liver sits on the patient's right, below z = −15 mm there is none).
    assert drawn_as_labelled(ct.array, labels.array, [ID["liver"]]) == 1.0
    for axis in (0, 2):
        assert drawn_as_labelled(ct.array, np.flip(labels.array, axis), [ID["liver"]]) < 0.5
    # The same anatomy in another order gives the same CT once both are in RAS order.
    reference = canonical(generate_ct(oracle_model, phantom("RAS"), seed=0, texture=False, levels=False))
    assert np.abs(canonical(ct).array.astype(float) - reference.array).mean() < 1.0


@pytest.mark.parametrize("spacing, shape", [((8.0, 8.0, 10.0), (44, 36, 14)), ((8.0, 8.0, 4.0), (44, 36, 3))])
def test_every_input_slice_is_generated(oracle_model, spacing, shape):
    # 14 slices of 10 mm hold 11 model slices of 12 mm, 3 slices of 4 mm one: the input's end slices
    # lie beyond the model grid's outermost slice centres, where resampling used to give air.
    labels = phantom("LPS", spacing, shape)
    ct = generate_ct(oracle_model, labels, seed=0, texture=False, levels=False)
    for k in range(shape[2]):
        inside = labels.array[..., k] != 0
        assert inside.any()
        assert np.mean(ct.array[..., k][inside] > -500) > 0.95, f"slice {k} of {shape[2]} came back as air"


def test_unknown_voxels_inside_the_body_are_drawn_as_body(oracle_model):
    labels = phantom()
    array = labels.array.copy()
    block = (slice(8, 16), slice(14, 22), slice(2, 12))  # inside the body, beside the liver ("lung bases")
    assert np.all(array[block] == ID["body"])
    array[block] = UNKNOWN
    array[:2] = UNKNOWN  # reaching the edge of the slices: outside the scan
    ct = generate_ct(oracle_model, labels.with_array(array), seed=0, texture=False, levels=False)
    core = (slice(10, 14), slice(16, 20), slice(4, 10))
    assert np.all(np.abs(ct.array[core] - ORACLE_HU["body"]) <= 2)  # as unannotated body tissue, not air
    assert np.all(ct.array[:1] == -1024)


def test_a_map_without_a_body_gets_one_and_says_so(oracle_model):
    labels = phantom(body=False)
    ct = generate_ct(oracle_model, labels, seed=0, texture=False, levels=False)
    assert ct.meta["body"] == "derived"
    x = canonical(labels)
    from scipy import ndimage

    distance = np.stack(
        [ndimage.distance_transform_edt(x.array[..., k] == 0, sampling=x.spacing[:2]) for k in range(x.shape[2])],
        axis=-1,
    )
    hu = canonical(ct).array
    near = (distance > 12) & (distance < 20)  # beside the structures: the derived subcutaneous margin
    world_x = x.world_coordinates(np.indices(x.shape).reshape(3, -1).T)[:, 0].reshape(x.shape)
    far = world_x < -70  # the structures reach x = −25 mm (the spine), the derived body 30 mm further
    assert np.mean(np.abs(hu[near] - ORACLE_HU["body"]) <= 30) > 0.9
    assert np.all(hu[far] == -1024)
    # Without completion the organs float in air (what issue 28 saw).
    bare = canonical(generate_ct(oracle_model, labels, seed=0, add_body=False, texture=False, levels=False)).array
    assert np.mean(bare[near] < -900) > 0.9


def test_annotated_classes_reach_the_network(oracle_model):
    generate_ct(oracle_model, phantom(body=False), seed=0, annotated=["liver", "bone"])
    flags = oracle_model.seen_annotated[-1][0]
    on = {NAMES[i] for i in torch.nonzero(flags).flatten().tolist()}
    assert on == {"background", "liver", "bone", "body"}  # body: its outline was derived
    oracle_model.seen_annotated.clear()
    generate_ct(oracle_model, phantom(), seed=0, texture=False, levels=False)
    assert torch.all(oracle_model.seen_annotated[-1] == 1)  # default: every class


def test_a_ct_that_is_nearly_all_air_is_refused(oracle_model):
    with torch.no_grad():
        oracle_model.levels.fill_(float(oracle_model.unknown_level))  # a broken model: air everywhere
    with pytest.raises(InputError, match=r"phantom-RAS: the generated CT is air .* in 100% of the labelled voxels"):
        generate_ct(oracle_model, phantom(), seed=0, texture=False, levels=False)


def test_newer_classes_reach_an_older_model_as_the_class_it_draws_them_as():
    """Vocabulary 2 (lungs, heart, muscles, other vessels; ids 18–22) was appended: a model trained on
    the first 18 classes is shown each such structure as the class it knows that looks alike
    (`DRAWN_AS`: lungs as air, the heart and other arteries as the aorta, other veins as the IVC),
    muscle as the tissue it was in its training maps (body); the CT's record says so."""
    from tests.images.conftest import ClassOracle, tiny_config

    old = ClassOracle(tiny_config(num_classes=18)).eval()
    labels = phantom()
    array = labels.array.copy()
    blocks = {
        "lung": (slice(8, 16), slice(14, 22), slice(2, 12)),
        "heart": (slice(28, 36), slice(14, 22), slice(2, 12)),
        "muscle": (slice(18, 26), slice(24, 30), slice(2, 12)),
    }
    for name, block in blocks.items():
        array[block] = ID[name]
    ct = generate_ct(
        old, labels.with_array(array), seed=0, annotated=["body", "lung", "heart", "liver", "bone"], texture=False
    )
    assert ct.meta["drawn_as"] == {"lung": "background", "heart": "aorta", "muscle": "body"}

    def core(name):
        block = blocks[name]
        return tuple(slice(b.start + 2, b.stop - 2) for b in block)

    assert np.all(np.abs(ct.array[core("lung")] - ORACLE_HU["background"]) <= 2)
    assert np.all(np.abs(ct.array[core("heart")] - ORACLE_HU["aorta"]) <= 2)
    # Muscle, drawn as body, then takes the level of real TotalSegmentator muscle (levels on).
    assert np.all(np.abs(ct.array[core("muscle")] - MUSCLE_HU) <= 2)
    assert ct.meta["native"]["levels"]["muscle"]["before_hu"] < -50
    flags = old.seen_annotated[-1][0]
    assert flags.shape == (18,)
    assert {NAMES[i] for i in torch.nonzero(flags).flatten().tolist()} == {
        "background",
        "body",
        "aorta",
        "liver",
        "bone",
    }
    # The current vocabulary's model is shown the lungs as lungs, and its muscle is left as drawn.
    new = ClassOracle(tiny_config()).eval()
    ct = generate_ct(new, labels.with_array(array), seed=0, texture=False)
    assert ct.meta["drawn_as"] == {} and ct.meta["native"]["levels"]["muscle"] is None
    assert np.all(np.abs(ct.array[core("lung")] - ORACLE_HU["lung"]) <= 2)


def test_an_older_model_gets_a_derived_body_when_the_map_has_muscles_but_no_body():
    """A TotalSegmentator map labels muscles (vocabulary 2) and no body. An 18-class model reads the
    muscles as "body"; the outline must be derived before that folding, else the folded muscles
    count as an outline, none is derived, and the fat between the organs is drawn as air."""
    from scipy import ndimage

    from tests.images.conftest import ClassOracle, tiny_config

    old = ClassOracle(tiny_config(num_classes=18)).eval()
    labels = phantom(body=False)
    array = labels.array.copy()
    array[20:24, 6:9, 2:12] = ID["muscle"]  # a back muscle beside the spine
    labels = labels.with_array(array)
    ct = generate_ct(old, labels, seed=0, texture=False, levels=False)
    assert ct.meta["body"] == "derived"
    # Background between the structures, away from their edges (resampling blurs those).
    between = (array == ID["background"]) & ~ndimage.binary_dilation(array != ID["background"], iterations=2)
    hull = np.zeros_like(between)
    for k in range(array.shape[2]):
        hull[..., k] = ndimage.binary_fill_holes(ndimage.binary_closing(array[..., k] != 0, iterations=6))
    inside = between & hull
    assert inside.sum() > 20
    assert np.mean(np.abs(ct.array[inside] - ORACLE_HU["body"]) <= 30) > 0.9
