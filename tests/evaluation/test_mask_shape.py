"""Shape features and colon continuity (`guidegen.evaluation.mask_shape`) on synthetic shapes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from guidegen.evaluation.mask_shape import (
    colon_path,
    component_count,
    landmark_mm,
    map_shapes,
    organ_shape,
    surface_area_mm2,
)
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID

SPACING = 2.0
N = 48


def _grid(spacing: float = SPACING, shape=(N, N, N)) -> Volume:
    return Volume(np.zeros(shape, np.uint8), np.diag([spacing, spacing, spacing, 1.0]), "labels")


def _polar(shape=(N, N, N), spacing: float = SPACING):
    centre = (np.asarray(shape) - 1) / 2
    d = (np.indices(shape).T - centre).T * spacing
    r = np.sqrt((d**2).sum(0))
    theta = np.arccos(np.clip(d[2] / np.maximum(r, 1e-9), -1, 1))
    phi = np.arctan2(d[1], d[0])
    return r, theta, phi


@pytest.fixture(scope="module")
def ball_and_bumpy():
    r, theta, phi = _polar()
    ball = r < 30.0
    bumpy = r < 30.0 + 6.0 * np.sin(6 * theta) * np.cos(6 * phi)  # same size, folded surface
    return ball, bumpy


def test_ball_is_smooth_and_round_a_bumpy_ball_is_not(ball_and_bumpy):
    ball, bumpy = ball_and_bumpy
    grid = _grid()
    a, b = organ_shape(ball, grid, None), organ_shape(bumpy, grid, None)
    assert a["volume_ml"] == pytest.approx(4 / 3 * math.pi * 30.0**3 / 1000, rel=0.03)
    assert a["sphericity"] > 0.88 and b["sphericity"] < a["sphericity"] - 0.15
    assert a["surface_to_volume"] == pytest.approx(3 / 30.0, rel=0.15)  # 3 / r for a ball
    assert b["surface_to_volume"] > 1.3 * a["surface_to_volume"]
    assert a["roughness_mm"] < 0.5 < 1.0 < b["roughness_mm"]
    assert a["solidity"] > 0.85 and b["solidity"] < a["solidity"] - 0.1
    assert a["components"] == b["components"] == 1
    assert a["x_mm"] is None  # no landmark given


def test_surface_area_of_a_ball_is_close_to_4_pi_r2(ball_and_bumpy):
    ball, _ = ball_and_bumpy
    # The surface elements of a voxelised ball come out ~9 % above 4πr²; counting voxel faces would
    # give ~50 % more.
    assert surface_area_mm2(ball, (SPACING,) * 3) == pytest.approx(4 * math.pi * 30.0**2, rel=0.12)
    # An organ at the grid's edge still has the surface there.
    cut = np.zeros_like(ball)
    cut[:, :, : N // 2] = ball[:, :, N // 2 :]
    assert surface_area_mm2(cut, (SPACING,) * 3) > 0.5 * 4 * math.pi * 30.0**2


def test_components_count_pieces():
    one = np.zeros((20, 20, 20), bool)
    one[2:8, 2:8, 2:8] = True
    two = one.copy()
    two[12:16, 12:16, 12:16] = True
    diagonal = one.copy()
    diagonal[8, 8, 8] = True  # touches at a corner: 26-connected, still one piece
    assert (component_count(one), component_count(two), component_count(diagonal)) == (1, 2, 1)
    assert organ_shape(two, _grid(shape=(20, 20, 20)), None)["components"] == 2
    assert component_count(np.zeros((4, 4, 4), bool)) == 0


def test_positions_are_relative_to_the_kidneys_midpoint():
    grid = _grid(4.0, (40, 30, 30))
    array = grid.array
    array[8:12, 10:14, 10:16] = ID["kidney_left"]  # RAS: low x = patient's left
    array[28:32, 10:14, 10:16] = ID["kidney_right"]
    array[20:24, 20:24, 22:26] = ID["liver"]
    landmark = landmark_mm(grid)
    assert landmark == pytest.approx(grid.world_coordinates(np.array([19.5, 11.5, 12.5])))
    shapes = map_shapes(grid).organs
    assert shapes["kidney_right"]["x_mm"] == pytest.approx(40.0)  # 10 voxels of 4 mm to the right
    assert shapes["kidney_left"]["x_mm"] == pytest.approx(-40.0)
    liver = shapes["liver"]
    assert (liver["x_mm"], liver["y_mm"], liver["z_mm"]) == pytest.approx((8.0, 40.0, 44.0))
    assert shapes["spleen"]["volume_ml"] == 0.0 and shapes["spleen"]["sphericity"] is None
    # Without both kidneys there is no landmark, so no position.
    array[array == ID["kidney_left"]] = 0
    assert landmark_mm(grid) is None and map_shapes(grid).organs["liver"]["x_mm"] is None
    # Classes a map does not annotate are left out.
    grid.meta["annotated"] = ["liver"]
    assert set(map_shapes(grid).organs) == {"liver"}


# --------------------------------------------------------------------------------------------------
# The colon: a tube along rectum → descending → transverse → ascending → caecum (RAS, mm).

#: Polyline of a colon in world mm (x: + = patient's right, z: + = superior), centred on the grid.
FRAME = [(-10, 0, -90), (-60, 0, -60), (-70, 0, 60), (-20, 10, 80), (30, 10, 75), (70, 0, 50), (65, 0, -50)]


def _tube(points, radius: float = 12.0, spacing: float = 4.0, shape=(48, 24, 56)) -> tuple[np.ndarray, Volume]:
    grid = _grid(spacing, shape)
    grid.affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing
    world = grid.world_coordinates(np.indices(shape).reshape(3, -1).T)
    inside = np.zeros(len(world), bool)
    for a, b in zip(points[:-1], points[1:]):
        a, b = np.asarray(a, float), np.asarray(b, float)
        t = np.clip((world - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
        inside |= np.linalg.norm(world - (a + t[:, None] * (b - a)), axis=1) <= radius
    return inside.reshape(shape), grid


def test_a_whole_colon_is_one_ordered_tube():
    mask, grid = _tube(FRAME)
    path = colon_path(mask, grid)
    assert path.components == 1 and path.one_piece and path.path_ordered and path.continuous, path
    # The path runs the tube's length (about 560 mm of centreline, less the rounded ends).
    assert 420 < path.path_mm < 620


def test_a_broken_colon_is_not_one_piece():
    mask, grid = _tube(FRAME)
    world_x = grid.world_coordinates(np.indices(mask.shape).reshape(3, -1).T)[:, 0].reshape(mask.shape)
    broken = mask & ~((world_x > 5) & (world_x < 20))  # a gap in the transverse colon
    path = colon_path(broken, grid)
    assert path.components == 2 and not path.one_piece and not path.continuous


def test_a_colon_that_never_crosses_to_the_right_or_lies_mirrored_is_not_ordered():
    left_only, grid = _tube(FRAME[:4])  # rectum, descending, up to the splenic flexure: no ascending colon
    path = colon_path(left_only, grid)
    assert path.one_piece and not path.path_ordered
    mirrored, grid = _tube([(-x, y, z) for x, y, z in FRAME])
    # Mirrored (caecum on the left): the right-hand end is the rectum, near the midline.
    assert not colon_path(mirrored, grid).path_ordered
    assert colon_path(np.zeros((4, 4, 4), bool), _grid(4.0, (4, 4, 4))) is None


def test_map_shapes_checks_its_arguments():
    with pytest.raises(ValueError, match="labels"):
        map_shapes(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="organs"):
        map_shapes(_grid(4.0, (4, 4, 4)), organs=("trachea",))


def test_real_maps_can_leave_out_organs_their_field_of_view_cuts():
    from guidegen.evaluation.mask_shape import CUT_SENSITIVE, is_cut
    from guidegen.labels.vocabulary import UNKNOWN

    grid = _grid(4.0, (30, 20, 30))
    array = grid.array
    array[4:8, 4:8, 10:15] = ID["kidney_left"]
    array[20:24, 4:8, 10:15] = ID["kidney_right"]
    array[14:26, 6:14, 20:30] = ID["liver"]  # reaches the top face: a dome cut by the scan
    array[2:6, 10:14, 18:22] = ID["spleen"]
    array[2:6, 10:14, 22:24] = UNKNOWN  # beyond the scan's field of view
    assert is_cut(array == ID["liver"], array) and is_cut(array == ID["spleen"], array)
    assert not is_cut(array == ID["kidney_left"], array)
    kept = map_shapes(grid, skip_cut=CUT_SENSITIVE)
    assert kept.cut == ("liver", "spleen") and "liver" not in kept.organs and "kidney_left" in kept.organs
    assert "liver" in map_shapes(grid).organs  # sampled maps: a cut organ is measured (and is a fault)
