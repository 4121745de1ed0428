"""Stated tumours placed into sampled anatomy (`guidegen.masks.placement`), on a real label map."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from guidegen.data.prepare import PrepareConfig, load_prepared, prepare
from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID
from guidegen.masks.placement import place_stated_tumours, remove_tumours
from guidegen.text.measure import measure_labels
from guidegen.text.parse import parse_prompt

TUMOUR = ID["tumour"]


@pytest.fixture(scope="module")
def anatomy(tmp_path_factory, real) -> Volume:
    """The complete TotalSegmentator map on the demo sampler's 8 mm grid, as a sampled map looks."""
    out = tmp_path_factory.mktemp("prepared8")
    result = prepare([real / "totalseg-example-a"], out, PrepareConfig(spacing=(8.0, 8.0, 8.0), size_xy=(48, 48)),
                     progress=False)
    assert result.failed == []
    labels = read_nifti(load_prepared(out)[0]["labels_path"], kind="labels")
    assert not np.any(labels.array == TUMOUR)
    # The scan is cut at the liver dome; the sampler's maps keep room above the liver (its training
    # maps are aligned so), and only a whole liver has lobes: add that room, as background.
    array = np.pad(labels.array, ((0, 0), (0, 0), (0, 5)))
    return Volume(array, labels.affine, "labels", {})


def place(labels: Volume, prompt: str, seed: int = 0):
    return place_stated_tumours(labels, parse_prompt(prompt).tumours, np.random.default_rng(seed))


@pytest.mark.parametrize("prompt, host, segment", [
    ("4 cm liver tumour", "liver", None),
    ("5 cm sigmoid colon cancer", "colon", "sigmoid"),
    ("ascending colon carcinoma 45 mm", "colon", "ascending"),
    ("3 cm tumour in the right kidney", "kidney_right", None),
    ("solitary 25 mm lesion in the left lobe of the liver", "liver", "left lobe"),
])
def test_stated_tumour_is_measured_as_stated(anatomy, prompt, host, segment):
    out, record = place(anatomy, prompt)
    assert all(record["agreement"].values()), record
    measured = measure_labels(out).attributes.tumours
    assert len(measured) == 1 and measured[0].organ == host and measured[0].count == 1
    assert segment is None or measured[0].segment == segment
    stated = parse_prompt(prompt).tumours[0].diameter_mm
    assert abs(measured[0].diameter_mm - stated) <= 0.3 * stated
    # Only the host and soft tissue gave way: every other organ is untouched.
    changed = out.array != anatomy.array
    assert set(np.unique(out.array[changed])) == {TUMOUR}
    assert ID["liver"] not in anatomy.array[changed] or host == "liver"
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
    liver = np.argwhere(drawn == ID["liver"])
    centre = liver[len(liver) // 2]
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
