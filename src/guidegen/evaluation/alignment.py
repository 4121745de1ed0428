"""Image–label alignment: a segmentation "judge" trained on real CT, asked to segment generated CT.

If a generated CT shows the organs where its label map puts them, a segmenter trained on real
data finds them there: the Dice between the judge's prediction on the generated CT and the
generated label map measures alignment (GuideGen, Dai et al. 2024, § 4, uses a pretrained
segmenter the same way). The judge's Dice on held-out *real* cases is the ceiling to compare with.

The judge is a small 2-D MONAI `UNet` on axial slices at the cases' own grid (the prepared grid),
input HU clipped to [-1024, 2000] and mapped linearly to [-1, 1] (`guidegen.evaluation.cases.
normalise_hu`), batch normalisation (so that the encoder keeps absolute intensities, which the
Fréchet distance of `guidegen.evaluation.realism` relies on when it uses `Judge.encoder`).

Partial labels: real datasets annotate different classes. Voxels with id 255 are ignored, and a
class that a case does not annotate is never penalised: the loss is the *marginal* cross-entropy
(Shi et al. 2021, "Marginal loss and exclusion loss for partially supervised multi-organ
segmentation"): a voxel labelled background or body (which in a partially annotated case means
"none of the annotated classes") counts as correct for that label **or** any class the case does
not annotate, ``loss = −log Σ_{c ∈ allowed} p_c``. With every class annotated it is the ordinary
cross-entropy. A class that no training case annotates (with voxels) stays an ordinary negative,
so the judge never learns to predict it. Known limitation: a class annotated in only some training
datasets (typically ``tumour``) gets no negative signal inside the body of the others, so a
briefly trained judge may over-predict it there; Dice counts it only where it is annotated, and
the ceiling suffers from it as much as the generated cases do.

The judge is deliberately small (a few hundred steps on CPU): on the bundled real cases, 300 steps
learn body, bone, liver and colon but not yet the small organs. Read the alignment Dice against
the held-out real ceiling, and give ``steps`` in the thousands for a judge worth publishing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guidegen.checkpoint import load_checkpoint, save_checkpoint
from guidegen.errors import InputError
from guidegen.evaluation.cases import ALL_CLASSES, EvalCase, normalise_hu
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, NUM_CLASSES, UNKNOWN
from guidegen.training import cosine_lr, step_generators

__all__ = [
    "JudgeConfig",
    "Judge",
    "JudgeEncoder",
    "Segmenter",
    "build_judge_network",
    "marginal_cross_entropy",
    "focus_dice_loss",
    "train_judge",
    "default_alignment_classes",
    "dice_per_class",
    "alignment_dice",
]

_BODY = ID["body"]
#: Labels that mean "none of the annotated classes" in a partially annotated case.
_CATCH_ALL = (ID["background"], _BODY)


@dataclass(frozen=True)
class JudgeConfig:
    """The judge network and its training recipe (saved as ``config.json`` beside the weights).

    Attributes:
        channels, strides, num_res_units: MONAI `UNet` (2-D) architecture.
        hu_range: HU window mapped to [-1, 1].
        patch: training slice size (X, Y) in voxels; slices are randomly cropped or padded to it.
        batch_size: slices per step. lr: AdamW peak learning rate (cosine decay to 10 %); 5e-3
            learnt the large organs of the bundled real cases faster than 2e-3 in 300-step runs.
        foreground_fraction: share of training slices drawn among those holding an organ.
        focus_classes, focus_fraction: share of training slices drawn among those holding one of
            these class ids (before the organ draw; none: off). A tumour fills a few slices of a
            case, so a segmenter judged on tumours must see them more often than the organs'
            share gives (nnU-Net's foreground oversampling, Isensee et al. 2021).
        steps, seed: the training run that produced the weights.
        trained_classes: ids with annotated voxels in the training cases (set by `train_judge`).
    """

    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2)
    num_res_units: int = 1
    hu_range: tuple[float, float] = (-1024.0, 2000.0)
    patch: tuple[int, int] = (128, 128)
    batch_size: int = 8
    lr: float = 5e-3
    weight_decay: float = 1e-4
    foreground_fraction: float = 0.7
    focus_classes: tuple[int, ...] = ()
    focus_fraction: float = 0.0
    dice_weight: float = 0.0
    steps: int = 300
    seed: int = 0
    trained_classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"channels needs >= 2 entries and strides one fewer, got {self.channels} and {self.strides}"
            )
        if min(self.channels) < 1 or min(self.strides) < 1:
            raise ValueError(f"channels and strides must be positive, got {self.channels} and {self.strides}")
        if len(self.patch) != 2 or min(self.patch) < 1:
            raise ValueError(f"patch must be two positive integers, got {self.patch}")
        if self.batch_size < 1 or self.steps < 0 or not self.lr > 0:
            raise ValueError(
                f"batch_size must be >= 1, steps >= 0, lr > 0; got {self.batch_size}, {self.steps}, {self.lr}"
            )
        if not self.dice_weight >= 0.0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight}")
        if not 0.0 <= self.focus_fraction <= 1.0:
            raise ValueError(f"focus_fraction must be in [0, 1], got {self.focus_fraction}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must lie in [0, 1], got {self.foreground_fraction}")
        if not self.hu_range[1] > self.hu_range[0]:
            raise ValueError(f"hu_range must be increasing, got {self.hu_range}")

    @property
    def divisor(self) -> int:
        """Slice sizes must be multiples of this (the UNet's total down-sampling)."""
        return int(math.prod(self.strides))


def build_judge_network(config: JudgeConfig) -> nn.Module:
    """The judge's MONAI `UNet`: (N, 1, X, Y) in [-1, 1] → (N, NUM_CLASSES, X, Y) logits."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=NUM_CLASSES,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        norm="batch",
    )


def _pad_to(x: torch.Tensor, divisor: int, value: float) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return (F.pad(x, (0, pw, 0, ph), value=value) if ph or pw else x), (h, w)


class JudgeEncoder(nn.Module):
    """The judge UNet's contracting path as a feature network for Fréchet distances.

    (N, 1, H, W) in [-1, 1] (any H, W: padded with air to the UNet's divisor) → (N, F): each
    encoder stage's output averaged over space, concatenated (F = sum of ``channels``), so that
    early, intensity-sensitive features count as well as the deep ones. Shares the judge's weights.
    """

    def __init__(self, unet: nn.Module, divisor: int):
        super().__init__()
        from monai.networks.layers import SkipConnection

        stages: list[nn.Module] = []
        block = unet.model  # MONAI UNet: Sequential(down, SkipConnection(inner), up), nested
        while True:
            stages.append(block[0])
            inner = block[1].submodule
            if isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection):
                block = inner
            else:
                stages.append(inner)  # the bottom layer
                break
        self.stages = nn.ModuleList(stages)
        self.divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = _pad_to(x, self.divisor, -1.0)
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


@runtime_checkable
class Segmenter(Protocol):
    """Anything that labels a CT: ``predict(ct) -> (X, Y, Z) class ids``."""

    def predict(self, ct: Volume) -> np.ndarray: ...


class Judge:
    """A trained judge: config + network. Build with `train_judge` or `Judge.load`."""

    def __init__(self, config: JudgeConfig, network: nn.Module | None = None):
        self.config = config
        self.network = network if network is not None else build_judge_network(config)
        self.network.eval()

    @torch.no_grad()
    def predict(self, ct: Volume | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Segment a CT slice by slice.

        Args:
            ct: CT in HU, (X, Y, Z), on the grid the judge was trained at.

        Returns:
            uint8 class ids (X, Y, Z).
        """
        array = ct.array if isinstance(ct, Volume) else np.asarray(ct)
        if array.ndim != 3:
            raise ValueError(f"ct must be 3-D (X, Y, Z), got shape {array.shape}")
        self.network.eval()
        units = normalise_hu(array, self.config.hu_range)
        out = np.empty(array.shape, dtype=np.uint8)
        for start in range(0, array.shape[2], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(units[:, :, start : start + batch_size], 2, 0)))[
                :, None
            ]
            x, (h, w) = _pad_to(x, self.config.divisor, -1.0)
            pred = self.network(x).argmax(dim=1)[:, :h, :w]
            out[:, :, start : start + batch_size] = np.moveaxis(pred.numpy().astype(np.uint8), 0, 2)
        return out

    def encoder(self) -> JudgeEncoder:
        """The contracting path as a feature network (see `JudgeEncoder`)."""
        return JudgeEncoder(self.network, self.config.divisor).eval()

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (checksummed, atomic)."""
        return save_checkpoint(
            folder,
            self.config,
            self.network.state_dict(),
            overwrite=overwrite,
            metadata={"component": "guidegen.evaluation.judge"},
        )

    @classmethod
    def load(cls, folder: str | Path) -> Judge:
        """Read a judge written by `save`.

        Raises:
            InputError: missing or corrupted checkpoint, or weights that do not fit the config.
        """
        config, weights, _ = load_checkpoint(folder, JudgeConfig)
        network = build_judge_network(config)
        try:
            network.load_state_dict(weights)
        except RuntimeError as exc:
            problem = f"does not fit config.json ({str(exc).splitlines()[0]})"
            raise InputError(Path(folder) / "model.safetensors", problem) from None
        return cls(config, network)


def _known_targets(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(known voxels, target with unknown set to 0, voxels labelled background or body) of (N, H, W) ids."""
    known = target != UNKNOWN
    t = torch.where(known, target, torch.zeros_like(target))
    catch = torch.zeros_like(known)
    for c in _CATCH_ALL:
        catch |= t == c
    return known, t, catch


def marginal_cross_entropy(logits: torch.Tensor, target: torch.Tensor, unannotated: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for partial labels (marginal loss), averaged over known voxels.

    Args:
        logits: (N, C, H, W).
        target: (N, H, W) int64 class ids; 255 = unknown (ignored).
        unannotated: (N, C) bool, classes the sample's case does not annotate. A voxel labelled
            background or body may be any of them: its loss is ``−log(p_label + Σ_unannotated p_c)``.

    Returns:
        Scalar loss (0 with a gradient when no voxel is known).
    """
    known, t, catch = _known_targets(target)
    if not bool(known.any()):
        return logits.sum() * 0.0
    allowed = F.one_hot(t, logits.shape[1]).permute(0, 3, 1, 2).bool()
    allowed |= catch[:, None] & unannotated[:, :, None, None]
    logp = F.log_softmax(logits.float(), dim=1).masked_fill(~allowed, float("-inf"))
    return -torch.logsumexp(logp, dim=1)[known].mean()


def focus_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, unannotated: torch.Tensor, classes: Sequence[int]
) -> torch.Tensor:
    """1 − soft Dice of each of ``classes`` over the whole batch, averaged over the classes.

    The batch is pooled into one Dice per class (nnU-Net's batch Dice) so that a slice without the
    class still counts: its predicted voxels of that class are false positives. Voxels of unknown
    truth are left out, and so are a case's background/body voxels for a class that case does not
    annotate (they may be that class; the marginal cross-entropy treats them alike).

    Args:
        logits: (N, C, H, W). target: (N, H, W) class ids, 255 = unknown.
        unannotated: (N, C) bool, as in `marginal_cross_entropy`. classes: class ids.

    Returns:
        Scalar loss in [0, 1] (0 with a gradient when ``classes`` is empty).
    """
    if not classes:
        return logits.sum() * 0.0
    probability = F.softmax(logits.float(), dim=1)
    known, t, catch = _known_targets(target)
    smooth = 1e-5
    losses = []
    for c in classes:
        valid = (known & ~(catch & unannotated[:, c, None, None])).float()
        p = probability[:, c] * valid
        g = (t == c).float() * valid
        losses.append(1.0 - (2.0 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth))
    return torch.stack(losses).mean()


@dataclass
class _Slices:
    units: list[np.ndarray] = field(default_factory=list)  # (X, Y, Z) in [-1, 1] per case
    labels: list[np.ndarray] = field(default_factory=list)  # (X, Y, Z) uint8 per case
    unannotated: list[np.ndarray] = field(default_factory=list)  # (C,) bool per case
    all: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (case, z) with known voxels
    organ: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (case, z) with an organ
    focus: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (case, z) with a focus class


def _gather(cases: Sequence[EvalCase], config: JudgeConfig) -> tuple[_Slices, tuple[int, ...]]:
    data = _Slices()
    all_idx, organ_idx, focus_idx, trained = [], [], [], set()
    for i, case in enumerate(cases):
        labels = case.labels.array
        data.units.append(normalise_hu(case.ct.array, config.hu_range))
        data.labels.append(labels)
        present = np.bincount(labels.ravel(), minlength=UNKNOWN + 1)
        trained |= {c for c in range(NUM_CLASSES) if present[c] and c in case.annotated}
        known = (labels != UNKNOWN).any(axis=(0, 1))
        organ = ((labels != UNKNOWN) & ~np.isin(labels, _CATCH_ALL)).any(axis=(0, 1))
        all_idx += [(i, z) for z in np.flatnonzero(known)]
        organ_idx += [(i, z) for z in np.flatnonzero(organ)]
        if config.focus_classes:
            focus_idx += [(i, z) for z in np.flatnonzero(np.isin(labels, config.focus_classes).any(axis=(0, 1)))]
    # A class no training case shows is a plain negative everywhere: the judge must not invent it
    # (otherwise the marginal loss leaves it free wherever a case does not annotate it).
    learnable = np.isin(np.arange(NUM_CLASSES), sorted(trained))
    data.unannotated = [learnable & ~np.isin(np.arange(NUM_CLASSES), sorted(c.annotated)) for c in cases]
    data.all = np.asarray(all_idx, dtype=np.int64).reshape(-1, 2)
    data.organ = np.asarray(organ_idx, dtype=np.int64).reshape(-1, 2)
    data.focus = np.asarray(focus_idx, dtype=np.int64).reshape(-1, 2)
    return data, tuple(sorted(trained))


def _crop_or_pad(
    image: np.ndarray, labels: np.ndarray, patch: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    for axis, size in enumerate(patch):
        n = image.shape[axis]
        if n > size:
            start = int(rng.integers(0, n - size + 1))
            image, labels = (np.take(a, np.arange(start, start + size), axis=axis) for a in (image, labels))
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, size - n - before)
            image = np.pad(image, pad, constant_values=-1.0)  # air
            labels = np.pad(labels, pad, constant_values=UNKNOWN)
    return image, labels


def train_judge(
    cases: Sequence[EvalCase],
    steps: int = 300,
    seed: int = 0,
    config: JudgeConfig | None = None,
    progress: bool = False,
) -> Judge:
    """Train the judge on (real) cases.

    Each step draws ``batch_size`` axial slices (``focus_fraction`` of them among slices holding a
    ``focus_classes`` voxel, ``foreground_fraction`` of the rest among slices holding an organ),
    crops or pads them to ``patch`` and takes one AdamW step on the `marginal_cross_entropy` (plus
    ``dice_weight`` × `focus_dice_loss`). Every
    random draw of step s comes from generators seeded with ``(seed, s)`` and the initial weights
    from ``seed``: the same call gives the same judge.

    Args:
        cases: training cases (partial annotation allowed).
        steps: optimisation steps (a few hundred suffice at 128² for the large organs).
        seed: random seed.
        config: architecture and recipe; its ``steps`` and ``seed`` are replaced by the arguments.
        progress: show a progress bar.

    Raises:
        ValueError: no case, or no slice with a known voxel.
    """
    if not cases:
        raise ValueError("train_judge needs at least one case")
    config = replace(config or JudgeConfig(), steps=int(steps), seed=int(seed))
    data, trained = _gather(cases, config)
    if len(data.all) == 0:
        raise ValueError("no training slice has a known voxel (all labels are 255)")
    config = replace(config, trained_classes=trained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_judge_network(config)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(20, max(1, steps // 10))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    network.train()
    with Progress(
        TextColumn("[bold]judge[/] {task.fields[loss]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("train", total=steps, loss="")
        for step in range(steps):
            rng, _ = step_generators(seed, step)
            images, targets, masks = [], [], []
            for _ in range(config.batch_size):
                # No draw for the focus when it is off: the organ draws stay those of earlier judges.
                if config.focus_fraction > 0 and len(data.focus) and rng.random() < config.focus_fraction:
                    pool = data.focus
                else:
                    pool = data.organ if len(data.organ) and rng.random() < config.foreground_fraction else data.all
                case, z = pool[int(rng.integers(0, len(pool)))]
                image, labels = _crop_or_pad(data.units[case][:, :, z], data.labels[case][:, :, z], config.patch, rng)
                images.append(image)
                targets.append(labels)
                masks.append(data.unannotated[case])
            x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
            y = torch.from_numpy(np.stack(targets).astype(np.int64))
            for group in optimiser.param_groups:
                group["lr"] = cosine_lr(step, steps, config.lr, warmup)
            logits, unannotated = network(x), torch.from_numpy(np.stack(masks))
            loss = marginal_cross_entropy(logits, y, unannotated)
            if config.dice_weight > 0:
                loss = loss + config.dice_weight * focus_dice_loss(logits, y, unannotated, config.focus_classes)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            bar.update(task, advance=1, loss=f"loss {loss.item():.3f}")
    network.eval()
    return Judge(config, network)


def dice_per_class(
    prediction: np.ndarray,
    truth: np.ndarray,
    classes: Sequence[int],
    annotated: frozenset[int] | set[int] = ALL_CLASSES,
) -> dict[int, float]:
    """Dice ``2|P∩T| / (|P| + |T|)`` of each class, over voxels whose truth is known.

    Classes not in ``annotated`` and classes absent from both prediction and truth are left out;
    voxels with truth 255 are ignored.

    Returns:
        ``{class id: Dice in [0, 1]}``.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    known = truth != UNKNOWN
    size = UNKNOWN + 1
    joint = np.bincount(
        prediction[known].astype(np.int64) * size + truth[known].astype(np.int64), minlength=size * size
    ).reshape(size, size)
    result = {}
    for c in classes:
        if c not in annotated or c == UNKNOWN:
            continue
        total = joint[c].sum() + joint[:, c].sum()
        if total:
            result[int(c)] = float(2.0 * joint[c, c] / total)
    return result


def default_alignment_classes(judge: Segmenter) -> tuple[int, ...]:
    """Classes scored by default: those the judge was trained on, minus background and body."""
    trained = getattr(getattr(judge, "config", None), "trained_classes", None) or range(NUM_CLASSES)
    return tuple(c for c in trained if c not in _CATCH_ALL)


def alignment_dice(judge: Segmenter, cases: Sequence[EvalCase], classes: Sequence[str] | None = None) -> dict:
    """Dice between the judge's segmentation of each case's CT and the case's own label map.

    Args:
        judge: a `Judge` (or any `Segmenter`).
        cases: generated cases (alignment) or held-out real cases (the ceiling).
        classes: class names to score; default `default_alignment_classes` (trained classes, no
            background, no body outline). Per case, classes not annotated there or absent from both
            maps are skipped.

    Returns:
        ``{"per_class": {name: {"mean", "std", "cases"}}, "per_case": {case_id: {name: Dice}},
        "mean": mean of the per-class means (None if nothing was scored)}``.
    """
    if classes is None:
        ids = default_alignment_classes(judge)
    else:
        unknown = [c for c in classes if c not in NAMES]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; valid classes: {', '.join(NAMES)}")
        ids = tuple(NAMES.index(c) for c in classes)
    per_case: dict[str, dict[str, float]] = {}
    for case in cases:
        prediction = judge.predict(case.ct)
        scores = dice_per_class(prediction, case.labels.array, ids, case.annotated)
        per_case[case.case_id] = {NAMES[c]: d for c, d in scores.items()}
    per_class: dict[str, dict] = {}
    for c in ids:
        values = [scores[NAMES[c]] for scores in per_case.values() if NAMES[c] in scores]
        if values:
            per_class[NAMES[c]] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "cases": len(values)}
    means = [v["mean"] for v in per_class.values()]
    return {"per_class": per_class, "per_case": per_case, "mean": float(np.mean(means)) if means else None}
