"""Stated tumours placed into sampled anatomy (`guidegen.masks.placement`), on a real label map."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from guidegen.data.ops import SOFT_CLASSES, OrganScaling, ScalingParams
from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID
from guidegen.masks.placement import (
    AORTA_BELOW_KIDNEYS_MM,
    AORTA_DIAMETER_MM,
    HOST_TUMOUR_RATIO,
    _wrap_in_host,
    apply_stated_organs,
    draw_aorta_tube,
    place_stated_tumours,
    remove_tumours,
    stated_volume_band,
)
from guidegen.text.agreement import organ_agreement
from guidegen.text.measure import REFERENCE_RANGES, grade_volume, measure_labels
from guidegen.text.parse import parse_prompt

TUMOUR = ID["tumour"]
SOFT = {ID[n] for n in SOFT_CLASSES}


@pytest.fixture(scope="module")
def anatomy(tmp_path_factory, real) -> Volume:
    """The complete TotalSegmentator map on the demo sampler's 8 mm grid, as a sampled map looks."""
    out = tmp_path_factory.mktemp("prepared8")
    result = prepare(
        [real / "totalseg-example-a"], out, PrepareConfig(spacing=(8.0, 8.0, 8.0), size_xy=(48, 48)), progress=False
    )
    assert result.failed == []
    labels = read_nifti(load_prepared(out)[0]["labels_path"], kind="labels")
    assert not np.any(labels.array == TUMOUR)
    # The scan is cut at the liver dome; the sampler's maps keep room above the liver (its training
    # maps are aligned so), and only a whole liver has lobes: add that room, as background.
    array = np.pad(labels.array, ((0, 0), (0, 0), (0, 5)))
    return Volume(array, labels.affine, "labels", {})


def place(labels: Volume, prompt: str, seed: int = 0):
    return place_stated_tumours(labels, parse_prompt(prompt).tumours, np.random.default_rng(seed))


@pytest.mark.parametrize(
    "prompt, host, segment",
    [
        ("4 cm liver tumour", "liver", None),
        ("5 cm sigmoid colon cancer", "colon", "sigmoid"),
        ("ascending colon carcinoma 45 mm", "colon", "ascending"),
        ("3 cm tumour in the right kidney", "kidney_right", None),
        ("solitary 25 mm lesion in the left lobe of the liver", "liver", "left lobe"),
    ],
)
def test_stated_tumour_is_measured_as_stated(anatomy, prompt, host, segment):
    out, record = place(anatomy, prompt)
    assert all(record["agreement"].values()), record
    measured = measure_labels(out).attributes.tumours
    assert len(measured) == 1 and measured[0].organ == host and measured[0].count == 1
    assert segment is None or measured[0].segment == segment
    stated = parse_prompt(prompt).tumours[0].diameter_mm
    assert abs(measured[0].diameter_mm - stated) <= 0.3 * stated
    # Only the host and soft tissue gave way (to the tumour, or to a rim of host around it): every
    # other organ is untouched.
    changed = out.array != anatomy.array
    assert set(np.unique(out.array[changed])) <= {TUMOUR, ID[host]}
    assert set(np.unique(anatomy.array[changed])) <= {ID[host], *SOFT}
    assert "augmentations" not in out.meta


def test_counts_and_multiple_groups(anatomy):
    out, record = place(anatomy, "rectal cancer 5 cm with two liver metastases up to 2 cm", seed=1)
    assert all(record["agreement"].values()), record
    groups = {(t.organ, t.segment): t for t in measure_labels(out).attributes.tumours}
    assert groups[("colon", "rectum")].count == 1
    assert sum(t.count for (organ, _), t in groups.items() if organ == "liver") == 2
    out, record = place(anatomy, "multiple liver metastases, the largest 4 cm", seed=2)
    assert record["agreement"]["tumour1.count"] and len(record["groups"][0]["diameters_mm"]) >= 2
    assert max(record["groups"][0]["diameters_mm"]) == 40.0


def test_seeded_and_varied(anatomy):
    a, _ = place(anatomy, "4 cm liver tumour", seed=5)
    b, _ = place(anatomy, "4 cm liver tumour", seed=5)
    c, _ = place(anatomy, "4 cm liver tumour", seed=6)
    assert np.array_equal(a.array, b.array)
    assert not np.array_equal(a.array, c.array)


def test_silent_prompt_keeps_the_networks_tumours_and_no_tumour_removes_them(anatomy):
    drawn = anatomy.array.copy()
    # The liver voxel deepest inside it: a tumour there touches nothing but liver.
    depth = ndimage.distance_transform_edt(drawn == ID["liver"])
    centre = np.unravel_index(int(np.argmax(depth)), drawn.shape)
    ball = np.zeros(drawn.shape, bool)
    ball[tuple(centre)] = True
    ball = ndimage.binary_dilation(ball, iterations=1) & (drawn == ID["liver"])
    drawn[ball] = TUMOUR
    network = anatomy.with_array(drawn)
    same, record = place(network, "abdominal CT of a 60-year-old man")
    assert same is network and record == {"mode": "insert", "stated": False}
    clean, record = place(network, "healthy abdomen, no tumour")
    assert record["agreement"] == {"tumours": True}
    assert not np.any(clean.array == TUMOUR)
    assert np.all(clean.array[ball] == ID["liver"])  # given back to the organ it sat in
    np.testing.assert_array_equal(remove_tumours(anatomy).array, anatomy.array)


def test_missing_host_is_reported_not_hidden(anatomy):
    no_kidney = anatomy.array.copy()
    no_kidney[no_kidney == ID["kidney_right"]] = ID["body"] if "body" in ID else 0
    out, record = place(anatomy.with_array(no_kidney), "3 cm tumour in the right kidney")
    assert record["agreement"]["tumours"] is False and record["agreement"]["tumour1.organ"] is False
    assert "no kidney_right" in record["groups"][0]["error"]
    assert record["attempts"] == 6
    assert not np.any(out.array == TUMOUR)


def test_placement_stream_takes_any_seed_torch_takes():
    from guidegen.masks.sampler import placement_rng

    assert placement_rng(-5).integers(1 << 30) == placement_rng(-5).integers(1 << 30)
    assert placement_rng(-5).integers(1 << 30) != placement_rng(5).integers(1 << 30)
    assert placement_rng(3, 0).integers(1 << 30) != placement_rng(3, 1).integers(1 << 30)


def test_hosts_without_tumour_model_are_reported(anatomy):
    out, record = place(anatomy, "3 cm gallbladder mass")
    assert "not placed" in record["groups"][0]["error"] and record["agreement"]["tumour1.organ"] is False
    assert not np.any(out.array == TUMOUR)
    out, record = place(anatomy, "tumour 3 cm")  # no host stated: any host present will do
    assert all(record["agreement"].values()), record


def shrunk(anatomy: Volume, organ: str, factor: float) -> Volume:
    out, _ = OrganScaling().apply(anatomy, ScalingParams(organ=organ, volume_factor=factor))
    return out.with_array(out.array, meta={})


def volume_ml(labels: Volume, organ: str) -> float:
    return float(np.count_nonzero(labels.array == ID[organ])) * labels.voxel_volume_ml


@pytest.mark.parametrize("prompt, host", [("pancreatic cancer 4 cm", "pancreas"), ("gastric cancer 5 cm", "stomach")])
def test_host_drawn_too_small_is_grown_to_hold_the_tumour(anatomy, prompt, host):
    # As the demo network draws them: a pancreas / stomach of a few mL, smaller than the stated tumour.
    small = shrunk(anatomy, host, 0.15)
    before = volume_ml(small, host)
    diameter = parse_prompt(prompt).tumours[0].diameter_mm
    needed = HOST_TUMOUR_RATIO * np.pi / 6 * diameter**3 / 1000
    assert before < needed / 3
    out, record = place(small, prompt)
    assert all(record["agreement"].values()), record
    grown = record["groups"][0]["host_grown_ml"]
    assert grown[0] == pytest.approx(before, abs=0.1) and grown[1] >= 0.8 * needed
    # Host and tumour together now hold at least the needed volume; growth took fat and bowel only.
    assert volume_ml(out, host) + volume_ml(out, "tumour") >= 0.8 * needed
    changed = out.array != small.array
    assert set(np.unique(small.array[changed])) <= {ID[host], *SOFT}
    # Grown in one piece (the tumour may cut through it, as the component check allows).
    pieces, n = ndimage.label(np.isin(out.array, [ID[host], TUMOUR]), structure=np.ones((3, 3, 3), bool))
    host_voxels = out.array == ID[host]
    assert np.bincount(pieces[host_voxels]).max() == host_voxels.sum()
    # An organ whose size the prompt states keeps it.
    _, record = place_stated_tumours(small, parse_prompt(prompt).tumours, np.random.default_rng(0), keep_size=[host])
    assert "host_grown_ml" not in record["groups"][0]


def test_lesion_touching_fat_gets_a_rim_of_its_host():
    # A 3-voxel tumour whose host (pancreas) touches one face and the stomach another: fat around it
    # becomes pancreas, the stomach stays, and the report then names the pancreas as the host.
    array = np.full((12, 12, 12), ID["body"], np.uint8)
    array[4:7, 4:7, 4:7] = TUMOUR
    array[4:7, 4:7, 7] = ID["pancreas"]
    array[4:7, 3, 4:7] = ID["stomach"]
    array[3, 3:8, 3:8] = ID["stomach"]
    labels = Volume(array, np.diag([8.0, 8.0, 8.0, 1.0]), "labels", {})
    assert measure_labels(labels).lesions[0].host == "stomach"
    lesion = array == TUMOUR
    out = _wrap_in_host(labels, lesion, "pancreas")
    assert measure_labels(out).lesions[0].host == "pancreas"
    changed = out.array != array
    assert set(np.unique(array[changed])) == {ID["body"]} and set(np.unique(out.array[changed])) == {ID["pancreas"]}
    assert np.all(out.array[array == ID["stomach"]] == ID["stomach"])
    # A lesion its host already surrounds is left alone.
    inside = np.full((12, 12, 12), ID["liver"], np.uint8)
    inside[5:7, 5:7, 5:7] = TUMOUR
    liver = Volume(inside, labels.affine, "labels", {})
    assert _wrap_in_host(liver, inside == TUMOUR, "liver") is liver


@pytest.mark.parametrize(
    "prompt, organ",
    [
        ("enlarged spleen", "spleen"),
        ("moderate splenomegaly", "spleen"),
        ("moderate hepatomegaly", "liver"),
        ("small atrophic left kidney", "kidney_left"),
        ("mild splenomegaly", "spleen"),
    ],
)
def test_stated_organ_size_is_given(anatomy, prompt, organ):
    stated = parse_prompt(prompt).organs
    assert not all(organ_agreement(organ, stated[organ], measure_labels(anatomy).attributes.organs[organ]).values())
    out, record = apply_stated_organs(anatomy, stated, np.random.default_rng(0))
    finding = measure_labels(out).attributes.organs[organ]
    assert record[organ]["changed"] and record[organ]["holds"]
    assert all(organ_agreement(organ, stated[organ], finding).values())
    low, high = stated_volume_band(organ, stated[organ])
    assert low <= finding.volume_ml <= high
    if stated[organ].severity is not None:
        assert grade_volume(organ, finding.volume_ml, finding.partial)[1] == stated[organ].severity
    changed = out.array != anatomy.array
    assert set(np.unique(anatomy.array[changed])) <= {ID[organ], *SOFT}
    assert set(np.unique(out.array[changed])) <= {ID[organ], *SOFT}


def test_normal_and_absent_organs(anatomy):
    big = shrunk(anatomy, "kidney_right", 2.2)
    assert volume_ml(big, "kidney_right") > REFERENCE_RANGES["kidney_right"].high_ml
    out, record = apply_stated_organs(big, parse_prompt("normal sized kidneys").organs, np.random.default_rng(1))
    assert record["kidney_right"]["changed"] and record["kidney_right"]["holds"]
    assert not record["kidney_left"]["changed"]  # already normal: left as drawn
    assert (
        REFERENCE_RANGES["kidney_right"].low_ml
        <= volume_ml(out, "kidney_right")
        <= REFERENCE_RANGES["kidney_right"].high_ml
    )
    out, record = apply_stated_organs(anatomy, parse_prompt("status post splenectomy").organs, np.random.default_rng(1))
    spleen = anatomy.array == ID["spleen"]
    assert record["spleen"]["holds"] and not np.any(out.array == ID["spleen"])
    assert set(np.unique(out.array[spleen])) <= SOFT  # its bed is fat and bowel, not another organ
    np.testing.assert_array_equal(out.array[~spleen], anatomy.array[~spleen])
    same, record = apply_stated_organs(anatomy, parse_prompt("4 cm liver tumour").organs, np.random.default_rng(1))
    assert same is anatomy and record == {}


def test_organ_missing_from_the_map_is_reported(anatomy):
    no_spleen = anatomy.array.copy()
    no_spleen[no_spleen == ID["spleen"]] = ID["body"]
    out, record = apply_stated_organs(
        anatomy.with_array(no_spleen), parse_prompt("enlarged spleen").organs, np.random.default_rng(0)
    )
    assert "no spleen" in record["spleen"]["error"] and record["spleen"]["holds"] is False
    np.testing.assert_array_equal(out.array, no_spleen)


def _scattered_aorta_map(seed: int = 0) -> tuple[Volume, tuple[int, int]]:
    """An 8 mm map: body, a spine, a kidney, and an aorta drawn as a sampled one looks (specks).

    On slices 3-16 the aorta is one voxel at (15, 13) (the course), on a third of them moved up to
    8 voxels sideways, plus two far strays; returns the map and the course.
    """
    rng = np.random.default_rng(seed)
    array = np.full((30, 30, 20), ID["body"], np.uint8)
    array[12:18, 5:11, :] = ID["bone"]  # vertebral bodies, behind the course
    array[17:22, 14:20, 4:12] = ID["kidney_left"]  # an organ right next to it
    for z in range(3, 17):
        dx = int(rng.integers(-8, 9)) if z % 3 == 0 else 0
        array[15 + dx, 13, z] = ID["aorta"]
    array[3, 25, 9] = ID["aorta"]
    array[27, 3, 12] = ID["aorta"]
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    return Volume(array, affine, "labels", {}), (15, 13)


def test_aorta_specks_become_one_straight_tube_of_normal_calibre():
    labels, course = _scattered_aorta_map()
    out, record = draw_aorta_tube(labels, np.random.default_rng(1))
    aorta = out.array == ID["aorta"]
    # One piece, along the course, over the drawn extent.
    assert ndimage.label(aorta, structure=np.ones((3, 3, 3)))[1] == 1
    zs = np.nonzero(aorta.any(axis=(0, 1)))[0]
    # Every slice of the drawn extent (its 5th-95th percentile: within a slice of 3-16).
    assert 3 <= zs.min() <= 4 and 15 <= zs.max() <= 16 and record["slices"] == len(zs) == zs.max() - zs.min() + 1
    lo, hi = AORTA_DIAMETER_MM
    assert lo <= record["diameter_mm"] <= hi
    target = round(np.pi * record["diameter_mm"] ** 2 / 4 / 64.0)
    for z in zs:
        assert np.linalg.norm(np.array(ndimage.center_of_mass(aorta[..., z])) - course) <= 1.5, z
        if z >= 12:  # away from the kidney: the full disc
            assert aorta[..., z].sum() == target, z
    assert record["tube_mm2"] == pytest.approx(target * 64.0)
    # Strays are gone (fat again); organs and bone are never taken.
    assert out.array[3, 25, 9] == ID["body"] and out.array[27, 3, 12] == ID["body"]
    for cls in ("bone", "kidney_left"):
        assert np.array_equal(out.array == ID[cls], labels.array == ID[cls]), cls
    assert set(np.unique(labels.array[aorta])) <= {ID["body"], ID["aorta"]}


def test_aorta_tube_hemmed_in_stays_narrower_and_takes_no_organ():
    labels, _ = _scattered_aorta_map()
    array = labels.array.copy()
    array[13:18, 11:17, 6] = ID["liver"]  # around the course on one slice, one body voxel left
    array[15, 13, 6] = ID["body"]
    out, _ = draw_aorta_tube(labels.with_array(array), np.random.default_rng(1))
    assert (out.array[..., 6] == ID["aorta"]).sum() < (out.array[..., 14] == ID["aorta"]).sum()
    assert np.array_equal(out.array == ID["liver"], array == ID["liver"])


def test_aorta_tube_stays_one_piece_where_obstacles_alternate_sides():
    """Bone bulging onto the course from alternate sides must not cut the tube into pieces."""
    labels, _ = _scattered_aorta_map()
    array = labels.array.copy()
    array[15:17, 10:17, 8] = ID["bone"]  # slice 8: the nearest room is on the low-x side
    array[14:16, 10:17, 9] = ID["bone"]  # slice 9: ... on the high-x side
    out, _ = draw_aorta_tube(labels.with_array(array), np.random.default_rng(1))
    aorta = out.array == ID["aorta"]
    assert ndimage.label(aorta, structure=np.ones((3, 3, 3)))[1] == 1
    assert aorta[..., 8].any() and aorta[..., 9].any()


def test_aorta_tube_ends_a_few_cm_below_the_kidneys():
    """Specks reaching into the pelvis do not draw the aorta there: it divides below the kidneys."""
    labels, _ = _scattered_aorta_map()
    array = labels.array.copy()
    array[15, 13, 0:3] = ID["aorta"]  # the network's specks go down to the first slice
    array[17:22, 14:20, 4:12] = ID["body"]
    array[17:22, 14:20, 10:14] = ID["kidney_left"]  # lowest kidney voxel at slice 10 (80 mm up)
    out, _ = draw_aorta_tube(labels.with_array(array), np.random.default_rng(1))
    zs = np.nonzero((out.array == ID["aorta"]).any(axis=(0, 1)))[0]
    assert zs.min() == 10 - round(AORTA_BELOW_KIDNEYS_MM / 8.0)
    without_kidney = np.where(array == ID["kidney_left"], ID["body"], array).astype(np.uint8)
    out, _ = draw_aorta_tube(labels.with_array(without_kidney), np.random.default_rng(1))
    assert np.nonzero((out.array == ID["aorta"]).any(axis=(0, 1)))[0].min() <= 1  # the specks' extent


def test_aorta_tube_is_seeded_and_leaves_a_map_without_aorta_alone():
    labels, _ = _scattered_aorta_map()
    a, ra = draw_aorta_tube(labels, np.random.default_rng(5))
    b, rb = draw_aorta_tube(labels, np.random.default_rng(5))
    assert np.array_equal(a.array, b.array) and ra == rb
    none = labels.with_array(np.where(labels.array == ID["aorta"], ID["body"], labels.array).astype(np.uint8))
    same, record = draw_aorta_tube(none, np.random.default_rng(5))
    assert same is none and "error" in record


def test_an_aorta_drawn_as_a_vessel_is_kept(anatomy):
    """The training map's aorta is already one tube of normal calibre: it is left as it is."""
    out, record = draw_aorta_tube(anatomy, np.random.default_rng(0))
    assert out is anatomy and record["kept"] is True and record["network_mm2"] >= 227


@pytest.mark.parametrize("prompt, factor", [("enlarged spleen", 4.6), ("small left kidney", 0.3)])
def test_unqualified_size_is_not_a_marked_one(anatomy, prompt, factor):
    # "enlarged spleen" once kept a 1.5 L spleen as drawn: any enlargement agrees with the prompt,
    # but nobody asking for an enlarged spleen without a grade means a marked one.
    stated = parse_prompt(prompt).organs
    organ = next(iter(stated))
    drawn = shrunk(anatomy, organ, factor)
    before = measure_labels(drawn).attributes.organs[organ]
    assert grade_volume(organ, before.volume_ml, before.partial)[1] == "marked"
    assert all(organ_agreement(organ, stated[organ], before).values())  # the agreement alone accepts it
    out, record = apply_stated_organs(drawn, stated, np.random.default_rng(0))
    after = measure_labels(out).attributes.organs[organ]
    assert record[organ]["changed"] and record[organ]["holds"]
    low, high = stated_volume_band(organ, stated[organ])
    assert low <= after.volume_ml <= high
    assert grade_volume(organ, after.volume_ml, after.partial)[1] != "marked"
    # A moderate enlargement stated without a grade is left as drawn.
    moderate = shrunk(anatomy, "spleen", 2.2)
    assert grade_volume("spleen", volume_ml(moderate, "spleen"))[1] == "moderate"
    same, record = apply_stated_organs(moderate, parse_prompt("enlarged spleen").organs, np.random.default_rng(0))
    assert same is moderate and not record["spleen"]["changed"]
