"""`evaluate`: the whole evaluation suite on a folder of generated cases against real ones.

Writes, atomically (the folder appears complete or not at all)::

    OUT/metrics.json        every number below, JSON
    OUT/report.md           the headline numbers as tables, with the notes
    OUT/hu_histograms.png   organ-wise HU distributions, generated vs real
    OUT/montage.png         axial slices of generated and real cases
    OUT/dice.png            alignment Dice per organ: generated vs the held-out real ceiling
    OUT/judge/              the segmentation judge (checkpoint; reuse it with judge=Judge.load(...))

Metrics (see each module):

* realism (`guidegen.evaluation.realism`): organ-wise HU mean / std / Wasserstein-1; Fréchet
  distances of 2.5-D features from **the judge's encoder**, a network we train here on the real
  cases (no ImageNet network, nothing downloaded), so its values compare runs evaluated with the
  same judge and are not comparable with published FIDs; the ASTRA I3D encoder's 3-D Fréchet
  distance in addition when its package is installed; z-consistency of adjacent slices.
* alignment (`guidegen.evaluation.alignment`): the judge's Dice on generated cases, and on
  held-out real cases as the ceiling (at least one real case is kept out of the judge's training
  when there are two or more; with one real case there is no ceiling, which the report says).
* diversity (`guidegen.evaluation.diversity`): MS-SSIM and label Dice between cases of a prompt.

The judge runs on the grid it was trained at: generated and real cases should share one voxel
size (the prepared grid); the report warns when they do not.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guidegen.errors import InputError
from guidegen.evaluation.alignment import Judge, JudgeConfig, alignment_dice, train_judge
from guidegen.evaluation.cases import EvalCase, load_cases
from guidegen.evaluation.diversity import prompt_diversity
from guidegen.evaluation.realism import (
    ASTRA_SPACING,
    HU_BINS,
    SliceFeatureExtractor,
    SubvolumeFeatureExtractor,
    frechet_distances,
    hu_histograms,
    intensity_statistics,
    load_astra_i3d_encoder,
    z_consistency,
)
from guidegen.io.atomic import atomic_dir, check_writable
from guidegen.io.volume import HU_MIN
from guidegen.labels.vocabulary import NAMES, UNKNOWN

__all__ = ["evaluate", "split_holdout", "render_markdown"]

METRICS = "metrics.json"
REPORT = "report.md"
#: Abdominal soft-tissue window (level 40, width 400 HU) for the montage.
WINDOW = (-160.0, 240.0)


def split_holdout(cases: Sequence[EvalCase], fraction: float, seed: int) -> tuple[list[EvalCase], list[EvalCase]]:
    """(training, held-out) real cases: ``max(1, round(fraction · n))`` held out when n ≥ 2, none when n = 1."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {fraction}")
    n = len(cases)
    if n < 2:
        return list(cases), []
    held = min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    out = set(order[:held].tolist())
    return [c for i, c in enumerate(cases) if i not in out], [c for i, c in enumerate(cases) if i in out]


def evaluate(
    generated_dir: str | Path,
    real_dir: str | Path,
    out_dir: str | Path,
    judge: Judge | str | Path | None = None,
    judge_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    judge_config: JudgeConfig | None = None,
    holdout_fraction: float = 0.2,
    fid_step: int = 2,
    astra: bool = True,
    max_pairs: int | None = None,
) -> dict:
    """Run the evaluation suite and write ``out_dir`` (see the module docstring).

    Args:
        generated_dir: generated cases (folders with ct.nii.gz + labels.nii.gz, optional case.json
            with "prompt").
        real_dir: real cases, a cases folder or a ``guidegen prepare`` output.
        out_dir: output folder; refused if it exists unless ``overwrite``.
        judge: a trained `Judge` or the folder of a saved one; None trains one on the real cases
            (minus the held-out ones) for ``judge_steps`` steps with ``judge_config``.
        judge_steps: training steps of the judge (≈0.2 s each at 128², batch 8, on one CPU core).
        seed: seeds the held-out split and the judge's training.
        progress: print the stages and a training bar.
        holdout_fraction: share of real cases kept out of the judge's training for the ceiling.
        fid_step: use every ``fid_step``-th slice of each plane for the 2.5-D Fréchet distance.
        astra: also compute the ASTRA encoder's Fréchet distance when the package is installed.
        max_pairs: at most this many pairs per prompt for diversity (None: all).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is False (checked before any work).
        InputError: unreadable or missing cases, or a bad saved judge.
    """
    started = time.perf_counter()
    out_dir = check_writable(out_dir, overwrite)
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    notes: list[str] = []

    console.print("[bold]evaluate[/] loading cases")
    generated = load_cases(generated_dir)
    real = load_cases(real_dir)
    spacing_gen = np.mean([c.ct.spacing for c in generated], axis=0)
    spacing_real = np.mean([c.ct.spacing for c in real], axis=0)
    if not np.allclose(spacing_gen, spacing_real, rtol=0.02):
        notes.append(
            f"Generated voxel size {_mm(spacing_gen)} differs from the real one {_mm(spacing_real)}: the judge "
            "and the z-consistency assume one grid, so alignment and z-consistency are not comparable."
        )

    console.print("[bold]evaluate[/] organ intensities and z-consistency")
    hist_gen, hist_real = hu_histograms(generated), hu_histograms(real)
    intensity = intensity_statistics(hist_gen, hist_real)
    zc = z_consistency(generated, real)

    train_cases, held_out = split_holdout(real, holdout_fraction, seed)
    if isinstance(judge, (str, Path)):
        judge_info: dict[str, Any] = {"source": str(judge)}
        judge = Judge.load(judge)
        held_out = list(real)
        notes.append(
            "The judge was given (not trained here): its ceiling is measured on all real cases, which it may "
            "have seen in training."
        )
    elif judge is not None:
        judge_info = {"source": "given"}
        held_out = list(real)
        notes.append(
            "The judge was given (not trained here): its ceiling is measured on all real cases, which it may "
            "have seen in training."
        )
    else:
        console.print(f"[bold]evaluate[/] training the judge on {len(train_cases)} real case(s), {judge_steps} steps")
        judge = train_judge(train_cases, steps=judge_steps, seed=seed, config=judge_config, progress=progress)
        judge_info = {
            "source": "trained here",
            "trained_on": [c.case_id for c in train_cases],
            "held_out": [c.case_id for c in held_out],
        }
        if not held_out:
            notes.append(
                "Only one real case: the judge was trained on it, so no held-out real case measures the "
                "ceiling; the alignment Dice has no reference."
            )
    judge_info["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(judge.config).items()}
    judge_info["trained_classes"] = [NAMES[c] for c in judge.config.trained_classes]

    console.print("[bold]evaluate[/] alignment (judge Dice)")
    alignment = {
        "generated": alignment_dice(judge, generated),
        "ceiling": alignment_dice(judge, held_out) if held_out else None,
        "ceiling_cases": [c.case_id for c in held_out],
    }

    console.print("[bold]evaluate[/] Fréchet distances")
    extractor = SliceFeatureExtractor(judge.encoder(), name="judge-encoder", step=fid_step)
    frechet: dict[str, Any] = {"judge_encoder": frechet_distances(extractor, generated, real)}
    frechet["judge_encoder"]["note"] = (
        "2.5-D features of the segmentation judge's encoder, trained here on the real "
        "cases; comparable only between runs using the same judge"
    )
    if astra:
        try:
            network = load_astra_i3d_encoder()
        except InputError as exc:
            frechet["astra"] = {"available": False, "reason": str(exc)}
        else:
            # At the voxel size the encoder was trained at (Merlin: 1.5 × 1.5 × 3 mm).
            astra_extractor = SubvolumeFeatureExtractor(
                network, name="astra-i3d-resnet152", size=(64, 64, 64), spacing=ASTRA_SPACING
            )
            frechet["astra"] = {"available": True, **frechet_distances(astra_extractor, generated, real)}

    console.print("[bold]evaluate[/] diversity")
    diversity = prompt_diversity(generated, max_pairs=max_pairs)

    metrics = {
        "inputs": {
            "generated": str(generated_dir),
            "real": str(real_dir),
            "n_generated": len(generated),
            "n_real": len(real),
            "voxel_size_mm": {"generated": _round_list(spacing_gen), "real": _round_list(spacing_real)},
        },
        "seed": int(seed),
        "judge": judge_info,
        "intensity": intensity,
        "frechet": frechet,
        "z_consistency": zc,
        "alignment": alignment,
        "diversity": diversity,
        "notes": notes,
    }
    console.print("[bold]evaluate[/] writing the report")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        judge.save(tmp / "judge", overwrite=True)
        _plot_histograms(tmp / "hu_histograms.png", hist_gen, hist_real)
        _plot_montage(tmp / "montage.png", generated, real)
        _plot_dice(tmp / "dice.png", alignment)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        (tmp / METRICS).write_text(json.dumps(_jsonable(metrics), indent=1) + "\n", encoding="utf-8")
        (tmp / REPORT).write_text(render_markdown(metrics), encoding="utf-8")
    return _jsonable(metrics)


# --------------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _mm(spacing: Any) -> str:
    return " × ".join(f"{s:.2f}" for s in spacing) + " mm"


def render_markdown(metrics: dict) -> str:
    """The report as Markdown, from `evaluate`'s metrics."""
    inputs = metrics["inputs"]
    lines = [
        "# GuideGen evaluation",
        "",
        f"{inputs['n_generated']} generated cases (`{inputs['generated']}`) against {inputs['n_real']} real cases "
        f"(`{inputs['real']}`), seed {metrics['seed']}, {metrics.get('seconds', '—')} s.",
        "",
    ]
    if metrics["notes"]:
        lines += ["## Notes", ""] + [f"* {n}" for n in metrics["notes"]] + [""]

    lines += [
        "## Organ intensities (HU)",
        "",
        "| class | generated mean ± std | real mean ± std | mean difference | Wasserstein-1 |",
        "|---|---|---|---|---|",
    ]
    for name, s in metrics["intensity"].items():
        g, r = s["generated"], s["real"]
        lines.append(
            f"| {name} | {_fmt(g['mean'])} ± {_fmt(g['std'])} | {_fmt(r['mean'])} ± {_fmt(r['std'])} "
            f"| {_fmt(s['mean_difference'])} | {_fmt(s['wasserstein'])} |"
        )
    lines += ["", "![HU histograms](hu_histograms.png)", "", "## Fréchet distances", ""]
    for key, result in metrics["frechet"].items():
        if not result.get("available", True):
            lines.append(f"* {key}: not computed ({result['reason']})")
            continue
        groups = ", ".join(
            f"{g} {_fmt(v['frechet'])} ({v['n_generated']} vs {v['n_real']} samples)"
            for g, v in result["groups"].items()
        )
        lines.append(
            f"* {key} (`{result['network']}`): mean {_fmt(result['mean'])}; {groups}. {result.get('note', '')}"
        )
    zc = metrics["z_consistency"]
    lines += [
        "",
        "## z-consistency (adjacent axial slices, mean |ΔHU| inside the body)",
        "",
        "| set | pairs | mean | median | p95 | slice spacing (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for side in ("generated", "real"):
        s = zc[side]
        lines.append(
            f"| {side} | {s['pairs']} | {_fmt(s['mean'])} | {_fmt(s['median'])} | {_fmt(s['p95'])} "
            f"| {_fmt(zc['slice_spacing_mm'][side])} |"
        )
    lines += ["", f"Wasserstein-1 between the two distributions: {_fmt(zc['wasserstein'])} HU.", ""]

    al = metrics["alignment"]
    judge = metrics["judge"]
    lines += [
        "## Alignment (segmentation judge)",
        "",
        f"Judge: {judge['source']}; 2-D MONAI UNet {judge['config']['channels']}, "
        f"{judge['config']['steps']} steps; trained classes: {', '.join(judge['trained_classes'])}.",
        "",
        "The judge is small and briefly trained: read each generated Dice against the ceiling (the judge's "
        "Dice on real cases it did not train on); a class the judge misses on real data says nothing about "
        "the generated cases.",
        "",
        "| class | generated Dice | real ceiling Dice |",
        "|---|---|---|",
    ]
    ceiling = (al["ceiling"] or {}).get("per_class", {})
    for name in NAMES:
        g = al["generated"]["per_class"].get(name)
        c = ceiling.get(name)
        if g or c:
            lines.append(f"| {name} | {_fmt(g and g['mean'])} | {_fmt(c and c['mean'])} |")
    lines.append(f"| **mean** | {_fmt(al['generated']['mean'])} | {_fmt((al['ceiling'] or {}).get('mean'))} |")
    if not al["ceiling_cases"]:
        lines.append("\nNo held-out real case: the ceiling is not measured.")
    lines += [
        "",
        "![Dice](dice.png)",
        "",
        "## Diversity (lower = more diverse)",
        "",
        "| prompt | cases | pairs compared | pairs skipped (grids differ) | MS-SSIM | label Dice |",
        "|---|---|---|---|---|---|",
    ]
    for p in metrics["diversity"]["prompts"]:
        prompt = p["prompt"] if p["prompt"] is not None else "(no prompt recorded)"
        lines.append(
            f"| {prompt} | {p['cases']} | {p['pairs']} | {p['skipped_pairs']} | {_fmt(p['ms_ssim'])} "
            f"| {_fmt(p['label_dice'])} |"
        )
    lines += ["", "## Samples", "", "![montage](montage.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_histograms(path: Path, hist_gen: np.ndarray, hist_real: np.ndarray, bin_hu: int = 10) -> None:
    plt = _pyplot()
    classes = [c for c in range(1, len(NAMES)) if hist_gen[c].sum() or hist_real[c].sum()]
    cols = max(1, min(4, len(classes)))
    rows = max(1, math.ceil(len(classes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    edges = np.arange(HU_MIN, HU_MIN + HU_BINS + bin_hu, bin_hu)
    for ax in axes.ravel()[len(classes) :]:
        ax.axis("off")
    for ax, c in zip(axes.ravel(), classes):
        both = hist_gen[c] + hist_real[c]
        cdf = np.cumsum(both) / both.sum()
        lo = HU_MIN + int(np.searchsorted(cdf, 0.005))
        hi = HU_MIN + int(np.searchsorted(cdf, 0.995))
        for counts, label, colour, style in (
            (hist_real[c], "real", "tab:blue", "-"),
            (hist_gen[c], "generated", "tab:orange", "--"),
        ):
            if counts.sum():
                binned = np.add.reduceat(counts, np.arange(0, HU_BINS, bin_hu)) / counts.sum() / bin_hu
                ax.stairs(binned, edges[: len(binned) + 1], label=label, color=colour, linestyle=style)
        ax.set_xlim(lo - bin_hu, hi + bin_hu)
        ax.set_title(NAMES[c], fontsize=9)
        ax.set_xlabel("HU", fontsize=8)
        ax.tick_params(labelsize=7)
    if classes:
        axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _display_slice(case: EvalCase) -> np.ndarray:
    labels = case.labels.array
    organ = (labels != 0) & (labels != UNKNOWN) & (labels != NAMES.index("body"))
    counts = organ.sum(axis=(0, 1))
    z = int(np.argmax(counts)) if counts.any() else labels.shape[2] // 2
    # RAS array → radiological display: patient's right on the left, anterior up.
    return case.ct.array[:, :, z].T[::-1, ::-1]


def _plot_montage(path: Path, generated: Sequence[EvalCase], real: Sequence[EvalCase], per_row: int = 4) -> None:
    plt = _pyplot()
    rows = (("generated", list(generated)[:per_row]), ("real", list(real)[:per_row]))
    fig, axes = plt.subplots(2, per_row, figsize=(2.6 * per_row, 5.4), squeeze=False)
    for r, (label, cases) in enumerate(rows):
        for k in range(per_row):
            ax = axes[r, k]
            ax.axis("off")
            if k < len(cases):
                sx, sy, _ = cases[k].ct.spacing
                ax.imshow(_display_slice(cases[k]), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=sy / sx)
                ax.set_title(f"{label}: {cases[k].case_id}"[:36], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_dice(path: Path, alignment: dict) -> None:
    plt = _pyplot()
    gen = alignment["generated"]["per_class"]
    ceiling = (alignment["ceiling"] or {}).get("per_class", {})
    names = [n for n in NAMES if n in gen or n in ceiling]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.2))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [gen.get(n, {}).get("mean", 0.0) for n in names], 0.4, label="generated (alignment)")
    ax.bar(x + 0.2, [ceiling.get(n, {}).get("mean", 0.0) for n in names], 0.4, label="held-out real (ceiling)")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------


def _round_list(values: Any) -> list[float]:
    return [round(float(v), 4) for v in values]


def _jsonable(value: Any) -> Any:
    """Numbers as plain floats/ints, NaN/inf as None, tuples as lists: strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value
