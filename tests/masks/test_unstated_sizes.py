"""The placement stage on what a prompt does not say: organs given a normal size (``organ_sizes="all"``)
and no tumour where none is stated (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.labels.vocabulary import ID
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.sampler import apply_statements, unstated_normal
from guidegen.text.measure import REFERENCE_RANGES, measure_labels
from guidegen.text.parse import parse_prompt
from tests.sides_maps import abdomen


def _volumes(volume) -> dict[str, float]:
    return {n: f.volume_ml for n, f in measure_labels(volume).attributes.organs.items()}


def _normal(name: str, ml: float) -> bool:
    ref = REFERENCE_RANGES[name]
    return (ref.low_ml or 0.0) <= ml <= ref.high_ml


def test_unmentioned_organs_outside_their_normal_range_are_brought_into_it():
    labels = abdomen(aorta=False)  # liver 779 mL and left kidney 76 mL: small; spleen, right kidney normal
    before = _volumes(labels)
    assert not _normal("liver", before["liver"]) and not _normal("kidney_left", before["kidney_left"])
    out = apply_statements(labels, parse_prompt("normal CT of the abdomen"), seed=0, unstated=True, aorta=False)
    after = _volumes(out)
    for name in ("liver", "spleen", "kidney_right", "kidney_left"):
        assert _normal(name, after[name]), (name, after[name])
    record = out.meta["organ_sizes"]
    assert record["liver"]["stated"] == "normal (not stated)" and record["liver"]["changed"]
    # What was normal is left as drawn, voxel for voxel.
    assert not record["spleen"]["changed"]
    assert np.array_equal(out.array == ID["spleen"], labels.array == ID["spleen"])
    # Without the option (organ_sizes="scale") nothing the prompt does not state changes.
    kept = apply_statements(labels, parse_prompt("normal CT of the abdomen"), seed=0, aorta=False)
    assert kept.meta["organ_sizes"] == {} and np.array_equal(kept.array, labels.array)


@pytest.mark.parametrize(
    "prompt, left_alone",
    [
        ("small liver, cirrhosis", {"liver"}),  # stated: sized as stated, not "normal"
        ("3 cm tumour in the liver", {"liver"}),  # a tumour's host may be grown to hold it
        ("renal mass, 3 cm", {"kidney_right", "kidney_left"}),
        ("CT of the pelvis", {"liver", "spleen", "kidney_right", "kidney_left"}),  # not meant to hold them
    ],
)
def test_organs_the_prompt_changes_or_its_field_of_view_cuts_are_not_normalised(prompt, left_alone):
    chosen = set(unstated_normal(abdomen(aorta=False), parse_prompt(prompt)))
    assert not chosen & left_alone
    assert chosen or prompt == "CT of the pelvis"


def test_an_organ_cut_by_the_grid_is_not_resized():
    labels = abdomen(aorta=False)
    cut = labels.with_array(labels.array[:, :, 12:])  # the lowest 6 cm gone: the kidneys run out of the grid
    partial = {n for n, f in measure_labels(cut).attributes.organs.items() if f.partial}
    assert partial, "the crop should cut an organ"
    assert not set(unstated_normal(cut, parse_prompt("normal CT"))) & partial


def test_tumours_are_drawn_as_without_the_step():
    labels = abdomen(aorta=False)
    prompt = parse_prompt("4 cm tumour in the liver")
    with_step = apply_statements(labels, prompt, seed=3, unstated=True, aorta=False)
    without = apply_statements(labels, prompt, seed=3, aorta=False)
    assert with_step.meta["organ_sizes"]["kidney_left"]["changed"]  # something else was resized
    assert np.array_equal(with_step.array == ID["tumour"], without.array == ID["tumour"])


def test_all_is_the_default_and_a_choice_of_the_settings():
    assert MaskSamplerConfig().organ_sizes == "all"
    with pytest.raises(ValueError, match="organ_sizes"):
        MaskSamplerConfig(organ_sizes="big")


def test_a_prompt_silent_on_tumours_gets_none():
    labels = abdomen(aorta=False)
    specks = labels.array.copy()
    specks[20, 20, 20] = specks[40, 30, 10] = ID["tumour"]  # scattered voxels, as the network draws them
    drawn = labels.with_array(specks)
    out = apply_statements(drawn, parse_prompt("enlarged spleen, arterial phase"), seed=0, aorta=False)
    assert not np.any(out.array == ID["tumour"])
    assert out.meta["tumour_placement"] == {"mode": "insert", "stated": False, "removed_voxels": 2}
    # The network's own tumours stay when the stage is off.
    kept = apply_statements(drawn, parse_prompt("enlarged spleen"), seed=0, tumours=False, aorta=False)
    assert np.count_nonzero(kept.array == ID["tumour"]) == 2


def test_tumours_deferred_to_the_finer_grid_measure_as_stated_there():
    from guidegen.grids.upsample import upsample_labels
    from guidegen.masks.sampler import place_tumours_on

    coarse = abdomen(aorta=False)  # 5 mm voxels
    speck = coarse.array.copy()
    speck[20, 20, 20] = ID["tumour"]
    prompt = parse_prompt("2 cm tumour in the liver")
    sampled = apply_statements(coarse.with_array(speck), prompt, seed=0, aorta=False, defer_tumours=True)
    assert not np.any(sampled.array == ID["tumour"])  # the network's speck is gone, nothing placed yet
    assert sampled.meta["tumour_placement"] == {"mode": "insert", "stated": True, "removed_voxels": 1, "deferred": True}
    affine = coarse.affine.copy()
    affine[:3, :3] /= 2.5  # 2 mm voxels over the same extent
    affine[:3, 3] -= 0.75 * np.diag(affine)[:3]  # first centre 1.5 mm before the coarse one: same extent
    fine = upsample_labels(sampled, affine=affine, shape=tuple(int(n * 2.5) for n in coarse.shape))
    placed = place_tumours_on(fine, prompt, seed=0)
    record = placed.meta["tumour_placement"]
    assert record["grid_mm"] == [2.0, 2.0, 2.0] and all(record["agreement"].values())
    (tumour,) = measure_labels(placed).attributes.tumours
    assert tumour.organ == "liver" and abs(tumour.diameter_mm - 20.0) <= 2.5
    assert place_tumours_on(fine, parse_prompt("enlarged spleen"), seed=0) is fine  # nothing stated
    # "No tumour" needs no finer grid: the network's voxels are removed and the agreement recorded at once.
    none = apply_statements(
        coarse.with_array(speck), parse_prompt("no tumour"), seed=0, aorta=False, defer_tumours=True
    )
    assert none.meta["tumour_placement"]["agreement"] == {"tumours": True} and not np.any(none.array == ID["tumour"])


def test_an_unmentioned_organ_at_the_edge_of_its_range_is_resized_too():
    from guidegen.masks.sampler import UNSTATED_GUARD
    from tests.sides_maps import ras_affine

    labels = abdomen(aorta=False)
    array = labels.array.copy()
    array[array == ID["kidney_right"]] = ID["body"]
    index = np.stack(np.meshgrid(*(np.arange(n) for n in array.shape), indexing="ij"), axis=-1)
    world = index @ ras_affine()[:3, :3].T + ras_affine()[:3, 3]
    array[(((world - np.array([55.0, -45.0, -10.0])) / np.array([25.0, 22.0, 44.0])) ** 2).sum(-1) <= 1.0] = ID[
        "kidney_right"
    ]
    edge = labels.with_array(array)
    low = REFERENCE_RANGES["kidney_right"].low_ml
    before = _volumes(edge)["kidney_right"]
    assert low <= before < low * (1 + UNSTATED_GUARD)  # normal, but by less than the guard
    out = apply_statements(edge, parse_prompt("normal CT of the abdomen"), seed=0, unstated=True, aorta=False)
    assert out.meta["organ_sizes"]["kidney_right"]["changed"]
    assert _volumes(out)["kidney_right"] >= low * (1 + UNSTATED_GUARD)
