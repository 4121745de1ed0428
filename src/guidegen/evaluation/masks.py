"""Quality checks for sampled GuideGen label maps (what ``guidegen sample-masks --check`` reports).

The Volumetric Mask Sampler draws low-resolution 3-D label maps (GuideGen ids, see
`guidegen.labels.vocabulary`) from text prompts. None of these checks needs a ground truth: each
compares a sample with anatomy, with the reference (training) set, or with its own prompt.

* **Volumes** (`guidegen.evaluation.mask_volumes`: `volume_statistics`, `volume_check`): each
  organ's volume (mL) against the reference distribution; missing organs and absurd sizes (outside
  ``[mean / tolerance, mean × tolerance]``, default 3×) are flagged unless the prompt asked for them.
* **Components** (`guidegen.evaluation.mask_anatomy.component_check`): an organ should be one solid
  piece; it passes when its largest 26-connected component holds at least 95 % of its voxels (no
  fragments, no floating islands).
* **Relations** (`guidegen.evaluation.mask_anatomy.relation_check`): coarse anatomical relations
  between organ centroids / extents in world RAS+ millimetres (liver right of spleen, bladder below
  the kidneys …), see `guidegen.evaluation.mask_anatomy.RELATIONS`.
* **Sides** (`guidegen.evaluation.mask_anatomy.side_check`): organs on the patient's side anatomy
  puts them (left kidney left of the right kidney, spleen left and liver right of the midline); a
  map failing any is counted as having an organ on the wrong side.
* **Adherence** (`adherence_check`): the attributes the prompt states (tumour presence, host organ,
  colon segment / liver lobe, longest diameter, count, organ size state …) hold in the sample, as
  `guidegen.text.measure.measure_labels` measures it.
* **Diversity** (`diversity`): mean pairwise Dice over organ classes between samples of one prompt;
  ``1 - Dice`` is the diversity (identical samples: Dice 1.0, diversity 0).
* **Unstated organs** (`guidegen.evaluation.mask_unstated.unstated_organ_check`): the solid organs
  the prompt does not change have a normal volume, and liver, spleen and kidneys lie whole inside
  the grid.

This module holds adherence, diversity and `check_masks`, which runs them all on a batch of samples
and returns a JSON-ready `MaskCheckReport`.

World coordinates are RAS+ millimetres as `guidegen.io.volume` defines them: +x towards the
patient's right, +y anterior, +z superior; every position test goes through the volume's affine, so
any orientation and voxel size is handled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guidegen.evaluation.mask_anatomy import (
    MIN_MAIN_FRACTION,
    RELATIONS,
    ComponentResult,
    component_check,
    components_pass,
    relation_check,
    relation_pass_fraction,
    side_check,
    wrong_sides,
)
from guidegen.evaluation.mask_arguments import check_class_names, check_label_array, check_label_volume
from guidegen.evaluation.mask_unstated import UnstatedFinding, unstated_organ_check, unstated_summary
from guidegen.evaluation.mask_volumes import (
    VOLUME_TOLERANCE,
    VolumeFinding,
    check_reference_stats,
    check_volume_tolerance,
    volume_findings,
)
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, ORGANS, UNKNOWN
from guidegen.text.agreement import (
    DIAMETER_TOLERANCE,
    ORGAN_VOLUME_TOLERANCE,
    finding_volume,
    organ_agreement,
    tumour_agreement,
)
from guidegen.text.attributes import Attributes
from guidegen.text.measure import measure_labels
from guidegen.text.parse import parse_prompt

# --------------------------------------------------------------------------------------------------
# Prompt adherence


def adherence_check(
    prompt_attributes: Attributes,
    measured_attributes: Attributes,
    diameter_tolerance: float = DIAMETER_TOLERANCE,
    volume_tolerance: float = ORGAN_VOLUME_TOLERANCE,
    reference_stats: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, bool]:
    """Whether the attributes a prompt states hold in a sample.

    Only stated fields are scored. Fields (keys of the result):

    * ``"tumours"``: "no tumour" (``tumours=()``) → the sample has no tumour; any stated tumour →
      it has at least one.
    * per stated tumour group ``i`` (1-based), compared with the measured groups of the same host
      (``"kidney"`` without a side matches either kidney; a group without a host matches every
      measured tumour):
      ``tumour{i}.organ`` a tumour in the stated host; ``tumour{i}.segment`` one of them in the
      stated colon segment / liver lobe; ``tumour{i}.diameter_mm`` the largest of them within
      ±``diameter_tolerance`` of the stated longest diameter; ``tumour{i}.count`` their number
      equals the stated count (a singular mention states one tumour; "multiple" means at least two).
    * per stated organ: ``{organ}.state``: "enlarged" → volume above the normal range of
      `guidegen.text.measure.REFERENCE_RANGES`; "small" → below it (a partially imaged organ cannot
      be proven small); "normal" → within it; "absent" → no voxels. Organs without a normal range
      (hollow organs) use the reference set's ``(min, max)`` when ``reference_stats`` is given, and
      are not scored otherwise. ``{organ}.severity``: the measured grade (`grade_volume`) equals the
      stated one. ``{organ}.volume_ml``: within ±``volume_tolerance`` of a stated volume.
    * ``"field_of_view"``: the measured field of view equals the stated one.
    * ``"all"``: every scored field holds (``True`` when nothing was scored).

    Sex, age and contrast phase are not scored: a label map does not show them. A stated attribute
    the sample cannot show (its class not annotated) does not hold.

    Args:
        prompt_attributes: `parse_prompt` of the prompt.
        measured_attributes: ``measure_labels(sample).attributes``.
        diameter_tolerance: relative tolerance on tumour diameters (0.3 = ±30 %).
        volume_tolerance: relative tolerance on stated organ volumes.
        reference_stats: optional reference volumes (see `mask_volumes.volume_statistics`) for
            organs without a normal range.

    Returns:
        Field → bool, plus ``"all"``.

    Raises:
        ValueError: arguments of the wrong type or tolerances outside (0, 1).
    """
    if not isinstance(prompt_attributes, Attributes):
        raise ValueError(f"prompt_attributes must be an Attributes record, got {type(prompt_attributes).__name__}")
    if not isinstance(measured_attributes, Attributes):
        raise ValueError(f"measured_attributes must be an Attributes record, got {type(measured_attributes).__name__}")
    for arg, value in (("diameter_tolerance", diameter_tolerance), ("volume_tolerance", volume_tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{arg} must be in (0, 1), got {value!r}")
    stats = check_reference_stats(reference_stats) if reference_stats is not None else {}
    result: dict[str, bool] = {}
    stated, measured = prompt_attributes.tumours, measured_attributes.tumours
    result.update(tumour_agreement(stated, measured, diameter_tolerance))
    for organ, finding in prompt_attributes.organs.items():
        result.update(organ_agreement(organ, finding, measured_attributes.organs.get(organ), stats, volume_tolerance))
    if prompt_attributes.field_of_view is not None:
        result["field_of_view"] = measured_attributes.field_of_view == prompt_attributes.field_of_view
    result["all"] = all(result.values())
    return result


# --------------------------------------------------------------------------------------------------
# Diversity


def diversity(samples: Sequence[Volume | np.ndarray], classes: Sequence[str] = ORGANS) -> float | None:
    """Mean pairwise Dice between samples of one prompt, over organ classes.

    Definition: for each pair of samples, Dice ``2|A∩B| / (|A| + |B|)`` of each class present in
    either sample (voxels of unknown class in either sample are ignored), averaged over those
    classes; then averaged over all pairs. Identical samples give 1.0; ``1 - Dice`` is the diversity.

    Args:
        samples: two or more label maps on the same grid (`Volume` or arrays).
        classes: class names compared (default: every organ).

    Returns:
        Mean pairwise Dice in [0, 1], or ``None`` when no pair has any voxel of ``classes``.

    Raises:
        ValueError: fewer than two samples, different grids, or unknown class names.
    """
    classes = check_class_names(classes, NAMES[1:], "classes")
    if isinstance(samples, (Volume, np.ndarray)) or len(samples) < 2:
        raise ValueError("samples must be a sequence of at least two label maps")
    first = samples[0]
    arrays: list[np.ndarray] = []
    for index, sample in enumerate(samples):
        if isinstance(sample, Volume):
            array = check_label_volume(sample, f"samples[{index}]")
        else:
            array = check_label_array(sample, f"samples[{index}]")
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(f"samples[{index}] has shape {array.shape}, samples[0] {arrays[0].shape}")
        if isinstance(sample, Volume) and isinstance(first, Volume) and not sample.same_grid(first):
            raise ValueError(f"samples[{index}] is not on the grid (affine) of samples[0]")
        arrays.append(array.astype(np.intp, copy=False))
    ids = np.array([ID[name] for name in classes], dtype=np.intp)
    size = UNKNOWN + 1
    scores: list[float] = []
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            a, b = arrays[i], arrays[j]
            known = (a != UNKNOWN) & (b != UNKNOWN)
            # One joint histogram gives every class's overlap and both sizes at once.
            joint = np.bincount(a[known] * size + b[known], minlength=size * size).reshape(size, size)
            overlap = np.diag(joint)[ids]
            total = joint.sum(axis=1)[ids] + joint.sum(axis=0)[ids]
            present = total > 0
            if present.any():
                scores.append(float(np.mean(2.0 * overlap[present] / total[present])))
    return float(np.mean(scores)) if scores else None


# --------------------------------------------------------------------------------------------------
# Batch report


@dataclass
class SampleCheck:
    """All checks of one sample (see `check_masks`)."""

    index: int
    prompt: str
    components: dict[str, ComponentResult]
    relations: dict[str, bool | None]
    adherence: dict[str, bool]
    volumes: dict[str, VolumeFinding]
    measured: Attributes
    sides: dict[str, bool | None] = field(default_factory=dict)
    unstated: dict[str, UnstatedFinding] = field(default_factory=dict)

    @property
    def components_ok(self) -> bool | None:
        return components_pass(self.components)

    @property
    def fragmented(self) -> list[str]:
        return [name for name, r in self.components.items() if r.passed is False]

    @property
    def adherence_scored(self) -> bool:
        """Whether the prompt stated anything a label map can show."""
        return len(self.adherence) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prompt": self.prompt,
            "components_ok": self.components_ok,
            "components": {name: r.to_dict() for name, r in self.components.items() if r.voxels},
            "relations": dict(self.relations),
            "relation_pass_fraction": relation_pass_fraction(self.relations),
            "sides": dict(self.sides),
            "wrong_side": wrong_sides(self.sides),
            "adherence": dict(self.adherence),
            "volumes": {name: f.to_dict() for name, f in self.volumes.items()},
            "measured": self.measured.to_dict(),
            "unstated": {name: f.to_dict() for name, f in self.unstated.items()},
        }


@dataclass
class MaskCheckReport:
    """Aggregate quality of a batch of sampled label maps.

    Attributes:
        n_samples: number of samples checked.
        component_pass_fraction: share of samples whose every present organ is one main component
            (`component_check`); ``None`` when no sample had an organ.
        relation_pass_fraction: share of all testable relations satisfied, over every sample.
        relation_pass_by_name: the same per relation (``None`` where never testable).
        adherence_fraction: share of samples whose stated attributes all hold, among samples whose
            prompt states something a label map can show; ``None`` when there is none.
        adherence_by_field: pass share per field kind (``"tumours"``, ``"tumour.diameter_mm"``,
            ``"organ.state"`` …).
        volume_outliers: one entry per flagged organ volume (sample index, prompt, organ, status,
            volume mL, reference mean mL, ratio).
        diversity: prompt → ``{"samples", "mean_dice", "diversity"}`` for prompts with several
            samples.
        settings: thresholds used.
        samples: per-sample details.
        wrong_side_fraction: share of the samples with an organ on the wrong side (`side_check`),
            among those where a side could be tested; ``None`` when none could.
        unstated: `mask_unstated.unstated_summary` of the samples (organs the prompts leave
            unchanged: normal volume, whole inside the grid).
    """

    n_samples: int
    component_pass_fraction: float | None
    relation_pass_fraction: float | None
    relation_pass_by_name: dict[str, float | None]
    adherence_fraction: float | None
    adherence_by_field: dict[str, float]
    volume_outliers: list[dict[str, Any]]
    diversity: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    samples: list[SampleCheck] = field(default_factory=list)
    wrong_side_fraction: float | None = None
    unstated: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (str, int, float, bool, None, list, dict only)."""
        return {
            "n_samples": self.n_samples,
            "component_pass_fraction": self.component_pass_fraction,
            "relation_pass_fraction": self.relation_pass_fraction,
            "relation_pass_by_name": dict(self.relation_pass_by_name),
            "wrong_side_fraction": self.wrong_side_fraction,
            "adherence_fraction": self.adherence_fraction,
            "adherence_by_field": dict(self.adherence_by_field),
            "volume_outliers": [dict(o) for o in self.volume_outliers],
            "diversity": {p: dict(d) for p, d in self.diversity.items()},
            "settings": dict(self.settings),
            "samples": [s.to_dict() for s in self.samples],
            "unstated": dict(self.unstated),
        }

    def summary_lines(self) -> list[str]:
        """A short human-readable summary, one finding per line."""
        lines = [f"mask check: {self.n_samples} sample(s), {len({s.prompt for s in self.samples})} prompt(s)"]
        scored = [s for s in self.samples if s.components_ok is not None]
        fragmented = Counter(name for s in self.samples for name in s.fragmented)
        lines.append(
            f"  components: {_count_line(sum(bool(s.components_ok) for s in scored), len(scored))} samples have every "
            f"organ in one main component (≥ {self.settings['min_main_fraction']:.0%})"
            + (f"; fragmented: {_tally(fragmented)}" if fragmented else "")
        )
        relations = [r for s in self.samples for r in s.relations.values() if r is not None]
        failing = Counter(name for s in self.samples for name, r in s.relations.items() if r is False)
        lines.append(
            f"  relations: {_count_line(sum(relations), len(relations))} anatomical relations hold"
            + (f"; violated: {_tally(failing)}" if failing else "")
        )
        sided = [s for s in self.samples if any(v is not None for v in s.sides.values())]
        wrong = Counter(name for s in sided for name in wrong_sides(s.sides))
        lines.append(
            f"  sides: {_count_line(sum(bool(wrong_sides(s.sides)) for s in sided), len(sided))} samples have an "
            "organ on the wrong side" + (f": {_tally(wrong)}" if wrong else "")
        )
        adherent = [s for s in self.samples if s.adherence_scored]
        missed = Counter(_field_kind(k) for s in adherent for k, v in s.adherence.items() if k != "all" and not v)
        lines.append(
            f"  adherence: {_count_line(sum(s.adherence['all'] for s in adherent), len(adherent))} samples hold every "
            "stated attribute" + (f"; failing: {_tally(missed)}" if missed else "")
        )
        if self.volume_outliers:
            shown = ", ".join(
                f"#{o['sample']} {o['organ']} {o['status'].replace('_', ' ')}"
                + (f" ({o['ratio']:.2f}× ref)" if o["ratio"] is not None and o["status"] != "missing" else "")
                for o in self.volume_outliers[:6]
            )
            more = f" … (+{len(self.volume_outliers) - 6})" if len(self.volume_outliers) > 6 else ""
            lines.append(f"  volume outliers: {len(self.volume_outliers)}: {shown}{more}")
        else:
            checked = self.settings.get("reference")
            lines.append("  volume outliers: none" if checked else "  volumes: not checked (no reference statistics)")
        if self.unstated:
            lines += _unstated_lines(self.unstated)
        for prompt, entry in self.diversity.items():
            dice = entry["mean_dice"]
            text = "n/a" if dice is None else f"mean Dice {dice:.3f} (diversity {entry['diversity']:.3f})"
            lines.append(f"  diversity of {prompt!r} ({entry['samples']} samples): {text}")
        return lines


def check_masks(
    samples: Sequence[Volume],
    prompts: Sequence[str] | None,
    reference_stats: Mapping[str, Sequence[float]] | None = None,
    tolerance: float = VOLUME_TOLERANCE,
    min_fraction: float = MIN_MAIN_FRACTION,
    component_classes: Sequence[str] = ORGANS,
) -> MaskCheckReport:
    """Run every check on a batch of sampled label maps.

    Args:
        samples: sampled label maps (GuideGen ids); ``meta["annotated"]`` is honoured when present.
        prompts: the prompt each sample was drawn from (same length as ``samples``); ``None``: each
            sample's ``meta["prompt"]``, which `guidegen.masks.sampler` records.
        reference_stats: reference volumes (`mask_volumes.volume_statistics`); ``None`` skips the volume check.
        tolerance: volume ratio bound of `mask_volumes.volume_check`.
        min_fraction: main-component share of `component_check`.
        component_classes: classes `component_check` examines.

    Returns:
        `MaskCheckReport`.

    Raises:
        ValueError: empty or mismatched ``samples`` / ``prompts``, bad thresholds or reference.
        guidegen.errors.InputError: a prompt `parse_prompt` refuses (empty) or a map with ids outside
            the vocabulary.
    """
    if isinstance(samples, Volume) or not len(samples):
        raise ValueError("samples must be a non-empty sequence of label maps")
    if prompts is None:
        prompts = [s.meta.get("prompt") if isinstance(s, Volume) else None for s in samples]
        missing = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if missing:
            raise ValueError(f"prompts not given and samples {missing[:8]} have no meta['prompt']")
    if isinstance(prompts, str) or len(prompts) != len(samples):
        raise ValueError(f"prompts must be a sequence of one prompt per sample ({len(samples)}), got {prompts!r:.80}")
    stats = check_reference_stats(reference_stats) if reference_stats is not None else {}
    tolerance = check_volume_tolerance(tolerance)
    parsed: dict[str, Attributes] = {}
    checks: list[SampleCheck] = []
    for index, (sample, prompt) in enumerate(zip(samples, prompts)):
        check_label_volume(sample, f"samples[{index}]")
        if not isinstance(prompt, str):
            raise ValueError(f"prompts[{index}] must be text, got {type(prompt).__name__}")
        if prompt not in parsed:
            parsed[prompt] = parse_prompt(prompt)
        attributes = parsed[prompt]
        measured = measure_labels(sample).attributes
        volumes = {name: finding_volume(measured.organs.get(name)) for name in ORGANS}
        unstated = unstated_organ_check(measured, attributes)
        checks.append(
            SampleCheck(
                index=index,
                prompt=prompt,
                components=component_check(sample, component_classes, min_fraction),
                relations=relation_check(sample),
                adherence=adherence_check(attributes, measured, reference_stats=stats or None),
                volumes=volume_findings(volumes, stats, tolerance, attributes),
                measured=measured,
                sides=side_check(sample),
                unstated=unstated,
            )
        )

    component_scored = [c.components_ok for c in checks if c.components_ok is not None]
    sided = [bool(wrong_sides(c.sides)) for c in checks if any(v is not None for v in c.sides.values())]
    relation_values = [r for c in checks for r in c.relations.values() if r is not None]
    by_name: dict[str, float | None] = {}
    for name in RELATIONS:
        values = [c.relations[name] for c in checks if c.relations.get(name) is not None]
        by_name[name] = round(sum(values) / len(values), 4) if values else None  # type: ignore[arg-type]
    adherent = [c for c in checks if c.adherence_scored]
    kinds: dict[str, list[bool]] = {}
    for c in adherent:
        for key, value in c.adherence.items():
            if key != "all":
                kinds.setdefault(_field_kind(key), []).append(value)
    outliers = [
        {
            "sample": c.index,
            "prompt": c.prompt,
            "organ": name,
            "status": f.status,
            "volume_ml": f.volume_ml,
            "reference_mean_ml": f.reference_mean_ml,
            "ratio": f.ratio,
        }
        for c in checks
        for name, f in c.volumes.items()
        if f.outlier
    ]
    groups: dict[str, list[Volume]] = {}
    for sample, prompt in zip(samples, prompts):
        groups.setdefault(prompt, []).append(sample)
    spread: dict[str, dict[str, Any]] = {}
    for prompt, group in groups.items():
        if len(group) < 2:
            continue
        dice = diversity(group)
        spread[prompt] = {
            "samples": len(group),
            "mean_dice": None if dice is None else round(dice, 4),
            "diversity": None if dice is None else round(1.0 - dice, 4),
        }
    return MaskCheckReport(
        n_samples=len(checks),
        component_pass_fraction=_fraction(sum(component_scored), len(component_scored)),
        relation_pass_fraction=_fraction(sum(relation_values), len(relation_values)),
        relation_pass_by_name=by_name,
        adherence_fraction=_fraction(sum(c.adherence["all"] for c in adherent), len(adherent)),
        adherence_by_field={k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())},
        volume_outliers=outliers,
        diversity=spread,
        settings={
            "min_main_fraction": min_fraction,
            "volume_tolerance": tolerance,
            "diameter_tolerance": DIAMETER_TOLERANCE,
            "organ_volume_tolerance": ORGAN_VOLUME_TOLERANCE,
            "component_classes": list(component_classes),
            "reference": bool(stats),
        },
        samples=checks,
        wrong_side_fraction=_fraction(sum(sided), len(sided)),
        unstated=unstated_summary([c.unstated for c in checks]),
    )


# --------------------------------------------------------------------------------------------------
# Helpers


def _fraction(passed: int, total: int) -> float | None:
    return round(passed / total, 4) if total else None


def _count_line(passed: int, total: int) -> str:
    if not total:
        return "0/0 (n/a)"
    return f"{passed}/{total} ({100.0 * passed / total:.1f} %)"


def _tally(counter: Counter[str]) -> str:
    return ", ".join(f"{name} ×{n}" for name, n in counter.most_common(6))


def _unstated_lines(summary: dict[str, Any]) -> list[str]:
    """Summary lines of `mask_unstated.unstated_summary`: maps, checks and failing organs."""
    lines = []
    for kind, words in (
        ("normal", "every unstated solid organ of normal volume"),
        ("complete", "liver, spleen and kidneys whole inside the grid"),
    ):
        maps, checks = summary[f"{kind}_maps"], summary[f"{kind}_checks"]
        failing = ", ".join(
            f"{name} {entry[kind][1] - entry[kind][0]}/{entry[kind][1]}"
            for name, entry in summary["by_organ"].items()
            if entry[kind][0] < entry[kind][1]
        )
        lines.append(
            f"  unstated organs: {_count_line(*maps)} maps have {words} ({checks[0]}/{checks[1]} checks)"
            + (f"; failing: {failing}" if failing else "")
        )
    return lines


def _field_kind(key: str) -> str:
    """``"tumour2.count"`` → ``"tumour.count"``, ``"spleen.state"`` → ``"organ.state"``."""
    if "." not in key:
        return key
    head, tail = key.split(".", 1)
    return f"tumour.{tail}" if head.startswith("tumour") and head[6:].isdigit() else f"organ.{tail}"
