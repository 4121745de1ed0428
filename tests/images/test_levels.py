from __future__ import annotations

import numpy as np
import pytest

from guidegen.data.phase import PHASES
from guidegen.images.grain import interior
from guidegen.images.levels import (
    SOLID_TUMOUR_FLOOR_HU,
    UNENHANCED_AORTA_HU,
    calibrate_levels,
    tumour_host,
    tumour_hu,
)
from guidegen.labels.vocabulary import ID

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def _case(host: str = "liver"):
    """A host block with a 16 mm ball of tumour drawn 30 HU darker, and a 20 mm aorta with a bright core."""
    shape = (100, 100, 16)
    labels = np.full(shape, ID["body"], np.uint8)
    labels[10:70, 10:90, :] = ID[host]
    idx = np.indices(shape).astype(float)
    r = np.sqrt(((idx[0] - 40) * 0.8) ** 2 + ((idx[1] - 50) * 0.8) ** 2 + ((idx[2] - 8) * 2.5) ** 2)
    labels[r < 8.0] = ID["tumour"]
    rho = np.sqrt(((idx[0] - 85) * 0.8) ** 2 + ((idx[1] - 50) * 0.8) ** 2)
    labels[rho < 10.0] = ID["aorta"]
    hu = np.full(shape, -80.0, np.float32)
    hu[labels == ID[host]] = 60.0
    hu[labels == ID["tumour"]] = 30.0 + 3.0 * np.sin(idx[0] / 2)[labels == ID["tumour"]]  # with a pattern of its own
    hu[labels == ID["aorta"]] = (75.0 - 4.0 * rho)[labels == ID["aorta"]]  # bright core, dark rim
    return hu, labels


def test_tumour_levels_follow_host_and_phase():
    liver = [tumour_hu("liver", p) for p in PHASES]
    assert liver[0] == pytest.approx(42.6)  # unenhanced carcinoma (Oto et al. 2003)
    # Portal venous at the enhancement fraction of the real LiTS tumour; darker than the liver throughout.
    assert tumour_hu("liver", "portal_venous") == pytest.approx(61.7 - 0.29 * (121.9 - 115.0), abs=1.0)
    assert liver[2] > liver[1] > liver[0] and liver[2] > liver[3]
    assert tumour_hu("colon", "portal_venous") == pytest.approx(90.7)
    with pytest.raises(ValueError, match="host"):
        tumour_hu("spleen", "arterial")


def test_calibration_sets_the_tumour_and_leaves_the_rest():
    hu, labels = _case()
    for phase in ("non_contrast", "portal_venous"):
        out, record = calibrate_levels(hu, labels, AFFINE, phase)
        tumour = labels == ID["tumour"]
        inner = interior(tumour, (0.8, 0.8, 2.5), 2.0)
        assert out[inner].mean() == pytest.approx(tumour_hu("liver", phase), abs=0.1)
        assert np.allclose(out[tumour] - hu[tumour], out[tumour][0] - hu[tumour][0])  # a shift: its pattern kept
        rest = ~tumour & (labels != ID["aorta"])
        if phase == "portal_venous":  # the 60 HU liver is below 100-130: moved into range (tested below)
            assert list(record["organs"]) == ["liver"]
            rest &= labels != ID["liver"]
        assert np.array_equal(out[rest], hu[rest])
        assert record["tumours"][0]["host"] == "liver"
    assert record["aorta"] is None  # only the unenhanced aorta is flattened


def test_unenhanced_aorta_is_flattened_to_real_blood():
    hu, labels = _case()
    out, record = calibrate_levels(hu, labels, AFFINE, "non_contrast")
    aorta = labels == ID["aorta"]
    assert out[aorta].mean() == pytest.approx(UNENHANCED_AORTA_HU, abs=1.5)
    assert out[aorta].std() < 3.0 < hu[aorta].std()  # the rim-to-core profile is gone
    assert record["aorta"]["target_hu"] == pytest.approx(40.6)


def test_unknown_phase_is_estimated_and_hosts_without_a_level_keep_a_soft_tissue_tumour():
    hu, labels = _case(host="spleen")
    tumour = labels == ID["tumour"]
    hu[tumour] += 40.0  # 70 HU: soft tissue, left as the network drew it
    out, record = calibrate_levels(hu, labels, AFFINE, None)
    assert record["phase_estimated"]
    assert record["tumours"][0]["host"] == "spleen" and "left" in record["tumours"][0]
    assert np.array_equal(out[tumour], hu[tumour])
    # Drawn at −20 HU (fat or water, as the network drew kidney and pancreas tumours): raised, as a
    # whole, to the soft-tissue floor.
    hu[tumour] -= 90.0
    out, record = calibrate_levels(hu, labels, AFFINE, None)
    inner = interior(tumour, (0.8, 0.8, 2.5), 2.0)
    assert out[inner].mean() == pytest.approx(SOLID_TUMOUR_FLOOR_HU, abs=0.1)
    assert np.allclose(out[tumour] - hu[tumour], out[tumour][0] - hu[tumour][0])
    assert record["tumours"][0]["rule"] == "soft-tissue floor"
    floating = np.zeros((20, 20, 5), np.uint8)
    floating[8:12, 8:12, 1:4] = ID["tumour"]
    assert tumour_host(floating, floating == ID["tumour"]) is None


def test_portal_vein_takes_its_phase_level_and_muscle_drawn_as_body_the_real_muscle_level():
    from guidegen.data.phase import VESSEL_TYPICAL_HU
    from guidegen.images.levels import MUSCLE_HU

    hu, labels = _case()
    labels[75:80, 20:30, :] = ID["portal_vein"]
    hu[labels == ID["portal_vein"]] = 75.0  # as the shipped generator draws it in every phase
    muscle = np.zeros(labels.shape, bool)
    muscle[90:98, 5:30, :] = True  # muscle drawn as body (-80 HU here)
    for phase in ("non_contrast", "portal_venous"):
        out, record = calibrate_levels(hu, labels, AFFINE, phase, muscle=muscle)
        portal = labels == ID["portal_vein"]
        assert out[portal].mean() == pytest.approx(VESSEL_TYPICAL_HU[phase]["portal_vein"], abs=1.0)
        assert record["portal_vein"]["before_hu"] == pytest.approx(75.0)
        assert out[muscle].mean() == pytest.approx(MUSCLE_HU, abs=1.0)
        assert record["muscle"] == {"before_hu": -80.0, "target_hu": round(MUSCLE_HU, 1)}
        untouched = ~portal & ~muscle & (labels != ID["aorta"]) & (labels != ID["tumour"]) & (labels != ID["liver"])
        assert np.array_equal(out[untouched], hu[untouched])
    assert calibrate_levels(hu, labels, AFFINE, "arterial")[1]["muscle"] is None  # no mask given


def test_a_voxel_touching_the_tumour_at_an_edge_is_part_of_it():
    # The demo case had a 402-voxel colon tumour plus one voxel meeting it at an edge: the report
    # counted one tumour, the level step two.
    from scipy import ndimage

    hu, labels = _case()
    tumour = labels == ID["tumour"]
    edge_only = ndimage.binary_dilation(tumour, np.ones((3, 3, 3), bool)) & ~ndimage.binary_dilation(tumour)
    labels[tuple(np.argwhere(edge_only)[0])] = ID["tumour"]  # touches the ball at an edge or corner only
    _, record = calibrate_levels(hu, labels, AFFINE, "portal_venous")
    assert len(record["tumours"]) == 1


def test_bone_depth_counts_from_the_border_between_voxel_centres():
    from guidegen.images.levels import bone_depth

    mask = np.zeros((9, 9, 2), bool)
    mask[2:7, 2:7, 0] = True  # a 5 × 5 block in slice 0 only: depth is in-plane
    for spacing, border, centre in (((3.0, 3.0, 3.0), 1.5, 7.5), ((1.5, 1.5, 5.0), 0.75, 3.75)):
        depth = bone_depth(mask, spacing)
        assert depth[2, 4, 0] == pytest.approx(border) and depth[4, 4, 0] == pytest.approx(centre)
        assert not depth[~mask].any()


def test_bone_takes_real_bone_by_depth_keeping_its_fine_detail_in_any_phase():
    # The network draws bone as one smooth ~160 HU level; real bone is a bright cortex around
    # darker marrow (docs/results/bone_profile.txt).
    from guidegen.images.levels import bone_depth, bone_profile_hu

    hu, labels = _case()
    labels[:, 92:, :] = ID["bone"]  # a 6.4 mm wide bar along x
    labels[72:98, 60:90, :] = ID["bone"]  # a 20.8 × 24 mm block
    bone = labels == ID["bone"]
    checker = np.where(np.indices(hu.shape).sum(axis=0) % 2 == 0, 15.0, -15.0)
    hu[bone] = (160.0 + checker)[bone]
    hu[:3, 92:, :] = -1024.0  # outside the model's field of view: air, left as it is
    depth = bone_depth(bone, (0.8, 0.8, 2.5))
    profile = bone_profile_hu(depth, (0.8, 0.8, 2.5))
    drawn = bone & (hu > -500)
    for phase in ("non_contrast", "arterial", None):
        out, record = calibrate_levels(hu, labels, AFFINE, phase)
        border, deep = drawn & (depth < 1.0), drawn & (depth > 6.0)
        assert out[border].mean() == pytest.approx(profile[border].mean(), abs=5.0) and out[border].mean() > 300
        assert out[deep].mean() == pytest.approx(profile[deep].mean(), abs=5.0) and out[deep].mean() < 220
        detail = out[drawn] - profile[drawn]
        assert np.corrcoef(detail, checker[drawn])[0, 1] > 0.9  # the network's own fine detail stays
        assert record["bone"]["before_hu"] == pytest.approx(160.0, abs=0.5)
        assert record["bone"]["after_hu"] == pytest.approx(out[drawn].mean(), abs=0.1)
        assert record["bone"]["left_as_air"] == np.count_nonzero(bone & ~drawn) > 0
        others = (labels == ID["liver"]) | (labels == ID["body"]) | (bone & ~drawn)
        assert np.array_equal(out[others], hu[others])


def test_bone_profile_follows_the_grid_voxel_size():
    # On a coarser grid a border voxel averages cortex with what lies around it: darker.
    from guidegen.images.levels import BONE_PROFILES, bone_profile_hu

    (fine, fine_mm, fine_hu), (coarse, coarse_mm, coarse_hu) = BONE_PROFILES
    depth = np.array([1.5, 5.0])
    assert np.allclose(bone_profile_hu(depth, (0.7, 0.7, 5.0)), np.interp(depth, fine_mm, fine_hu))
    assert np.allclose(bone_profile_hu(depth, (fine, fine, 3.0)), np.interp(depth, fine_mm, fine_hu))
    assert np.allclose(bone_profile_hu(depth, (4.0, 4.0, 4.0)), np.interp(depth, coarse_mm, coarse_hu))
    halfway = bone_profile_hu(depth, ((fine + coarse) / 2, 3.0, 3.0))
    expected = (np.interp(depth, fine_mm, fine_hu) + np.interp(depth, coarse_mm, coarse_hu)) / 2
    assert np.allclose(halfway, expected)
    assert bone_profile_hu(np.array([1.5]), (3.0, 3.0, 3.0))[0] < bone_profile_hu(np.array([1.5]), (1.5, 1.5, 1.5))[0]


def test_organs_outside_their_phase_range_are_moved_just_inside_it_as_a_whole():
    from guidegen.data.phase import PUBLISHED_RANGE_HU
    from guidegen.images.levels import RANGE_INSET_HU

    hu, labels = _case()  # liver block at 60 HU, tumour ball inside it
    labels[75:98, 5:30, :] = ID["spleen"]
    spleen = labels == ID["spleen"]
    hu[spleen] = (-12.0 + 4.0 * np.sin(np.indices(hu.shape)[0] / 2.0))[spleen]  # the network's dark unenhanced spleen
    liver = labels == ID["liver"]
    out, record = calibrate_levels(hu, labels, AFFINE, "non_contrast")
    low, _ = PUBLISHED_RANGE_HU["non_contrast"]["spleen"]
    inner = interior(spleen, (0.8, 0.8, 2.5))
    assert out[inner].mean() == pytest.approx(low + RANGE_INSET_HU, abs=0.01)
    assert np.allclose(out[spleen] - hu[spleen], out[spleen][0] - hu[spleen][0])  # a shift: its pattern kept
    assert np.array_equal(out[liver], hu[liver])  # 60 HU: inside 45-65, left as drawn
    assert set(record["organs"]) == {"spleen"} and record["organs"]["spleen"]["before_hu"] < 0
    # Portal venous: the 60 HU liver is now below 100-130 and moves up; a bright spleen moves down.
    hu[spleen] += 200.0
    out, record = calibrate_levels(hu, labels, AFFINE, "portal_venous")
    liver_low, _ = PUBLISHED_RANGE_HU["portal_venous"]["liver"]
    _, spleen_high = PUBLISHED_RANGE_HU["portal_venous"]["spleen"]
    assert out[interior(liver, (0.8, 0.8, 2.5))].mean() == pytest.approx(liver_low + RANGE_INSET_HU, abs=0.01)
    assert out[inner].mean() == pytest.approx(spleen_high - RANGE_INSET_HU, abs=0.01)


def test_an_unenhanced_pancreas_is_kept_in_range_and_an_unenhanced_ivc_is_blood():
    from guidegen.data.phase import PUBLISHED_RANGE_HU
    from guidegen.images.levels import RANGE_INSET_HU

    hu, labels = _case()
    labels[75:98, 5:30, :] = ID["pancreas"]
    labels[2:8, 40:60, :] = ID["inferior_vena_cava"]
    pancreas, ivc = labels == ID["pancreas"], labels == ID["inferior_vena_cava"]
    hu[pancreas], hu[ivc] = 85.0, 58.0  # as the network drew them on the held-out unenhanced map
    out, record = calibrate_levels(hu, labels, AFFINE, "non_contrast")
    _, high = PUBLISHED_RANGE_HU["non_contrast"]["pancreas"]
    assert out[pancreas].mean() == pytest.approx(high - RANGE_INSET_HU, abs=0.01)
    assert out[ivc].mean() == pytest.approx(UNENHANCED_AORTA_HU, abs=0.5)
    assert record["inferior_vena_cava"]["before_hu"] == pytest.approx(58.0)
    # Enhanced phases: the pancreas has no range there, and the IVC carries contrast.
    out, record = calibrate_levels(hu, labels, AFFINE, "portal_venous")
    assert np.array_equal(out[pancreas], hu[pancreas]) and np.array_equal(out[ivc], hu[ivc])
    assert "pancreas" not in record["organs"] and record["inferior_vena_cava"] is None
