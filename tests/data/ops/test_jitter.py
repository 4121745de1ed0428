"""`RigidJitter` (`guidegen.data.ops.jitter`)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.data.ops import MAX_JITTER_DEGREES, JitterParams, RigidJitter, rotation_matrix
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, UNKNOWN
from tests.data.conftest import centroid_x


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
    transform = RigidJitter(max_rotation_deg=MAX_JITTER_DEGREES, max_translation_mm=10.0)  # the worst allowed
    for seed in range(20):
        params = transform.make_params(np.random.default_rng(seed), simple)
        assert np.linalg.det(rotation_matrix(params.rotation_deg)) == pytest.approx(1.0)
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
