"""Which stated fields a training example's text keeps (`guidegen.masks.examples.drop_fields`)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.examples import drop_fields
from guidegen.text.attributes import Attributes, OrganFinding, Tumour

MEASURED = Attributes(
    organs={
        "spleen": OrganFinding(state="enlarged", severity="moderate"),
        "liver": OrganFinding(state="normal"),
    },
    tumours=(Tumour(organ="liver", diameter_mm=30.0, count=1),),
)


def _kept(p_abnormal: float | None, draws: int = 400) -> dict[str, float]:
    rng = np.random.default_rng(0)
    texts = [drop_fields(MEASURED, rng, 0.35, p_abnormal) for _ in range(draws)]
    return {
        "spleen": np.mean(["spleen" in a.organs for a in texts]),
        "liver": np.mean(["liver" in a.organs for a in texts]),
        "tumour": np.mean([a.tumours is not None for a in texts]),
    }


def test_an_abnormal_organ_and_a_tumour_stay_stated_when_the_abnormal_drop_is_small():
    earlier = _kept(None)  # the earlier models' rule: an enlarged spleen unmentioned a third of the time
    assert 0.55 < earlier["spleen"] < 0.75 and 0.82 < earlier["tumour"] < 0.94
    never = _kept(0.0)
    assert never["spleen"] == 1.0 and never["tumour"] == 1.0
    assert abs(never["liver"] - earlier["liver"]) < 0.08  # normal organs: dropped as before (~70 %)
    assert never["liver"] < 0.4


def test_p_abnormal_drop_is_checked():
    with pytest.raises(ValueError, match="p_abnormal_drop"):
        MaskSamplerConfig(p_abnormal_drop=1.5)
    assert MaskSamplerConfig().p_abnormal_drop is None
