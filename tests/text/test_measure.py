"""Label-map measurement on synthetic phantoms: volumes, grades, partial views, tumours, colon segments."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.errors import InputError
from guidegen.io.volume import Volume, canonical
from guidegen.labels.vocabulary import ID, UNKNOWN
from guidegen.text.measure import REFERENCE_RANGES, grade_volume, measure_labels


def volume(array: np.ndarray, spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> Volume:
    return Volume(array, np.diag([*spacing, 1.0]), kind="labels")


def ball(shape: tuple[int, int, int], centre_mm, radius_mm: float, spacing) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    dist2 = sum(((grid[i] * spacing[i]) - centre_mm[i]) ** 2 for i in range(3))
    return dist2 <= radius_mm**2


# --------------------------------------------------------------------------------------------------
# Organs


def test_volume_is_voxel_count_times_voxel_volume() -> None:
    array = np.zeros((40, 40, 40), np.uint8)
    array[5:25, 5:20, 5:15] = ID["spleen"]  # 3000 voxels × 8 µL = 24 mL
    array[26:36, 5:20, 5:15] = ID["kidney_left"]  # 1500 voxels × 8 µL = 12 mL
    attrs = measure_labels(volume(array)).attributes
    assert attrs.organs["spleen"].volume_ml == pytest.approx(24.0)
    assert attrs.organs["kidney_left"].volume_ml == pytest.approx(12.0)
    assert attrs.organs["kidney_left"].state == "small"
    assert attrs.organs["kidney_left"].severity == "marked"


@pytest.mark.parametrize(
    "organ,volume_ml,state,severity",
    [
        ("spleen", 200.0, "normal", None),
        ("spleen", 450.0, "enlarged", "mild"),
        ("spleen", 700.0, "enlarged", "moderate"),
        ("spleen", 1500.0, "enlarged", "marked"),
        ("liver", 1500.0, "normal", None),
        ("liver", 2600.0, "enlarged", "mild"),
        ("liver", 800.0, "small", "mild"),
        ("kidney_right", 40.0, "small", "marked"),
        ("pancreas", 70.0, "normal", None),
        ("gallbladder", 5.0, "normal", None),  # a contracted gallbladder is not graded small
        ("colon", 5000.0, None, None),  # hollow organs are not graded
        ("urinary_bladder", 900.0, None, None),
    ],
)
def test_grades(organ: str, volume_ml: float, state: str | None, severity: str | None) -> None:
    assert grade_volume(organ, volume_ml) == (state, severity)


def test_partial_organ_is_never_small_but_can_be_enlarged() -> None:
    assert grade_volume("liver", 300.0, partial=True) == (None, None)
    assert grade_volume("spleen", 200.0, partial=True) == (None, None)
    assert grade_volume("spleen", 900.0, partial=True)[0] == "enlarged"


def test_reference_ranges_are_sane() -> None:
    for ref in REFERENCE_RANGES.values():
        assert ref.low_ml is None or 0 < ref.low_ml < ref.high_ml
        assert 1.0 < ref.moderate_ratio < ref.marked_ratio


def test_organ_touching_the_top_slice_is_partial() -> None:
    array = np.zeros((40, 40, 30), np.uint8)
    array[5:15, 5:15, 20:30] = ID["liver"]  # touches z = last slice
    array[20:30, 5:15, 10:20] = ID["spleen"]
    attrs = measure_labels(volume(array)).attributes
    liver = attrs.organs["liver"]
    assert liver.partial is True and liver.state is None and liver.volume_ml == pytest.approx(8.0)
    assert attrs.organs["spleen"].partial is False


def test_organ_next_to_unknown_voxels_is_partial() -> None:
    array = np.zeros((40, 40, 40), np.uint8)
    array[10:20, 10:20, 10:20] = ID["spleen"]
    array[20:25, 10:20, 10:20] = UNKNOWN
    assert measure_labels(volume(array)).attributes.organs["spleen"].partial is True


def test_unannotated_is_unknown_and_annotated_empty_is_absent() -> None:
    array = np.zeros((30, 30, 30), np.uint8)
    array[5:15, 5:15, 5:15] = ID["liver"]
    attrs = measure_labels(volume(array), annotated={"liver", "spleen"}).attributes
    assert set(attrs.organs) == {"liver", "spleen"}
    assert attrs.organs["spleen"].state == "absent"
    assert attrs.tumours is None  # tumour class not annotated
    attrs = measure_labels(volume(array), annotated={"liver", "tumour"}).attributes
    assert attrs.tumours == ()  # annotated and none found


def test_annotated_from_volume_meta() -> None:
    array = np.zeros((30, 30, 30), np.uint8)
    array[5:15, 5:15, 5:15] = ID["liver"]
    labels = volume(array)
    labels.meta["annotated"] = ["liver"]
    assert set(measure_labels(labels).attributes.organs) == {"liver"}


def test_foreign_ids_and_bad_names_are_input_errors() -> None:
    array = np.zeros((10, 10, 10), np.uint8)
    array[2:4, 2:4, 2:4] = 52  # a TotalSegmentator id that was not remapped
    with pytest.raises(InputError, match="remap"):
        measure_labels(volume(array))
    with pytest.raises(InputError, match="trachea"):
        measure_labels(volume(np.zeros((5, 5, 5), np.uint8)), annotated={"trachea"})


# --------------------------------------------------------------------------------------------------
# Tumours


def test_tumours_host_count_and_size() -> None:
    shape, spacing = (80, 80, 60), (2.0, 2.0, 2.0)
    array = np.zeros(shape, np.uint8)
    array[5:75, 5:50, 5:55] = ID["liver"]
    array[ball(shape, (60.0, 50.0, 50.0), 15.0, spacing)] = ID["tumour"]  # 30 mm, in the liver
    array[ball(shape, (100.0, 50.0, 60.0), 5.0, spacing)] = ID["tumour"]  # 10 mm, in the liver
    array[ball(shape, (120.0, 130.0, 60.0), 8.0, spacing)] = ID["tumour"]  # 16 mm, outside any organ
    array[70, 70, 10] = ID["tumour"]  # a 2 mm speck: ignored
    measured = measure_labels(volume(array, spacing))
    assert measured.lesions is not None and len(measured.lesions) == 3
    tumours = measured.attributes.tumours or ()
    in_liver = [t for t in tumours if t.organ == "liver"]  # grouped by lobe, so possibly two groups
    assert sum(t.count or 0 for t in in_liver) == 2
    assert max(t.diameter_mm or 0.0 for t in in_liver) == pytest.approx(30.0, abs=1.0)
    (outside,) = [t for t in tumours if t.organ is None]
    assert outside.count == 1 and outside.diameter_mm == pytest.approx(16.0, abs=1.0)
    # The liver's size includes the tumour voxels it hosts.
    liver_voxels = int((array == ID["liver"]).sum())
    assert measured.attributes.organs["liver"].volume_ml > liver_voxels * 0.008  # type: ignore[operator]
    hosted = measure_labels(volume(array, spacing), tumour_host="stomach").attributes.tumours or ()
    assert {t.organ for t in hosted} == {"liver", "stomach"}  # a measured host wins


def test_host_is_unknown_when_host_class_not_annotated() -> None:
    shape = (40, 40, 40)
    array = np.zeros(shape, np.uint8)
    array[5:35, 5:35, 5:35] = ID["liver"]
    array[ball(shape, (40.0, 40.0, 40.0), 8.0, (2.0, 2.0, 2.0))] = ID["tumour"]
    assert measure_labels(volume(array), annotated={"tumour", "spleen"}).attributes.tumours[0].organ is None  # type: ignore[index]


# Colon frame in world mm (RAS+: +x = patient's right, +z = superior), 2 mm voxels, origin 0.
# Grid x 0..320 mm (midline 160), z 0..400 mm.
COLON_PATH = {
    "rectum": [(160, 30), (160, 90)],
    "sigmoid": [(160, 90), (110, 130), (50, 150)],
    "descending": [(50, 150), (50, 300)],
    "transverse": [(50, 300), (270, 300)],
    "ascending": [(270, 300), (270, 170)],
    "caecum": [(270, 170), (270, 120)],
}
TUMOUR_AT = {
    "rectum": (160, 45),
    "sigmoid": (115, 127),
    "descending": (50, 230),
    "transverse": (160, 300),
    "ascending": (270, 240),
    "caecum": (270, 132),
}


def synthetic_colon(tumour_segment: str | None) -> np.ndarray:
    shape = (160, 60, 200)
    array = np.zeros(shape, np.uint8)
    grid_x, grid_z = np.meshgrid(np.arange(shape[0]) * 2.0, np.arange(shape[2]) * 2.0, indexing="ij")
    tube = np.zeros((shape[0], shape[2]), bool)
    for points in COLON_PATH.values():
        for (x0, z0), (x1, z1) in zip(points[:-1], points[1:]):
            for t in np.linspace(0, 1, 60):
                x, z = x0 + t * (x1 - x0), z0 + t * (z1 - z0)
                tube |= (grid_x - x) ** 2 + (grid_z - z) ** 2 <= 14.0**2
    array[:, 20:40, :][tube[:, None, :].repeat(20, axis=1)] = ID["colon"]
    if tumour_segment is not None:
        x, z = TUMOUR_AT[tumour_segment]
        array[ball(shape, (x, 60.0, z), 12.0, (2.0, 2.0, 2.0)) & (array == ID["colon"])] = ID["tumour"]
    return array


@pytest.mark.parametrize("segment", list(TUMOUR_AT))
def test_colon_segment_heuristic(segment: str) -> None:
    array = synthetic_colon(segment)
    attrs = measure_labels(volume(array), annotated={"colon", "tumour"}).attributes
    assert attrs.tumours is not None and len(attrs.tumours) == 1
    assert (attrs.tumours[0].organ, attrs.tumours[0].segment) == ("colon", segment)


def test_colon_segment_in_another_orientation() -> None:
    """The heuristic works in world coordinates: an LPS-stored copy gives the same answers."""
    array = synthetic_colon("caecum")
    flipped = array[::-1, ::-1, :].copy()  # x → left, y → posterior
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [(array.shape[0] - 1) * 2.0, (array.shape[1] - 1) * 2.0, 0.0]
    lps = Volume(flipped, affine, kind="labels")
    assert lps.orientation == "LPS"
    for labels in (lps, canonical(lps)):
        (tumour,) = measure_labels(labels, annotated={"colon", "tumour"}).attributes.tumours  # type: ignore[misc]
        assert tumour.segment == "caecum"


def test_liver_lobes() -> None:
    shape, spacing = (100, 60, 60), (2.0, 2.0, 2.0)
    array = np.zeros(shape, np.uint8)
    array[10:90, 10:50, 10:50] = ID["liver"]  # x 20-180 mm; patient's left = small x
    array[ball(shape, (40.0, 60.0, 60.0), 8.0, spacing)] = ID["tumour"]
    array[ball(shape, (150.0, 60.0, 60.0), 8.0, spacing)] = ID["tumour"]
    tumours = measure_labels(volume(array, spacing)).attributes.tumours or ()
    assert {t.segment for t in tumours} == {"left lobe", "right lobe"}
    # Cut at the dome (the top face), as scans and sampled maps often are: lobes still told apart.
    dome = array.copy()
    dome[10:90, 10:50, 50:] = ID["liver"]
    tumours = measure_labels(volume(dome, spacing)).attributes.tumours or ()
    assert {t.segment for t in tumours} == {"left lobe", "right lobe"}
    # Cut by the left edge: where the left lobe ends is unknown, so no lobe is named.
    side = array.copy()
    side[:10, 10:50, 10:50] = ID["liver"]
    tumours = measure_labels(volume(side, spacing)).attributes.tumours or ()
    assert tumours and {t.segment for t in tumours} == {None}


# --------------------------------------------------------------------------------------------------
# Field of view


def _fov(**organs: tuple[slice, slice, slice]) -> str | None:
    array = np.zeros((40, 40, 50), np.uint8)
    for name, box in organs.items():
        array[box] = ID[name]
    return measure_labels(volume(array)).attributes.field_of_view


def test_field_of_view() -> None:
    liver = (slice(20, 35), slice(5, 30), slice(35, 48))
    spleen = (slice(2, 10), slice(5, 20), slice(35, 45))
    kidney_r = (slice(25, 32), slice(5, 12), slice(20, 32))
    kidney_l = (slice(8, 15), slice(5, 12), slice(20, 32))
    bladder = (slice(15, 25), slice(20, 30), slice(2, 8))
    assert (
        _fov(liver=liver, spleen=spleen, kidney_right=kidney_r, kidney_left=kidney_l, urinary_bladder=bladder)
        == "abdomen_pelvis"
    )
    assert _fov(liver=liver, spleen=spleen, kidney_right=kidney_r, kidney_left=kidney_l) == "abdomen"
    cut_kidney = (slice(25, 32), slice(5, 12), slice(0, 10))
    assert _fov(liver=liver, kidney_right=cut_kidney) == "upper_abdomen"
    assert _fov(urinary_bladder=bladder) == "pelvis"
    assert _fov(liver=(slice(20, 35), slice(5, 30), slice(0, 50))) == "partial"  # cut at both ends
    assert _fov() is None
    array = np.zeros((20, 20, 20), np.uint8)
    array[5:10, 5:10, 5:10] = ID["liver"]
    assert measure_labels(volume(array), annotated={"liver"}).attributes.field_of_view is None
