"""Report writing: the record round trip through text, determinism, JSON, and real label maps."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from guidegen.io.nifti import read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, ORGANS
from guidegen.text.attributes import (
    FIELDS_OF_VIEW,
    PHASES,
    SEGMENTS,
    SEVERITIES,
    Attributes,
    OrganFinding,
    Tumour,
)
from guidegen.text.measure import measure_labels
from guidegen.text.parse import parse_prompt
from guidegen.text.report import report_from_labels, write_report

REAL = Path(__file__).resolve().parents[2] / "data" / "real"

# TotalSegmentator "total" ids → GuideGen names (data/real/totalseg-labels.json). Kept local: the
# tests must not depend on guidegen.labels.remap.
TOTALSEG = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    18: "small_bowel",
    19: "duodenum",
    20: "colon",
    21: "urinary_bladder",
    52: "aorta",
    63: "inferior_vena_cava",
    64: "portal_vein",
}

HOSTS = [*ORGANS, "kidney", None]


# --------------------------------------------------------------------------------------------------
# Random records


def random_attributes(rng: random.Random) -> Attributes:
    tumours: tuple[Tumour, ...] | None
    roll = rng.random()
    if roll < 0.2:
        tumours = None
    elif roll < 0.35:
        tumours = ()
    else:
        seen, found = set(), []
        for _ in range(rng.randint(1, 3)):
            organ = rng.choice(HOSTS)
            segment = rng.choice(SEGMENTS[organ]) if organ in SEGMENTS and rng.random() < 0.6 else None
            if (organ, segment) in seen:
                continue  # one group per site, as measure_labels makes them
            seen.add((organ, segment))
            diameter = None if rng.random() < 0.15 else round(rng.uniform(5.0, 150.0), 1)
            found.append(Tumour(organ, segment, diameter, rng.choice([1, 1, 1, 2, 3, 5, 9, 14, None])))
        tumours = tuple(found)
    organs = {}
    for name in rng.sample(ORGANS, rng.randint(0, len(ORGANS))):
        state = rng.choice([None, "enlarged", "normal", "small", "absent"])
        severity = rng.choice([None, *SEVERITIES]) if state in ("enlarged", "small") else None
        volume = None if state == "absent" or rng.random() < 0.2 else round(rng.uniform(1.0, 4000.0), 1)
        organs[name] = OrganFinding(state, severity, volume, rng.choice([None, False, True]))
    return Attributes(
        sex=rng.choice([None, "male", "female"]),
        age=rng.choice([None, rng.randint(18, 95), rng.randint(0, 120)]),
        phase=rng.choice([None, *PHASES]),
        tumours=tumours,
        organs=organs,
        field_of_view=rng.choice([None, *FIELDS_OF_VIEW]),
    )


def stated_differences(want: Attributes, got: Attributes) -> list[str]:
    """What ``got`` misses or adds relative to the fields a report of ``want`` states."""
    problems = []
    for name in ("sex", "age", "phase", "field_of_view"):
        if getattr(want, name) is not None and getattr(want, name) != getattr(got, name):
            problems.append(f"{name}: {getattr(want, name)!r} -> {getattr(got, name)!r}")
        if getattr(want, name) is None and getattr(got, name) is not None:
            problems.append(f"{name}: unknown -> {getattr(got, name)!r}")
    if want.tumours is None:
        if got.tumours is not None:
            problems.append(f"tumours: unknown -> {got.tumours}")
    elif got.tumours is None or len(got.tumours) != len(want.tumours):
        problems.append(f"tumours: {want.tumours} -> {got.tumours}")
    else:
        by_site = {(t.organ, t.segment): t for t in got.tumours}
        for t in want.tumours:
            u = by_site.get((t.organ, t.segment))
            if u is None or u.count != t.count or (u.diameter_mm is None) != (t.diameter_mm is None):
                problems.append(f"tumour {t} -> {u}")
            elif t.diameter_mm is not None and abs(t.diameter_mm - u.diameter_mm) > 0.5 + 1e-6:  # type: ignore[operator]
                problems.append(f"tumour size {t.diameter_mm} -> {u.diameter_mm}")  # 1 decimal cm / whole mm
    for name, f in want.organs.items():
        stated = f.state is not None or f.volume_ml is not None or f.partial
        g = got.organs.get(name)
        if not stated:
            if g is not None:
                problems.append(f"{name}: unstated -> {g}")
            continue
        if g is None or g.state != f.state:
            problems.append(f"{name}: {f} -> {g}")
            continue
        if f.state == "absent":
            continue  # volume and partial view of an absent organ are not stated
        if g.severity != f.severity:
            problems.append(f"{name} severity: {f.severity} -> {g.severity}")
        if f.volume_ml is not None and (g.volume_ml is None or abs(f.volume_ml - g.volume_ml) > 0.5 + 1e-6):
            problems.append(f"{name} volume: {f.volume_ml} -> {g.volume_ml}")
        if f.partial and not g.partial:
            problems.append(f"{name} partial view lost")
    for name in got.organs:
        if name not in want.organs:
            problems.append(f"{name}: not in the record -> {got.organs[name]}")
    return problems


RECORDS = 320
SEEDS_PER_RECORD = 3


def test_round_trip_report_to_parse() -> None:
    rng = random.Random(20240601)
    checked, failures = 0, []
    for index in range(RECORDS):
        attrs = random_attributes(rng)
        for seed in (None, index, 10_000 + 7 * index)[:SEEDS_PER_RECORD]:
            report = write_report(attrs, seed)
            problems = stated_differences(attrs, parse_prompt(report))
            checked += 1
            if problems:
                failures.append(f"record {index} seed {seed}:\n{report}\n  " + "\n  ".join(problems))
    assert checked >= 900
    assert not failures, f"{len(failures)}/{checked} round trips failed; first:\n" + "\n\n".join(failures[:3])


def test_round_trip_of_measured_records() -> None:
    """Records as measure_labels makes them (partial organs, grouped tumours) survive the text too."""
    volume = _synthetic_abdomen()
    attrs = measure_labels(volume).attributes
    for seed in range(20):
        assert stated_differences(attrs, parse_prompt(write_report(attrs, seed))) == []


def test_same_seed_same_text_and_seeds_vary() -> None:
    attrs = random_attributes(random.Random(5))
    assert write_report(attrs, 3) == write_report(attrs, 3)
    assert write_report(attrs) == write_report(attrs, None)
    texts = {write_report(attrs, seed) for seed in range(30)}
    assert len(texts) > 10


def test_report_states_only_known_fields() -> None:
    text = write_report(Attributes())
    assert "tumour" not in text.lower() and "male" not in text.lower() and "phase" not in text.lower()
    parsed = parse_prompt(text)
    assert parsed.tumours is None and dict(parsed.organs) == {}
    assert "No tumour" in write_report(Attributes(tumours=()))


def test_example_report_wording() -> None:
    attrs = Attributes(
        sex="male",
        age=68,
        phase="portal_venous",
        tumours=(Tumour("colon", "sigmoid", 42.0, 1),),
        organs={"spleen": OrganFinding("enlarged", "mild", 520.0, False)},
        field_of_view="abdomen_pelvis",
    )
    text = write_report(attrs)
    assert text.splitlines()[0] == "EXAMINATION: CT of the abdomen and pelvis, portal venous phase."
    assert "68-year-old man" in text
    assert "sigmoid colon" in text and "4.2 cm" in text
    assert "The spleen is mildly enlarged (520 mL)." in text
    assert "Mild splenomegaly." in text
    assert "an 8 mm" in write_report(Attributes(tumours=(Tumour("liver", None, 8.0),)))


# --------------------------------------------------------------------------------------------------
# The record itself


def test_attributes_json_round_trip() -> None:
    rng = random.Random(11)
    for _ in range(200):
        attrs = random_attributes(rng)
        again = Attributes.from_dict(json.loads(json.dumps(attrs.to_dict())))
        assert again == attrs


def test_attributes_keep_unknown_and_absent_apart() -> None:
    assert Attributes().tumours is None
    assert Attributes(tumours=[]).tumours == ()
    assert Attributes.from_dict({"tumours": []}).tumours == ()
    assert Attributes.from_dict({"tumours": None}).tumours is None


def test_attributes_are_immutable_and_validated() -> None:
    organs = {"spleen": OrganFinding("normal")}
    attrs = Attributes(organs=organs)
    organs["liver"] = OrganFinding("small")
    assert "liver" not in attrs.organs  # a private copy
    with pytest.raises(TypeError):
        attrs.organs["liver"] = OrganFinding()  # type: ignore[index]
    with pytest.raises(AttributeError):
        attrs.sex = "male"  # type: ignore[misc]
    for bad in (
        lambda: Attributes(sex="x"),  # type: ignore[arg-type]
        lambda: Attributes(age=-1),
        lambda: Attributes(age=68.5),  # type: ignore[arg-type]
        lambda: Attributes(organs={"lung": OrganFinding()}),
        lambda: Tumour("colon", "right lobe"),
        lambda: Tumour("liver", None, -3.0),
        lambda: Tumour("liver", count=0),
        lambda: OrganFinding("normal", "mild"),
        lambda: Attributes.from_dict({"colour": "red"}),
    ):
        with pytest.raises(ValueError):
            bad()


# --------------------------------------------------------------------------------------------------
# Real label maps


def _remap(volume: Volume, table: dict[int, str]) -> Volume:
    lut = np.zeros(256, dtype=np.uint8)
    for source_id, name in table.items():
        lut[source_id] = ID[name]
    return volume.with_array(lut[np.asarray(volume.array)])


def _real(relative: str) -> Volume:
    path = REAL / relative
    if not path.exists():
        pytest.skip(f"{path} not available")
    return read_nifti(path, kind="labels")


def test_totalsegmentator_example() -> None:
    labels = _remap(_real("totalseg-example-a/labels.nii.gz"), TOTALSEG)
    text, attrs = report_from_labels(labels, annotated=set(TOTALSEG.values()), seed=0)
    liver = attrs.organs["liver"]
    assert liver.volume_ml is not None and 1000.0 <= liver.volume_ml <= 2500.0
    assert liver.partial  # the liver dome touches the top slice: a lower bound, not graded small
    assert liver.state is None
    for name in ("kidney_right", "kidney_left"):
        volume = attrs.organs[name].volume_ml
        assert volume is not None and 100.0 <= volume <= 250.0
        assert attrs.organs[name].state == "normal"
    assert 150.0 <= attrs.organs["spleen"].volume_ml <= 400.0  # type: ignore[operator]
    assert attrs.tumours is None  # TotalSegmentator has no tumour class: unknown, not "no tumour"
    assert attrs.field_of_view == "abdomen_pelvis"
    lowered = text.lower()
    for word in ("liver", "spleen", "right kidney", "left kidney"):
        assert word in lowered
    assert "tumour" not in lowered and "malignancy" not in lowered
    assert stated_differences(attrs, parse_prompt(text)) == []


def test_lits_liver_tumours() -> None:
    labels = _remap(_real("lits-117-crop/labels.nii.gz"), {1: "liver", 2: "tumour"})
    text, attrs = report_from_labels(labels, annotated={"liver", "tumour"}, seed=1)
    assert attrs.tumours is not None and len(attrs.tumours) >= 1
    assert all(t.organ == "liver" for t in attrs.tumours)
    assert sum(t.count or 2 for t in attrs.tumours) >= 1
    assert attrs.organs["liver"].partial  # a 128³ crop cuts the liver on every side
    assert attrs.field_of_view == "partial"
    assert "liver" in text.lower()
    parsed = parse_prompt(text)
    assert parsed.tumours is not None and parsed.tumours[0].organ == "liver"


def test_msd_colon_tumour_without_colon_mask() -> None:
    labels = _remap(_real("masks-only/msd_colon_050_tumour.nii.gz"), {1: "tumour"})
    measured = measure_labels(labels, annotated={"tumour"})
    assert measured.lesions is not None and len(measured.lesions) == 1
    (lesion,) = measured.lesions
    assert 130.0 <= lesion.volume_ml <= 160.0  # ~145 mL
    # A 145 mL sphere would be 65 mm across; an elongated bowel tumour is longer, but not > 20 cm.
    assert 60.0 <= lesion.diameter_mm <= 200.0
    (tumour,) = measured.attributes.tumours  # type: ignore[misc]
    assert tumour.organ is None  # the colon was not annotated: host unknown
    assert dict(measured.attributes.organs) == {}  # no organ annotated: all unknown
    assert measured.attributes.field_of_view is None
    # The data set defines the host (every MSD Colon tumour is a colon primary).
    (hosted,) = measure_labels(labels, annotated={"tumour"}, tumour_host="colon").attributes.tumours  # type: ignore[misc]
    assert (hosted.organ, hosted.segment) == ("colon", None)


# --------------------------------------------------------------------------------------------------


def _synthetic_abdomen() -> Volume:
    """A small box phantom: liver (partly cut at the top), spleen, kidneys, bladder and a liver tumour."""
    array = np.zeros((60, 40, 80), dtype=np.uint8)
    array[30:55, 5:35, 50:80] = ID["liver"]  # 25*30*30 voxels at 8 µL... see affine
    array[5:15, 10:25, 55:70] = ID["spleen"]
    array[35:42, 5:12, 30:45] = ID["kidney_right"]
    array[15:22, 5:12, 30:45] = ID["kidney_left"]
    array[25:35, 20:30, 2:10] = ID["urinary_bladder"]
    array[40:45, 15:20, 60:65] = ID["tumour"]
    return Volume(array, np.diag([4.0, 4.0, 4.0, 1.0]), kind="labels")


def test_write_prompt_round_trip():
    import numpy as np

    from guidegen.text.attributes import Attributes, OrganFinding, Tumour
    from guidegen.text.parse import parse_prompt
    from guidegen.text.report import write_prompt

    attrs = Attributes(
        sex="male",
        age=68,
        tumours=(Tumour(organ="colon", segment="sigmoid", diameter_mm=40.0),),
        organs={"spleen": OrganFinding(state="enlarged", severity="mild")},
    )
    for seed in range(20):
        text = write_prompt(attrs, seed)
        assert len(text) < 200, text
        back = parse_prompt(text)
        assert back.sex == "male" and back.age == 68, text
        assert back.tumours[0].organ == "colon" and back.tumours[0].segment == "sigmoid", text
        assert abs(back.tumours[0].diameter_mm - 40.0) <= 1.0, text
        assert back.organs["spleen"].state == "enlarged" and back.organs["spleen"].severity == "mild", text
    assert parse_prompt(write_prompt(Attributes(tumours=()), 1)).tumours == ()
    assert write_prompt(Attributes()) in ("abdominal CT", "CT of the abdomen", "abdomen")
    del np
