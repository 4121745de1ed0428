"""Longest diameter of a voxel set in world millimetres (guidegen.grids.geometry)."""

from __future__ import annotations

import numpy as np
import pytest

from guidegen.grids.geometry import longest_diameter_mm


def ball(shape: tuple[int, int, int], centre_mm, radius_mm: float, spacing) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    dist2 = sum(((grid[i] * spacing[i]) - centre_mm[i]) ** 2 for i in range(3))
    return dist2 <= radius_mm**2


def test_sphere_diameter() -> None:
    spacing = (1.0, 1.0, 1.0)
    mask = ball((40, 40, 40), (20.0, 20.0, 20.0), 10.0, spacing)
    assert longest_diameter_mm(np.argwhere(mask), np.diag([*spacing, 1.0])) == pytest.approx(20.0, abs=0.5)


def test_box_diameter_with_anisotropic_voxels() -> None:
    # 10 × 20 × 5 voxels of 0.5 × 0.5 × 3 mm: corner voxel centres 4.5 × 9.5 × 12 mm apart.
    points = np.argwhere(np.ones((10, 20, 5), bool))
    expected = float(np.sqrt(4.5**2 + 9.5**2 + 12.0**2))
    assert longest_diameter_mm(points, np.diag([0.5, 0.5, 3.0, 1.0])) == pytest.approx(expected)
    # Rotated / sheared grids: world coordinates, not indices.
    affine = np.array([[0.0, 2.0, 0.0, 5.0], [-2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0], [0, 0, 0, 1]])
    assert longest_diameter_mm(np.array([[0, 0, 0], [3, 4, 0]]), affine) == pytest.approx(10.0)
    assert longest_diameter_mm(np.array([[3, 3, 3]]), np.diag([0.5, 0.5, 3.0, 1.0])) == pytest.approx(3.0)
    assert longest_diameter_mm(np.zeros((0, 3)), np.eye(4)) == 0.0
