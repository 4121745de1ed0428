from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from guidegen.data import augment as aug
from guidegen.data.augment import (
    AugmentConfig,
    ElasticDeformation,
    ElasticParams,
    JitterParams,
    OrganScaling,
    RigidJitter,
    ScalingParams,
    TumourInsertion,
    augment_case,
    augment_pair,
    load_tumour_shapes,
    params_from_json,
    params_to_json,
    replay,
)
from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, ORGANS, UNKNOWN

SOFT = {ID[n] for n in aug.SOFT_CLASSES}
#: Classes that growth and tumours must leave alone (everything but soft tissue, tumour, unknown).
SOLID = [i for i in range(len(ID)) if i not in SOFT and i != ID["tumour"]]


@pytest.fixture(scope="module")
def cases(tmp_path_factory, real) -> dict[str, dict]:
    """Prepared real label maps on the mask sampler's 6 mm grid.

    masks-only (AMOS 13 + the colon tumour) is left out here: preparing it takes ~9 s and these
    tests need a complete map (TotalSegmentator example) and one with a real unknown region (LiTS).
    """
    out = tmp_path_factory.mktemp("prepared6")
    result = prepare([real / "totalseg-example-a", real / "lits-117-crop"], out,
                     PrepareConfig(spacing=(6.0, 6.0, 6.0), size_xy=(64, 64)), progress=False)
    assert result.failed == []
    return {e["case_id"]: e for e in load_prepared(out)}


@pytest.fixture(scope="module")
def labels(cases) -> Volume:
    return read_nifti(cases["totalseg-example-a"]["labels_path"], kind="labels")


@pytest.fixture(scope="module")
def ct(cases) -> Volume:
    return read_nifti(cases["totalseg-example-a"]["ct_path"])


@pytest.fixture(scope="module")
def bank(real):
    return aug.default_tumour_shapes(real)


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


# ---------------------------------------------------------------------------------------- elastic


def test_elastic_keeps_classes_and_volumes(labels, ct):
    params = ElasticParams(seed=3, amplitude_mm=9.0, smoothness_mm=40.0)
    out, out_ct = ElasticDeformation().apply(labels, params, ct)
    assert out.same_grid(labels) and out.array.dtype == np.uint8
    before, after = counts(labels), counts(out)
    assert set(np.nonzero(before)[0]) == set(np.nonzero(after)[0])
    changed = float((out.array != labels.array).mean())
    assert changed > 0.01  # it really deformed
    for name in ORGANS:
        if before[ID[name]]:
            assert 0.85 <= after[ID[name]] / before[ID[name]] <= 1.15, name
    assert 0.95 <= after[UNKNOWN] / before[UNKNOWN] <= 1.05
    # CT follows the labels: the liver's HU stay liver HU.
    assert out_ct is not None and out_ct.same_grid(ct)
    liver_before = ct.array[labels.array == ID["liver"]].mean()
    liver_after = out_ct.array[out.array == ID["liver"]].mean()
    assert abs(liver_after - liver_before) < 10
    assert out.meta["augmentations"][-1]["transform"] == "ElasticDeformation"
    assert "augmentations" not in labels.meta  # the input's meta is not touched


def test_elastic_deterministic_per_seed(labels):
    transform = ElasticDeformation(amplitude_mm=(8.0, 10.0))
    p1 = transform.make_params(np.random.default_rng(7))
    assert p1 == transform.make_params(np.random.default_rng(7))
    p2 = transform.make_params(np.random.default_rng(8))
    assert p1 != p2
    np.testing.assert_array_equal(transform.displacement(labels, p1), transform.displacement(labels, p1))
    field = transform.displacement(labels, p1)
    assert np.abs(field).max() == pytest.approx(p1.amplitude_mm, rel=1e-4)
    assert not np.allclose(field, transform.displacement(labels, p2))


def test_elastic_same_params_same_output_and_seeds_differ(cases):
    lits = read_nifti(cases["lits-117-crop"]["labels_path"], kind="labels")  # small, few classes: fast
    transform = ElasticDeformation()
    a, _ = transform.apply(lits, ElasticParams(1, 10.0, 35.0))
    b, _ = transform.apply(lits, ElasticParams(1, 10.0, 35.0))
    c, _ = transform.apply(lits, ElasticParams(2, 10.0, 35.0))
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.array_equal(a.array, c.array)


def test_unknown_region_stays_unknown(cases):
    # The LiTS crop's prepared map is mostly unknown (outside the 128-voxel crop): a real unknown region.
    lits = read_nifti(cases["lits-117-crop"]["labels_path"], kind="labels")
    unknown = lits.array == UNKNOWN
    assert unknown.sum() > 1000
    for seed in (0, 1):
        out, _ = ElasticDeformation().apply(lits, ElasticParams(seed, 12.0, 35.0))
        assert (out.array[unknown] == UNKNOWN).mean() >= 0.9
        # and unknown does not spread into known tissue either
        assert (out.array[~unknown] == UNKNOWN).mean() <= 0.1


def test_synthetic_unknown_block_survives_deformation(labels):
    array = labels.array.copy()
    array[20:32, 20:32, 25:35] = UNKNOWN  # inside the body: "not known here"
    block = np.zeros_like(array, dtype=bool)
    block[20:32, 20:32, 25:35] = True
    out, _ = ElasticDeformation().apply(labels.with_array(array), ElasticParams(5, 10.0, 35.0))
    assert (out.array[block] == UNKNOWN).mean() >= 0.9


def test_warp_is_smooth_not_staircase():
    # A ball shifted by half a voxel along a diagonal stays one compact convex-ish blob of the
    # same size (nearest neighbour at exactly half-voxel offsets duplicates or drops whole rows).
    grid = np.indices((24, 24, 24)).astype(float)
    ball = (((grid - 11.5) ** 2).sum(0) <= 6.2**2).astype(np.uint8)
    coords = aug._grid_points(ball.shape) + np.float32(0.5)
    out = aug._warp_labels(ball, (2.0, 2.0, 2.0), coords)
    assert abs(int(out.sum()) - int(ball.sum())) / ball.sum() < 0.05
    filled = ndimage.binary_fill_holes(out)
    assert np.array_equal(filled, out.astype(bool)) and ndimage.label(out)[1] == 1


# ---------------------------------------------------------------------------------------- jitter


def test_jitter_never_mirrors(labels):
    # Only liver, spleen, body, background and unknown (others become body), cropped around liver
    # and spleen: fewer classes and voxels make 20 warps fast. The crop keeps world coordinates.
    keep = np.isin(labels.array, [0, ID["liver"], ID["spleen"], UNKNOWN])
    array = np.where(keep, labels.array, ID["body"]).astype(np.uint8)
    organs = np.argwhere(np.isin(array, [ID["liver"], ID["spleen"]]))
    lo = np.maximum(organs.min(0) - 4, 0)
    hi = np.minimum(organs.max(0) + 5, array.shape)
    affine = labels.affine.copy()
    affine[:3, 3] = labels.world_coordinates(lo)
    simple = Volume(array[tuple(slice(a, b) for a, b in zip(lo, hi))].copy(), affine, "labels")
    assert centroid_x(simple, ID["liver"]) > centroid_x(simple, ID["spleen"])  # RAS+: right = +x
    transform = RigidJitter(max_rotation_deg=aug.MAX_JITTER_DEGREES, max_translation_mm=10.0)  # the worst allowed
    for seed in range(20):
        params = transform.make_params(np.random.default_rng(seed), simple)
        assert np.linalg.det(aug.rotation_matrix(params.rotation_deg)) == pytest.approx(1.0)
        out, _ = transform.apply(simple, params)
        assert out.orientation == "RAS" and out.same_grid(simple)
        assert centroid_x(out, ID["liver"]) > centroid_x(out, ID["spleen"]) + 50.0, seed


def test_jitter_params_refuse_large_rotations():
    with pytest.raises(ValueError, match="rotation_deg"):
        JitterParams((0.0, 0.0, 180.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="max_rotation_deg"):
        RigidJitter(max_rotation_deg=90.0)


def test_jitter_moves_anatomy_by_the_translation(labels):
    params = JitterParams((0.0, 0.0, 0.0), (12.0, 0.0, 0.0))  # 2 voxels towards the patient's right
    out, _ = RigidJitter().apply(labels, params)
    shift = centroid_x(out, ID["liver"]) - centroid_x(labels, ID["liver"])
    assert shift == pytest.approx(12.0, abs=1.5)


# ---------------------------------------------------------------------------------------- scaling


def test_spleen_growth(labels, ct):
    out, out_ct = OrganScaling().apply(labels, ScalingParams("spleen", 1.5), ct)
    ratio = counts(out)[ID["spleen"]] / counts(labels)[ID["spleen"]]
    assert 1.3 <= ratio <= 1.6
    result = out.meta["augmentations"][-1]["result"]
    assert result["achieved_volume_factor"] == pytest.approx(ratio, abs=1e-3)
    for cls in SOLID:
        if cls != ID["spleen"]:
            np.testing.assert_array_equal(out.array == cls, labels.array == cls, err_msg=f"class {cls}")
    np.testing.assert_array_equal(out.array == UNKNOWN, labels.array == UNKNOWN)
    # CT changed only where the spleen is or was (a few old voxels fall outside the scaled shape).
    changed = out_ct.array != ct.array
    assert changed.any()
    assert not np.any(changed & (out.array != ID["spleen"]) & (labels.array != ID["spleen"]))


def test_spleen_shrink_leaves_no_background_holes(labels):
    out, _ = OrganScaling().apply(labels, ScalingParams("spleen", 0.7))
    ratio = counts(out)[ID["spleen"]] / counts(labels)[ID["spleen"]]
    assert 0.6 <= ratio <= 0.8
    assert not np.any((out.array == 0) & (labels.array != 0))  # vacated voxels never become air
    vacated = (labels.array == ID["spleen"]) & (out.array != ID["spleen"])
    assert vacated.any() and np.all(np.isin(out.array[vacated], list(SOFT - {0})))
    for cls in SOLID:
        if cls != ID["spleen"]:
            np.testing.assert_array_equal(out.array == cls, labels.array == cls)


def test_shrink_without_body_outline_fills_background(labels):
    # A partially annotated map (no body class): 0 means "none of the annotated classes".
    array = np.where(labels.array == ID["body"], 0, labels.array).astype(np.uint8)
    out, _ = OrganScaling().apply(labels.with_array(array), ScalingParams("liver", 0.8))
    ratio = counts(out)[ID["liver"]] / counts(array)[ID["liver"]]
    assert 0.7 <= ratio <= 0.9
    assert not np.any(out.array == ID["body"])


def test_scaling_anisotropic_ball():
    spacing = (2.0, 2.0, 5.0)
    grid = np.indices((40, 40, 20)).astype(float) * np.array(spacing)[:, None, None, None]
    # An ellipsoid off the grid's symmetry (a ball centred on a voxel grows in whole shells at once).
    radii = np.array([22.0, 17.0, 25.0])[:, None, None, None]
    ball = (((grid - np.array([40.7, 39.3, 51.2])[:, None, None, None]) / radii) ** 2).sum(0) <= 1.0
    array = np.where(ball, ID["liver"], ID["body"]).astype(np.uint8)
    volume = Volume(array, np.diag([*spacing, 1.0]), "labels")
    for factor in (0.6, 1.8):
        out, _ = OrganScaling().apply(volume, ScalingParams("liver", factor))
        assert counts(out)[ID["liver"]] / ball.sum() == pytest.approx(factor, rel=0.05)


def test_scaling_errors(labels):
    with pytest.raises(ValueError, match="organ"):
        ScalingParams("nonsense", 1.2)
    with pytest.raises(ValueError, match="volume_factor"):
        ScalingParams("spleen", 0.0)
    empty = labels.with_array(np.where(labels.array == ID["spleen"], ID["body"], labels.array).astype(np.uint8))
    with pytest.raises(ValueError, match="not present"):
        OrganScaling().apply(empty, ScalingParams("spleen", 1.2))
    assert OrganScaling(organs=("spleen",)).applicable(empty) is False


# ---------------------------------------------------------------------------------------- tumours


def test_shape_bank_loads_real_tumours(bank, real):
    assert len(bank) >= 2
    sources = {s.source.split("#")[0] for s in bank}
    assert sources == {"lits-117-crop/labels.nii.gz", "masks-only/msd_colon_050_tumour.nii.gz"}
    for shape in bank:
        assert shape.mask.any() and shape.diameter_mm > 0 and max(shape.mask.shape) <= 48
        assert shape.sdf.shape == shape.mask.shape and np.array_equal(shape.sdf < 0, shape.mask)
    few = load_tumour_shapes([(real / "lits-117-crop" / "labels.nii.gz", 2)], min_voxels=5000)
    assert 1 <= len(few) < len([s for s in bank if s.source.startswith("lits")])


def test_liver_tumour_of_40_mm(labels, bank):
    transform = TumourInsertion(bank)
    for seed in range(3):
        params = transform.make_params(np.random.default_rng(seed), labels, host="liver", diameter_mm=40.0, count=1)
        out, _ = transform.apply(labels, params)
        new = (out.array == ID["tumour"]) & (labels.array != ID["tumour"])
        components, n = ndimage.label(new, structure=np.ones((3, 3, 3)))
        assert n == 1, seed
        assert 36.0 <= brute_diameter(new, out.affine) <= 44.0, seed
        recorded = out.meta["augmentations"][-1]["result"]["tumours"][0]["diameter_mm"]
        assert recorded == pytest.approx(brute_diameter(new, out.affine), abs=0.05)
        assert (labels.array[new] == ID["liver"]).mean() >= 0.8
        # Touches no other solid organ (26-neighbourhood) and overwrote none.
        shell = ndimage.binary_dilation(new, structure=np.ones((3, 3, 3))) & ~new
        touching = set(np.unique(out.array[shell])) - {ID["liver"], ID["tumour"], *SOFT}
        assert not touching, (seed, touching)
        for cls in SOLID:
            if cls != ID["liver"]:
                np.testing.assert_array_equal(out.array == cls, labels.array == cls)


def test_colon_tumour_in_requested_segment(labels, bank):
    transform = TumourInsertion(bank, site_of=toy_site_of)
    for segment in ("sigmoid", "ascending"):
        params = transform.make_params(np.random.default_rng(4), labels, host="colon", segment=segment,
                                       diameter_mm=30.0)
        assert params.segment == segment
        for spec in params.tumours:
            centre = np.array(spec.centre_mm)
            assert toy_site_of(labels, centre[None])[0] == segment
            index = tuple(np.rint(np.linalg.inv(labels.affine)[:3] @ np.append(centre, 1.0)).astype(int))
            assert labels.array[index] == ID["colon"]
        out, _ = transform.apply(labels, params)
        assert out.array[index] == ID["tumour"]
        assert out.meta["augmentations"][-1]["result"]["segment"] == segment


def test_colon_segment_errors(labels, bank):
    with pytest.raises(ValueError, match="site_of"):
        TumourInsertion(bank).make_params(np.random.default_rng(0), labels, host="colon", segment="sigmoid")
    everywhere_transverse = TumourInsertion(bank, site_of=lambda v, p: ["transverse"] * len(p))
    with pytest.raises(ValueError, match="rectum"):
        everywhere_transverse.make_params(np.random.default_rng(0), labels, host="colon", segment="rectum")


def test_several_liver_tumours_and_replay_check(labels, bank):
    transform = TumourInsertion(bank)
    params = transform.make_params(np.random.default_rng(11), labels, host="liver", count=3)
    assert len(params.tumours) == 3
    out, _ = transform.apply(labels, params)
    assert counts(out)[ID["tumour"]] > 0
    other_bank = TumourInsertion(bank[::-1])
    with pytest.raises(ValueError, match="shape"):
        other_bank.apply(labels, params)


# ---------------------------------------------------------------------------------------- chain


def test_augment_case_record_replays(labels, ct, bank):
    config = AugmentConfig(p_elastic=1.0, p_jitter=1.0, p_scaling=1.0, max_scalings=1, p_tumour=1.0,
                           tumour=TumourInsertion(bank, site_of=toy_site_of))
    out, out_ct, record = augment_pair(labels, ct, 21, config)
    text = json.dumps(record)  # JSON-serialisable as is
    loaded = json.loads(text)
    names = [s["transform"] for s in loaded["steps"]]
    assert names == ["ElasticDeformation", "RigidJitter", "OrganScaling", "TumourInsertion"]
    for step in loaded["steps"]:
        assert params_to_json(params_from_json(step["transform"], step["params"])) == step["params"]
    again, again_ct = replay(labels, loaded, ct, config)
    np.testing.assert_array_equal(again.array, out.array)
    np.testing.assert_array_equal(again_ct.array, out_ct.array)
    assert loaded["volumes_ml"]["tumour"] > 0
    with pytest.raises(ValueError, match="input"):
        replay(out, loaded, config=config)


def test_augment_case_seeded_and_default_config(cases):
    lits = read_nifti(cases["lits-117-crop"]["labels_path"], kind="labels")
    a, rec_a = augment_case(lits, np.random.default_rng(3))
    b, rec_b = augment_case(lits, np.random.default_rng(3))
    np.testing.assert_array_equal(a.array, b.array)
    assert rec_a == rec_b
    json.dumps(rec_a)


def test_bad_arguments(labels):
    with pytest.raises(ValueError, match="amplitude_mm"):
        ElasticDeformation(amplitude_mm=(5.0, 1.0))
    with pytest.raises(ValueError, match="p_tumour"):
        AugmentConfig(p_tumour=2.0)
    with pytest.raises(ValueError, match="ct"):
        ElasticDeformation().apply(labels, ElasticParams(0, 5.0, 40.0), Volume(np.zeros((2, 2, 2)), np.eye(4)))
    with pytest.raises(ValueError, match="shapes"):
        TumourInsertion(shapes=[], hosts=("liver",))
    with pytest.raises(ValueError, match="hosts"):
        TumourInsertion(hosts=("lung",))
    with pytest.raises(ValueError, match="kind"):
        params_from_json("Nope", {})
