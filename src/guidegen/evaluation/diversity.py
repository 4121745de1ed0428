"""Diversity of generated cases of one prompt: MS-SSIM between their CTs and Dice between their label maps.

Samples of one prompt should differ: identical samples give MS-SSIM 1 and Dice 1, unrelated
anatomy gives low values. Lower is more diverse (as in the GuideGen and MAISI evaluations).

* **MS-SSIM** (Wang et al. 2003, "Multiscale structural similarity for image quality
  assessment") of every pair of CTs of a prompt, on 2-D axial slices, with MONAI's
  `MultiScaleSSIMMetric`. CTs are mapped with the fixed HU window of
  `guidegen.evaluation.cases.normalise_hu` ([-1024, 2000] HU → [-1, 1]), so ``data_range = 2``.
  Each scale halves the slice, and MONAI requires ``side // (scales − 1)² > kernel_size − 1``;
  the standard five scales with an 11-pixel kernel need slices over 160 px. We keep the 11-pixel
  Gaussian kernel (σ = 1.5) and use the largest number of scales (≤ 5) that both MONAI's check and
  the image (``side / 2^(scales−1) ≥ kernel_size``) allow, with the first standard weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) renormalised to sum 1: 4 scales at 128², 2 at 32².
  Only axial slices in which either case has a known non-background label are compared, so that
  empty air slices do not inflate the score. Pairs on different grid shapes are skipped.
* **Label Dice**: mean pairwise Dice over organ classes
  (`guidegen.evaluation.masks.diversity`, unknown voxels ignored).

Cases are grouped by the ``"prompt"`` of their ``case.json``; cases without one form one group
(``None``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from guidegen.evaluation.cases import HU_RANGE, EvalCase, normalise_hu
from guidegen.evaluation.masks import diversity as label_diversity
from guidegen.labels.vocabulary import UNKNOWN

__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim_scales", "group_by_prompt", "ms_ssim", "prompt_diversity"]

#: Wang et al.'s five scale weights, finest first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL_SIZE = 11


def ms_ssim_scales(shape: Sequence[int], kernel_size: int = KERNEL_SIZE) -> tuple[float, ...]:
    """The MS-SSIM weights usable for 2-D images of ``shape`` (see the module docstring).

    Raises:
        ValueError: the image is too small even for one scale (side ≤ kernel_size − 1).
    """
    side = int(min(shape))
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if side // max(1, scales - 1) ** 2 > kernel_size - 1 and side / 2 ** (scales - 1) >= kernel_size:
            weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
            return tuple(float(w) for w in weights / weights.sum())
    raise ValueError(f"slices of shape {tuple(shape)} are too small for MS-SSIM with a {kernel_size}-pixel kernel")


def group_by_prompt(cases: Sequence[EvalCase]) -> dict[str | None, list[EvalCase]]:
    """Cases grouped by their ``case.json`` prompt (``None``: no prompt recorded), in input order."""
    groups: dict[str | None, list[EvalCase]] = {}
    for case in cases:
        groups.setdefault(case.prompt, []).append(case)
    return groups


def _compared_slices(a: EvalCase, b: EvalCase) -> np.ndarray:
    def content(case: EvalCase) -> np.ndarray:
        labels = case.labels.array
        return ((labels != 0) & (labels != UNKNOWN)).any(axis=(0, 1))

    return np.flatnonzero(content(a) | content(b))


def ms_ssim(a: EvalCase, b: EvalCase, kernel_size: int = KERNEL_SIZE, batch_size: int = 64) -> float | None:
    """Mean MS-SSIM over the axial slices of two CTs on one grid shape (None: no slice to compare).

    Raises:
        ValueError: different shapes, or slices too small for MS-SSIM.
    """
    from monai.metrics import MultiScaleSSIMMetric

    if a.ct.shape != b.ct.shape:
        raise ValueError(f"cases {a.case_id} and {b.case_id} have different shapes {a.ct.shape} and {b.ct.shape}")
    z = _compared_slices(a, b)
    if z.size == 0:
        return None
    low, high = HU_RANGE
    metric = MultiScaleSSIMMetric(
        spatial_dims=2, data_range=2.0, kernel_size=kernel_size, weights=ms_ssim_scales(a.ct.shape[:2], kernel_size)
    )
    values = []
    with torch.no_grad():
        for start in range(0, z.size, batch_size):
            idx = z[start : start + batch_size]
            x = torch.from_numpy(np.moveaxis(normalise_hu(a.ct.array[:, :, idx], (low, high)), 2, 0))[:, None]
            y = torch.from_numpy(np.moveaxis(normalise_hu(b.ct.array[:, :, idx], (low, high)), 2, 0))[:, None]
            values.append(metric(x, y).reshape(-1).double().numpy())
    return float(np.concatenate(values).mean())


def prompt_diversity(cases: Sequence[EvalCase], max_pairs: int | None = None, kernel_size: int = KERNEL_SIZE) -> dict:
    """MS-SSIM and label Dice between the generated cases of each prompt.

    Args:
        cases: generated cases (grouped by `group_by_prompt`).
        max_pairs: compare at most this many pairs per prompt (the first ones in order); None: all.

    Returns:
        ``{"prompts": [{"prompt", "cases", "pairs", "skipped_pairs", "ms_ssim", "label_dice"}],
        "ms_ssim": mean over prompts, "label_dice": mean over prompts}``; a value is ``None``
        when a prompt has fewer than two comparable cases.
    """
    results = []
    for prompt, group in group_by_prompt(cases).items():
        pairs = list(itertools.combinations(range(len(group)), 2))
        if max_pairs is not None:
            pairs = pairs[:max_pairs]
        scores, skipped, dices = [], 0, []
        for i, j in pairs:
            if group[i].ct.shape != group[j].ct.shape:
                skipped += 1
                continue
            value = ms_ssim(group[i], group[j], kernel_size)
            if value is not None:
                scores.append(value)
            dice = label_diversity([group[i].labels.array, group[j].labels.array])
            if dice is not None:
                dices.append(dice)
        results.append(
            {
                "prompt": prompt,
                "cases": len(group),
                "pairs": len(pairs) - skipped,
                "skipped_pairs": skipped,
                "ms_ssim": float(np.mean(scores)) if scores else None,
                "label_dice": float(np.mean(dices)) if dices else None,
            }
        )

    def mean(key: str) -> float | None:
        values = [r[key] for r in results if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {"prompts": results, "ms_ssim": mean("ms_ssim"), "label_dice": mean("label_dice")}
