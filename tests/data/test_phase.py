"""Contrast-phase estimation (guidegen.data.phase) on the bundled scans' measured HU."""

from __future__ import annotations

import json

import pytest

from guidegen.data.phase import PhaseEstimate, estimate_phase
from guidegen.data.prepare import load_prepared, prepare
from guidegen.text.attributes import PHASES

# Mean HU inside the labels of the bundled scans (as measured on the original grids) and the phase
# each one is known / judged to be in (data/real/SOURCES.md).
TABLE = {
    "totalseg-example-a": ({"aorta": 42, "liver": 45, "spleen": 33}, "non_contrast"),
    "amos-0001-slices": ({"aorta": 48, "liver": 50, "spleen": 41}, "non_contrast"),
    "amos-0013-slices": ({"aorta": 324, "liver": 79, "spleen": 118}, "arterial"),
    "totalseg-example-b": ({"aorta": 177, "liver": 89, "spleen": 80}, "portal_venous"),
    "lits-117-crop": ({"liver": 118}, "portal_venous"),
    "msd-spleen-8": ({"spleen": 148}, "portal_venous"),
}


@pytest.mark.parametrize("case_id", sorted(TABLE))
def test_table_values_give_the_known_phase(case_id):
    mean_hu, expected = TABLE[case_id]
    estimate = estimate_phase(mean_hu)
    assert estimate.phase == expected
    assert estimate.evidence["used"] == {k: float(v) for k, v in mean_hu.items()}
    assert isinstance(estimate.evidence["rule"], str)
    json.dumps(estimate.to_dict())  # JSON-able, as stored in case.json
    # Only the aorta decides with more than low confidence; the single-organ cases are fallbacks.
    if "aorta" in mean_hu:
        assert estimate.fallback is None and estimate.confidence in ("high", "medium")
    else:
        assert estimate.fallback and estimate.confidence == "low"


def test_textbook_phases():
    assert estimate_phase({"aorta": 170, "liver": 115, "spleen": 125}).phase == "portal_venous"
    assert estimate_phase({"aorta": 170, "liver": 115}).confidence == "high"
    delayed = estimate_phase({"aorta": 125, "liver": 105, "inferior_vena_cava": 120, "urinary_bladder": 300})
    assert (delayed.phase, delayed.confidence) == ("delayed", "high")
    # Aorta ≈ liver, but the IVC is still far darker than the aorta: not equilibrium.
    assert estimate_phase({"aorta": 140, "liver": 120, "inferior_vena_cava": 60}).phase == "portal_venous"
    # Arterial from the aorta-liver gradient alone (aorta below 250 HU), and without a liver.
    assert estimate_phase({"aorta": 230, "liver": 70}).phase == "arterial"
    no_liver = estimate_phase({"aorta": 300, "inferior_vena_cava": 80})
    assert (no_liver.phase, no_liver.confidence) == ("arterial", "medium")


def test_unenhanced_aorta_edge_cases():
    # Dense liver (iron, amiodarone) with unenhanced blood and spleen: still non-contrast.
    assert estimate_phase({"aorta": 45, "liver": 110, "spleen": 45}).phase == "non_contrast"
    # Blood washing out while the organs still hold contrast: late delayed, low.
    late = estimate_phase({"aorta": 80, "liver": 100, "spleen": 105, "kidney_left": 180})
    assert (late.phase, late.confidence) == ("delayed", "low")
    # Unenhanced blood with an enhanced spleen and kidneys is contradictory.
    assert estimate_phase({"aorta": 40, "spleen": 130, "kidney_right": 180}).phase is None


@pytest.mark.parametrize(
    ("mean_hu", "phase"),
    [
        ({"spleen": 110}, "portal_venous"),  # spleen alone at the contrast floor
        ({"spleen": 109}, None),  # just below: spleen 65–110 HU fits several phases
        ({"spleen": 50}, "non_contrast"),  # unenhanced spleen (40–50 HU)
        ({"liver": 90}, "portal_venous"),  # liver alone at the contrast floor
        ({"liver": 89}, None),  # unenhanced, arterial or fatty: undecided
        ({"liver": 40}, None),
        ({"kidney_left": 30, "kidney_right": 34}, "non_contrast"),
        ({"portal_vein": 160}, "portal_venous"),
    ],
)
def test_single_organ_fallbacks(mean_hu, phase):
    estimate = estimate_phase(mean_hu)
    assert estimate.phase == phase
    assert estimate.confidence == "low" and estimate.fallback


def test_nothing_usable_gives_none_with_a_reason():
    for mean_hu in (None, {}, {"body": -50.0, "bone": 300.0, "tumour": 60.0}):
        estimate = estimate_phase(mean_hu)
        assert estimate.phase is None and estimate.confidence == "low"
        assert "no aorta" in estimate.fallback


def test_too_few_voxels_do_not_decide():
    mean_hu = {"aorta": 320.0, "liver": 75.0, "spleen": 140.0}
    assert estimate_phase(mean_hu, {"aorta": 400, "liver": 5000, "spleen": 900}).phase == "arterial"
    few = estimate_phase(mean_hu, {"aorta": 12, "liver": 5000, "spleen": 900})
    assert few.evidence["ignored"] == {"aorta": "12 voxels < 20"}
    assert "aorta" not in few.evidence["used"]
    assert (few.phase, few.confidence, few.fallback is not None) == ("portal_venous", "low", True)


def test_estimate_validates_its_fields():
    assert set(PHASES) == {"non_contrast", "arterial", "portal_venous", "delayed"}
    with pytest.raises(ValueError, match="phase"):
        PhaseEstimate("venous", "high")
    with pytest.raises(ValueError, match="confidence"):
        PhaseEstimate(None, "certain")


REAL_CASES = ("totalseg-example-a", "amos-0013-slices", "msd-spleen-8", "lits-117-crop")


def test_prepared_cases_store_the_phase(real, tmp_path):
    result = prepare([real / name for name in REAL_CASES], tmp_path, progress=False)
    assert not result.failed and set(result.prepared) == set(REAL_CASES)
    entries = {e["case_id"]: e for e in load_prepared(tmp_path)}
    for case_id in REAL_CASES:
        entry = entries[case_id]
        assert entry["phase"] == TABLE[case_id][1], (case_id, entry["phase_estimate"])
        stored = json.loads((tmp_path / "cases" / case_id / "case.json").read_text())["phase_estimate"]
        assert stored["phase"] == entry["phase"] and stored["evidence"]["rule"]
    assert entries["amos-0013-slices"]["phase_estimate"]["confidence"] == "high"
    assert entries["totalseg-example-a"]["phase_estimate"]["fallback"] is None
    assert entries["msd-spleen-8"]["phase_estimate"]["fallback"]


def test_phase_names_are_defined_once():
    from typing import get_args

    from guidegen import terms
    from guidegen.data.phase import PHASES as DATA_PHASES
    from guidegen.images.config import PHASES as MODEL_PHASES
    from guidegen.text.attributes import PHASES as TEXT_PHASES
    from guidegen.text.attributes import Phase

    assert DATA_PHASES is TEXT_PHASES is terms.PHASES
    assert MODEL_PHASES == ("unknown", *terms.PHASES)  # the image model's phase ids: 0 = unknown
    assert get_args(Phase) == terms.PHASES  # the type annotation spells them out for type checkers
