"""Known-answer tests of the sampled-mask quality checks on real label maps at the sampler's 6 mm grid."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.evaluation.mask_anatomy import (
    RELATIONS,
    component_check,
    components_pass,
    relation_check,
    relation_pass_fraction,
)
from guidegen.evaluation.mask_volumes import VolumeStats, organ_volumes, volume_check, volume_statistics
from guidegen.evaluation.masks import adherence_check, check_masks, diversity
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, ORGANS, UNKNOWN
from guidegen.text.attributes import Attributes, OrganFinding, Tumour
from guidegen.text.measure import REFERENCE_RANGES, measure_labels
from guidegen.text.parse import parse_prompt

LEFT_RIGHT = ("liver_right_of_spleen", "kidney_right_right_of_kidney_left", "stomach_left_of_liver")


@pytest.fixture(scope="module")
def maps(tmp_path_factory, real) -> dict[str, Volume]:
    """totalseg-example-a and AMOS case 13 in GuideGen ids on the sampler's 6 mm grid."""
    # Only the AMOS map of masks-only is needed; preparing the colon-tumour map as well would add
    # several seconds of resampling to a test budget shared with the whole suite.
    amos = tmp_path_factory.mktemp("amos-source")
    shutil.copyfile(real / "masks-only" / "amos_0013_labels.nii.gz", amos / "amos_0013_labels.nii.gz")
    sidecar = {"cases": [{"id": "amos-0013-labels", "labels": "amos_0013_labels.nii.gz", "vocabulary": "amos"}]}
    (amos / "guidegen-source.json").write_text(json.dumps(sidecar))
    out = tmp_path_factory.mktemp("prepared-6mm")
    config = PrepareConfig(spacing=(6.0, 6.0, 6.0), size_xy=(64, 64))
    result = prepare([real / "totalseg-example-a", amos], out, config, progress=False)
    assert result.failed == []
    volumes = {}
    for entry in load_prepared(out):
        volume = read_nifti(entry["labels_path"], kind="labels")
        volume.meta["annotated"] = list(entry["annotated"])
        volumes[entry["case_id"]] = volume
    return volumes


@pytest.fixture(scope="module")
def real_a(maps) -> Volume:
    """The totalseg-example-a map as a sampler would return it: every class annotated, no tumour."""
    volume = maps["totalseg-example-a"]
    return volume.with_array(volume.array.copy(), meta={**volume.meta, "annotated": list(NAMES[1:])})


def _edit(volume: Volume, array: np.ndarray) -> Volume:
    return volume.with_array(array, meta={**volume.meta, "annotated": list(volume.meta["annotated"])})


def _insert_sphere(volume: Volume, diameter_mm: float, host: str = "liver") -> Volume:
    """Paint a tumour sphere centred at the host's deepest point (farthest from its surface)."""
    array = volume.array.copy()
    # Pad so that the volume's faces count as outside: the sphere stays inside the grid.
    depth = ndimage.distance_transform_edt(np.pad(array == ID[host], 1), sampling=volume.spacing)[1:-1, 1:-1, 1:-1]
    centre = volume.world_coordinates(np.array(np.unravel_index(np.argmax(depth), depth.shape)))
    world = volume.world_coordinates(np.indices(array.shape).reshape(3, -1).T).reshape(*array.shape, 3)
    inside = (np.linalg.norm(world - centre, axis=-1) <= diameter_mm / 2) & (array != UNKNOWN)
    array[inside] = ID["tumour"]
    return _edit(volume, array)


def _enlarge(volume: Volume, organ: str, above_ml: float) -> Volume:
    """Dilate an organ into surrounding background / body until its volume exceeds ``above_ml``."""
    array = volume.array.copy()
    for _ in range(6):
        grow = ndimage.binary_dilation(array == ID[organ], structure=np.ones((3, 3, 3), bool))
        array[grow & np.isin(array, [0, ID["body"]])] = ID[organ]
        if (array == ID[organ]).sum() * volume.voxel_volume_ml > above_ml:
            return _edit(volume, array)
    raise AssertionError(f"could not enlarge {organ} beyond {above_ml} mL")


def _replace(volume: Volume, organ: str, by: str = "body") -> Volume:
    array = volume.array.copy()
    array[array == ID[organ]] = ID[by] if by != "background" else 0
    return _edit(volume, array)


def _mirror(volume: Volume) -> Volume:
    """Left-right mirror image in the same world frame (flip axis 0, keep the affine)."""
    return _edit(volume, np.ascontiguousarray(volume.array[::-1]))


def _measured(volume: Volume) -> Attributes:
    return measure_labels(volume).attributes


# ---------------------------------------------------------------------------------------------
# Components


def test_real_map_organs_are_single_components_except_the_known_fragments(maps):
    results = component_check(maps["totalseg-example-a"])
    assert set(results) == set(ORGANS)
    # TotalSegmentator's prediction itself has the pancreas in two pieces (360 + 319 voxels at its
    # 3 mm, three pieces of 68 voxels, 36 in the largest, at 6 mm) and 10 % of the small bowel in two
    # loops cut off by the colon (67 voxels and 0.906 before the 6 mm resampling stopped leaving
    # background between touching classes), so the
    # check rightly fails those two; every other organ is one piece.
    for name, result in results.items():
        if name in ("pancreas", "small_bowel"):
            assert result.passed is False
        else:
            assert result.passed is True and result.components == 1 and result.main_fraction == 1.0, name
    assert results["pancreas"].components == 3 and results["pancreas"].main_fraction == pytest.approx(36 / 68, abs=1e-3)
    assert results["small_bowel"].main_fraction == pytest.approx(0.901, abs=0.002)
    assert results["small_bowel"].outside_fraction == pytest.approx(1 - results["small_bowel"].main_fraction)
    solid = ("spleen", "kidney_right", "kidney_left", "liver", "stomach", "duodenum", "colon", "urinary_bladder")
    assert components_pass(component_check(maps["totalseg-example-a"], classes=solid)) is True

    amos = component_check(maps["amos-0013-labels"])
    assert amos["small_bowel"].passed is None and amos["colon"].passed is None  # not annotated
    assert components_pass(amos) is True


def test_organ_split_into_far_apart_pieces_fails(maps):
    volume = maps["totalseg-example-a"]
    array = volume.array.copy()
    kidney = np.argwhere(array == ID["kidney_left"])
    lower = kidney[kidney[:, 2] < np.median(kidney[:, 2])]
    array[tuple(lower.T)] = ID["body"]
    moved = lower - np.array([0, 0, 12])  # 72 mm further down, into the lower abdomen
    array[tuple(moved.T)] = ID["kidney_left"]
    results = component_check(_edit(volume, array), classes=["kidney_left", "kidney_right"])
    assert results["kidney_left"].passed is False
    assert results["kidney_left"].components == 2
    assert results["kidney_left"].outside_fraction == pytest.approx(len(lower) / len(kidney), abs=1e-3)
    assert results["kidney_right"].passed is True


def test_component_threshold_and_tumour_bridging():
    array = np.zeros((20, 20, 20), np.uint8)
    array[2:6, 2:6, 2:6] = ID["liver"]  # 64 voxels
    array[15, 15, 15] = ID["liver"]  # a 1-voxel speck: 64/65 = 98.5 % in the main piece
    volume = Volume(array, np.diag([6.0, 6.0, 6.0, 1.0]), kind="labels")
    assert component_check(volume, ["liver"])["liver"].passed is True
    array[14:16, 14:16, 14:16] = ID["liver"]  # an 8-voxel island: 64/72 = 88.9 %
    result = component_check(volume, ["liver"])["liver"]
    assert (result.passed, result.components, result.main_fraction) == (False, 2, pytest.approx(64 / 72, abs=1e-4))
    assert component_check(volume, ["liver"], min_fraction=0.85)["liver"].passed is True

    # A kidney cut in two by a tumour slab is still one organ; the tumour class is not checked.
    array[:] = 0
    array[8:12, 8:12, 2:12] = ID["kidney_right"]
    array[8:12, 8:12, 6:8] = ID["tumour"]
    results = component_check(volume)
    assert "tumour" not in results
    assert results["kidney_right"].passed is True and results["kidney_right"].components == 1
    assert results["kidney_right"].voxels == 4 * 4 * 8
    assert results["spleen"] == results["liver"] and results["spleen"].passed is None  # absent: not judged


# ---------------------------------------------------------------------------------------------
# Relations


def test_real_maps_satisfy_every_relation(maps):
    assert len(RELATIONS) >= 6
    for volume in maps.values():
        results = relation_check(volume)
        assert set(results) == set(RELATIONS)
        assert all(results.values()), results
        assert relation_pass_fraction(results) == 1.0


def test_mirrored_map_fails_the_left_right_relations(maps):
    results = relation_check(_mirror(maps["totalseg-example-a"]))
    assert [results[name] for name in LEFT_RIGHT] == [False, False, False]
    # Heights, depths and "one kidney each side" do not change under a left-right mirror.
    assert all(v for k, v in results.items() if k not in LEFT_RIGHT)
    assert relation_pass_fraction(results) == pytest.approx(6 / 9)


def test_relations_use_world_coordinates(maps):
    # The same anatomy stored flipped (an LAS array with its matching affine) still passes.
    volume = maps["totalseg-example-a"]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = volume.shape[0] - 1
    stored = Volume(np.ascontiguousarray(volume.array[::-1]), volume.affine @ flip, kind="labels")
    assert stored.orientation == "LAS"
    assert all(relation_check(stored).values())


def test_relations_are_none_without_their_organs_and_fall_back_to_the_body_midline(maps):
    volume = maps["totalseg-example-a"]
    no_aorta = _replace(volume, "aorta")
    assert relation_check(no_aorta)["kidneys_either_side_of_midline"] is True  # body midline
    assert relation_check(no_aorta)["pancreas_anterior_of_aorta"] is None
    no_body = _replace(_replace(no_aorta, "body", "background"), "bone", "background")
    assert relation_check(no_body)["kidneys_either_side_of_midline"] is None
    results = relation_check(_replace(volume, "spleen"))
    assert results["liver_right_of_spleen"] is None and results["spleen_above_kidney_left"] is None
    assert relation_pass_fraction(results) == 1.0
    assert relation_pass_fraction({"a": None}) is None


# ---------------------------------------------------------------------------------------------
# Volumes


def test_volume_statistics_known_answer(maps):
    a, b = maps["totalseg-example-a"], maps["amos-0013-labels"]
    va, vb = organ_volumes(a), organ_volumes(b)
    stats = volume_statistics([a, b])
    spleen = stats["spleen"]
    assert spleen.mean_ml == pytest.approx((va["spleen"] + vb["spleen"]) / 2)
    assert spleen.std_ml == pytest.approx(abs(va["spleen"] - vb["spleen"]) / np.sqrt(2))
    assert (spleen.min_ml, spleen.max_ml) == (min(va["spleen"], vb["spleen"]), max(va["spleen"], vb["spleen"]))
    assert 200 < va["spleen"] < 300  # a normal spleen, ~245 mL
    # The small bowel was annotated in one map only: one observation, std 0.
    assert vb["small_bowel"] is None
    assert stats["small_bowel"] == VolumeStats(va["small_bowel"], 0.0, va["small_bowel"], va["small_bowel"])
    assert json.loads(json.dumps(stats))["spleen"] == list(spleen)


def test_volume_check_flags_missing_and_absurd_organs_unless_prompted(maps):
    a = maps["totalseg-example-a"]
    stats = volume_statistics([a, maps["amos-0013-labels"]])
    assert all(f.status == "ok" for f in volume_check(a, stats).values())

    findings = volume_check(_replace(a, "liver"), stats)
    assert findings["liver"].status == "missing" and findings["liver"].outlier
    absent = parse_prompt("status post splenectomy, no tumour")
    assert volume_check(_replace(a, "spleen"), stats, prompt_attributes=absent)["spleen"].status == "ok"

    tiny_reference = {"spleen": (50.0, 10.0, 40.0, 60.0)}  # a 245 mL spleen is ~5× this mean
    assert volume_check(a, tiny_reference)["spleen"].status == "too_large"
    assert volume_check(a, tiny_reference)["spleen"].ratio == pytest.approx(4.89, abs=0.01)
    enlarged = parse_prompt("splenomegaly")
    finding = volume_check(a, tiny_reference, prompt_attributes=enlarged)["spleen"]
    assert (finding.status, finding.expected) == ("ok", "enlarged")
    assert volume_check(a, tiny_reference, tolerance=6.0)["spleen"].status == "ok"
    huge_reference = {"spleen": [1000.0, 0.0, 1000.0, 1000.0]}
    assert volume_check(a, huge_reference)["spleen"].status == "too_small"
    assert volume_check(a, huge_reference, prompt_attributes=parse_prompt("small spleen"))["spleen"].status == "ok"
    # Not annotated in the sample: unknown, never "missing".
    assert volume_check(maps["amos-0013-labels"], stats)["colon"].status == "unknown"

    with pytest.raises(ValueError, match="tolerance"):
        volume_check(a, stats, tolerance=1.0)
    with pytest.raises(ValueError, match="reference_stats"):
        volume_check(a, {"spleen": (0.0, 1.0, 0.0, 1.0)})
    with pytest.raises(ValueError, match="reference_stats"):
        volume_check(a, {"spleen": (1.0, 2.0)})
    with pytest.raises(ValueError, match="labels_list"):
        volume_statistics([])
    with pytest.raises(ValueError, match="sample"):
        volume_check(a.array, stats)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Adherence


def test_tumour_adherence_with_a_sphere_of_known_diameter(real_a):
    prompt = parse_prompt("4 cm liver tumour")
    sample_40 = _measured(_insert_sphere(real_a, 40.0))
    result = adherence_check(prompt, sample_40)
    expected = {"tumours": True, "tumour1.organ": True, "tumour1.diameter_mm": True, "tumour1.count": True}
    assert result == {**expected, "all": True}
    sample_80 = _measured(_insert_sphere(real_a, 80.0))
    result = adherence_check(prompt, sample_80)
    assert result["tumour1.organ"] is True and result["tumour1.diameter_mm"] is False and result["all"] is False
    assert sample_80.tumours[0].diameter_mm > 52.0  # beyond 40 mm + 30 %

    no_tumour = parse_prompt("no tumour")
    assert adherence_check(no_tumour, sample_40) == {"tumours": False, "all": False}
    assert adherence_check(no_tumour, _measured(real_a)) == {"tumours": True, "all": True}
    assert adherence_check(prompt, _measured(real_a))["tumours"] is False
    wrong_host = adherence_check(parse_prompt("3 cm tumour in the right kidney"), sample_40)
    assert wrong_host["tumour1.organ"] is False and wrong_host["all"] is False
    # Sex and age are not visible on a label map and are not scored.
    assert set(adherence_check(parse_prompt("55-year-old man with a 5 cm HCC"), sample_40)) == set(result)


def test_tumour_presence_cannot_hold_when_the_tumour_class_is_unknown(maps):
    measured = _measured(maps["totalseg-example-a"])  # tumour not annotated in this source
    assert measured.tumours is None
    assert adherence_check(parse_prompt("healthy abdomen, no tumour"), measured)["all"] is False


def test_enlarged_spleen_adherence(real_a):
    prompt = parse_prompt("enlarged spleen")
    assert REFERENCE_RANGES["spleen"].high_ml == 350.0
    assert adherence_check(prompt, _measured(real_a)) == {"spleen.state": False, "all": False}
    enlarged = _measured(_enlarge(real_a, "spleen", REFERENCE_RANGES["spleen"].high_ml))
    assert enlarged.organs["spleen"].volume_ml > 350.0
    assert adherence_check(prompt, enlarged) == {"spleen.state": True, "all": True}
    assert adherence_check(parse_prompt("small spleen"), enlarged)["spleen.state"] is False
    normal = parse_prompt("liver, spleen and kidneys are normal in size")
    assert adherence_check(normal, enlarged)["spleen.state"] is False
    # "marked" splenomegaly is graded from 3 × 350 mL: a ~460 mL spleen is only mild.
    marked = adherence_check(parse_prompt("marked splenomegaly"), enlarged)
    assert marked["spleen.state"] is True and marked["spleen.severity"] is False


def test_adherence_fields_on_constructed_records():
    measured = Attributes(
        tumours=(
            Tumour("kidney_left", None, 31.0, 1),
            Tumour("colon", "sigmoid", 42.0, 1),
            Tumour("liver", None, 16.0, 3),
        ),
        organs={"kidney_left": OrganFinding("normal", volume_ml=150.0), "stomach": OrganFinding(None, volume_ml=900.0)},
        field_of_view="abdomen_pelvis",
    )
    stated = Attributes(
        sex="female",
        tumours=(
            Tumour("kidney", None, 30.0, 1),  # "renal mass": either side
            Tumour("colon", "caecum", 40.0, 1),  # right size, wrong segment
            Tumour("liver", None, 25.0, None),  # "multiple liver metastases up to 25 mm"
        ),
        organs={"kidney_left": OrganFinding(volume_ml=140.0), "stomach": OrganFinding("enlarged")},
        field_of_view="upper_abdomen",
    )
    result = adherence_check(stated, measured)
    assert result["tumour1.organ"] and result["tumour1.diameter_mm"] and result["tumour1.count"]
    assert result["tumour2.organ"] and not result["tumour2.segment"] and result["tumour2.diameter_mm"]
    assert result["tumour3.count"] and not result["tumour3.diameter_mm"]  # 16 mm is 36 % under 25 mm
    assert result["kidney_left.volume_ml"] is True
    assert "stomach.state" not in result  # no normal range and no reference: not scored
    assert result["field_of_view"] is False and result["all"] is False
    assert "sex" not in result
    with_reference = adherence_check(stated, measured, reference_stats={"stomach": (300.0, 100.0, 120.0, 500.0)})
    assert with_reference["stomach.state"] is True
    assert adherence_check(Attributes(sex="male"), measured) == {"all": True}  # nothing scorable
    with pytest.raises(ValueError, match="diameter_tolerance"):
        adherence_check(stated, measured, diameter_tolerance=1.5)
    with pytest.raises(ValueError, match="measured_attributes"):
        adherence_check(stated, {"tumours": []})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Diversity and the batch report


def test_diversity(real_a):
    assert diversity([real_a, real_a, real_a]) == pytest.approx(1.0)
    shifted = real_a.with_array(np.roll(real_a.array, 1, axis=0))
    mirrored = _mirror(real_a)
    near, far = diversity([real_a, shifted]), diversity([real_a, mirrored])
    assert 0.0 < far < near < 1.0
    assert diversity([real_a.array, mirrored.array]) == pytest.approx(far)  # plain arrays work too
    assert diversity([real_a, real_a, mirrored]) == pytest.approx((1.0 + 2 * far) / 3)
    with pytest.raises(ValueError, match="at least two"):
        diversity([real_a])
    with pytest.raises(ValueError, match="shape"):
        diversity([real_a, real_a.with_array(real_a.array[:-1].copy())])


def test_check_masks_report(maps, real_a):
    stats = volume_statistics(maps.values())
    samples = [real_a, real_a, _mirror(real_a), _insert_sphere(real_a, 40.0), _replace(real_a, "liver")]
    prompts = [
        "healthy abdomen, no tumour",
        "healthy abdomen, no tumour",
        "enlarged spleen",
        "68-year-old man, 4 cm liver tumour",
        "normal CT of a 45-year-old woman",  # nothing a label map shows: not in the adherence share
    ]
    report = check_masks(samples, prompts, stats)
    assert report.n_samples == 5
    assert report.component_pass_fraction == 0.0  # the source's fragmented pancreas, in every sample
    # Mirror: 3 of 9 relations fail; no liver: 4 relations untestable.
    assert report.relation_pass_fraction == pytest.approx((9 + 9 + 6 + 9 + 5) / (9 + 9 + 9 + 9 + 5), abs=1e-4)
    assert report.relation_pass_by_name["liver_right_of_spleen"] == pytest.approx(3 / 4)
    assert report.adherence_fraction == pytest.approx(3 / 4)
    assert report.adherence_by_field["organ.state"] == 0.0 and report.adherence_by_field["tumour.diameter_mm"] == 1.0
    assert [(o["sample"], o["organ"], o["status"]) for o in report.volume_outliers] == [(4, "liver", "missing")]
    assert report.diversity == {"healthy abdomen, no tumour": {"samples": 2, "mean_dice": 1.0, "diversity": 0.0}}

    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["samples"][2]["relations"]["liver_right_of_spleen"] is False
    lines = report.summary_lines()
    assert lines[0].startswith("mask check: 5 sample(s), 4 prompt(s)")
    text = "\n".join(lines)
    assert "pancreas" in text and "liver_right_of_spleen" in text and "missing" in text and "diversity" in text

    solid = ("spleen", "kidney_right", "kidney_left", "liver", "stomach")
    assert check_masks(samples[:2], prompts[:2], component_classes=solid).component_pass_fraction == 1.0
    # Prompts default to what the sampler records in each sample's meta.
    tagged = [s.with_array(s.array, meta={**s.meta, "prompt": p}) for s, p in zip(samples[:2], prompts[:2])]
    assert check_masks(tagged, None).to_dict()["diversity"] == report.to_dict()["diversity"]
    with pytest.raises(ValueError, match="meta"):
        check_masks(samples[:1], None)
    with pytest.raises(ValueError, match="prompts"):
        check_masks(samples, prompts[:2], stats)
    with pytest.raises(ValueError, match="samples"):
        check_masks([], [], stats)
    with pytest.raises(ValueError, match="min_fraction"):
        check_masks(samples[:1], prompts[:1], min_fraction=0.0)


def test_check_masks_scores_the_organs_a_prompt_leaves_unchanged(real_a):
    prompt = "normal CT of the abdomen and pelvis"
    array = real_a.array.copy()
    kidney = np.argwhere(array == ID["kidney_left"])
    array[tuple(kidney[len(kidney) // 10 :].T)] = 0  # a left kidney of a tenth of its size
    report = check_masks([real_a, _edit(real_a, array)], [prompt, prompt])
    first, second = (s.unstated for s in report.samples)
    assert first["kidney_left"].normal is True and second["kidney_left"].normal is False
    assert second["kidney_right"].normal == first["kidney_right"].normal
    assert report.unstated["by_organ"]["kidney_left"]["normal"] == [1, 2]
    assert report.to_dict()["unstated"]["normal_maps"][1] == 2
    assert any(line.startswith("  unstated organs:") and "kidney_left 1/2" in line for line in report.summary_lines())
