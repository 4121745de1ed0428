"""Joining a regenerated region to the real CT around it without a step (issue 25).

The image generator draws an edit at its own idea of each tissue's level, which can differ from
this patient's (a liver drawn at 60 HU in a scan whose liver is 44 HU), and a blend over the margin
only spreads such a step over a few voxels. Poisson image editing (Pérez, Gangnet & Blake,
"Poisson image editing", SIGGRAPH 2003, seamless cloning) removes it instead: keep the generated
image's gradients inside the region and take its boundary values from the real scan. With
``f = g + o`` (``g`` the generated CT, ``o`` an offset field) this is the membrane problem

    minimise  Σ_inner pairs (o_v − o_w)² / h²  +  Σ_border pairs (o_v − (r_u − g_u))² / h²

over the region's voxels v, w, where a border pair joins a region voxel v to a face neighbour u
outside the region (``r`` the real CT) and ``h`` is the pair's spacing in mm (a harmonic field in
millimetres, not in voxels, on anisotropic grids). Its solution is the harmonic extension into the
region of the level mismatch ``r − g`` on its border.

Made tissue-aware:

* **per tissue**: pairs join voxels of the same label only, so the liver's offset is set by the
  liver around it, not by the fat or the gas beside it (the membrane has free, Neumann, borders
  between tissues);
* **gas left alone**: pairs with gas (below `GAS_HU`) on either side in either image carry no
  level: gas beside bowel wall is not an offset to be spread into tissue;
* **tumours keep their contrast**: a new tumour whose level was already set from real tumours
  (`guidegen.images.levels`) gets no offset; one left at the network's level joins its host's
  membrane and moves with its host;
* a voxel the membrane cannot reach (no border pair of its tissue) keeps offset ~0 (a small
  screening term makes the system definite).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

__all__ = ["GAS_HU", "HOLLOW_CLASSES", "level_offset"]

#: Below this HU a voxel is gas (bowel, lung, stomach): it has no tissue level to match.
GAS_HU = -300.0
#: Hollow organs: gas, contents and wall in patterns of their own scan; an edit keeps their
#: unchanged voxels real (`guidegen.images.inpaint`), since no level offset joins a generated
#: lumen to a real one.
HOLLOW_CLASSES: tuple[str, ...] = ("stomach", "small_bowel", "duodenum", "colon")
#: Weight of the screening term (per mm⁻²) that pins unreachable voxels to no offset.
_SCREEN = 1e-4


def level_offset(
    generated: np.ndarray,
    real: np.ndarray,
    labels: np.ndarray,
    region: np.ndarray,
    spacing: Sequence[float],
    *,
    fixed: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """The offset field (HU) that joins ``generated`` to ``real`` on the region's border (module docstring).

    Args:
        generated: (X, Y, Z) generated CT in HU over a box that holds the region and at least one
            voxel around it where the array allows (the generator's drawing, also just outside).
        real: (X, Y, Z) real CT in HU on the same box.
        labels: (X, Y, Z) label ids of the membrane: pairs join equal ids only.
        region: (X, Y, Z) bool, the voxels to solve for.
        spacing: voxel size (mm) along the three axes.
        fixed: (X, Y, Z) bool, voxels that get no offset (tumours whose level is already set).

    Returns:
        (offset, record): float32 (X, Y, Z) offset, 0 outside ``region`` and on ``fixed``; the
        record holds the number of unknowns and border pairs and the solver's iterations.
    """
    shape = region.shape
    for name, array in (("generated", generated), ("real", real), ("labels", labels)):
        if array.shape != shape:
            raise ValueError(f"{name} must have the region's shape {shape}, got {array.shape}")
    fixed = np.zeros(shape, bool) if fixed is None else fixed
    if fixed.shape != shape:
        raise ValueError(f"fixed must have the region's shape {shape}, got {fixed.shape}")
    spacing = tuple(float(s) for s in spacing)
    offset = np.zeros(shape, np.float32)
    solve = region & ~fixed
    count = int(solve.sum())
    if count == 0:
        return offset, {"unknowns": 0, "border_pairs": 0, "iterations": 0}
    index = np.full(shape, -1, np.int64)
    index[solve] = np.arange(count)
    gas = (real < GAS_HU) | (generated < GAS_HU)
    target = (real - generated).astype(np.float64)
    rows, cols, weights = [], [], []
    diagonal = np.full(count, _SCREEN)
    rhs = np.zeros(count)
    border_pairs = 0
    for axis in range(3):
        w = 1.0 / spacing[axis] ** 2
        for near, far in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis], b[axis] = near, far
            a, b = tuple(a), tuple(b)
            same = (labels[a] == labels[b]) & ~gas[a] & ~gas[b]
            # Inner pairs (each counted from both ends: the Laplacian's off-diagonals).
            inner = solve[a] & solve[b] & same
            ia, ib = index[a][inner], index[b][inner]
            rows.append(ia)
            cols.append(ib)
            weights.append(np.full(ia.size, -w))
            np.add.at(diagonal, ia, w)
            # Border pairs: v in the region, u outside it (fixed voxels are not outside).
            border = solve[a] & ~region[b] & same
            iv = index[a][border]
            np.add.at(diagonal, iv, w)
            np.add.at(rhs, iv, w * target[b][border])
            border_pairs += int(iv.size)
    matrix = sparse.coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(count, count)
    ).tocsr() + sparse.diags(diagonal)
    iterations = 0

    def counted(_):
        nonlocal iterations
        iterations += 1

    # Symmetric positive definite (a graph Laplacian plus border and screening terms): conjugate
    # gradients with a Jacobi preconditioner.
    preconditioner = sparse.diags(1.0 / diagonal)
    values, info = cg(matrix, rhs, M=preconditioner, rtol=1e-5, atol=0.0, maxiter=3000, callback=counted)
    if info < 0:
        raise RuntimeError(f"the seam's offset field did not solve (cg info {info})")
    offset[solve] = values.astype(np.float32)
    return offset, {"unknowns": count, "border_pairs": border_pairs, "iterations": iterations, "converged": info == 0}
