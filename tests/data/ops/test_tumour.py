"""`TumourInsertion` (`guidegen.data.ops.tumour`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from guidegen.data.ops import TumourInsertion
from guidegen.labels.vocabulary import ID
from tests.data.conftest import SOFT, SOLID, brute_diameter, counts, toy_site_of


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
        params = transform.make_params(
            np.random.default_rng(4), labels, host="colon", segment=segment, diameter_mm=30.0
        )
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
