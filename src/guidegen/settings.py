"""How a generation run samples, in one frozen, validated value: `GenerationSettings`.

The command line builds one from its options and hands it whole to `guidegen.pipeline.GuideGen`,
which hands it to both stages; ``run.json`` and ``case.json`` store it as it is. Every option is
checked once, here, when the value is made, with a one-line `InputError` naming the option, so a
bad request fails before any model loads (the idea of diffusers' ``check_inputs``).

The request checks that need no model (prompt text, seed range) live here too. Nothing here
imports torch, so the command line can check a request in a fraction of a second.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guidegen.errors import InputError
from guidegen.terms import PHASES

__all__ = [
    "BACKENDS",
    "FORMATS",
    "DatasetRequest",
    "GenerationSettings",
    "MAX_GUIDANCE",
    "MAX_IMAGE_STEPS",
    "MAX_CASES",
    "MAX_PROMPT_CHARS",
    "PRECISIONS",
    "SEED_RANGE",
    "check_prompt",
    "check_seed",
    "check_threads",
    "item_seeds",
    "read_prompts_file",
]

#: Precisions a user may ask for; ``"auto"`` is resolved by `guidegen.runtime.resolve_precision`.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: Backends a user may ask for; ``"auto"`` is resolved by `guidegen.runtime.compile_network`.
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
#: The placement stage's switches (`guidegen.masks.placement`): the first value of each is the
#: placement stage at work, ``"network"`` leaves the map as the network drew it.
TUMOUR_PLACEMENTS: tuple[str, ...] = ("insert", "network", "learned")
ORGAN_SIZES: tuple[str, ...] = ("all", "scale", "network")
AORTA_PLACEMENTS: tuple[str, ...] = ("tube", "network")

#: Longest prompt accepted by a generating command: the text encoder reads 48–64 tokens, and the
#: parser is linear time, but a prompt file of megabyte lines is a mistake worth stopping early.
MAX_PROMPT_CHARS = 2000
#: Most image flow steps per slice accepted (the models use 2–50): a typo like ``10**9`` should
#: fail at once rather than run for ever.
MAX_IMAGE_STEPS = 1000
#: Largest classifier-free guidance scale accepted (the models use 1–5).
MAX_GUIDANCE = 50.0
#: Seeds torch's generators accept; item i of a request uses seed + i.
SEED_RANGE = (-(2**63), 2**64 - 1)
#: Most cases one request may ask for (a typo like ``-n 1000000`` should fail at once).
MAX_CASES = 1_000_000
#: What `guidegen generate` writes: case folders (NIfTI), plus an nnU-Net v2 raw dataset, or plus
#: a DICOM CT series and DICOM-SEG per case.
FORMATS: tuple[str, ...] = ("nifti", "nnunet", "dicom")


def _whole(value: Any, option: str, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(option, f"must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        raise InputError(
            option,
            f"must be {low} to {high}, got {value}" if high is not None else f"must be at least {low}, got {value}",
        )


def _scale(value: Any, option: str) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not 0.0 <= value <= MAX_GUIDANCE
    ):
        raise InputError(option, f"must be between 0 and {MAX_GUIDANCE:g}, got {value!r}")


def _choice(value: Any, option: str, choices: tuple[str, ...], optional: bool = True) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise InputError(option, f"must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of a generation run; ``None`` means "the model's own setting".

    Attributes:
        steps: mask sampler steps (network evaluations; at most the model's diffusion steps,
            checked when the model is known).
        guidance: mask sampler classifier-free guidance scale (1 = conditional only).
        image_steps: image generator flow steps per slice.
        image_guidance: image generator guidance scale.
        phase: contrast phase of every case (`guidegen.terms.PHASES`), overriding the prompt's.
        tumour_placement: "insert" (stated tumours are real tumour shapes placed into the sampled
            anatomy), "network" (the network's own tumours) or "learned" (the network's tumours
            removed and the stated ones drawn by the learned tumour stage, `guidegen.masks.tumour_stage`).
        organ_sizes: "scale" (organs the prompt sizes are given that size), "all" (as well, the solid
            organs the prompt leaves unchanged are given a normal size when they are not) or "network".
        aorta_placement: "tube" (the aorta redrawn as one tube of normal calibre) or "network".
        real_start: ``None`` samples the masks from noise; a strength in (0, 1] starts the mask
            sampler from a deformed real map of its bank carried forward to that fraction of the
            diffusion (SDEdit; `guidegen.masks.start_maps`).
        levels: set tumour levels by host and phase, flatten an unenhanced aorta and IVC to
            real unenhanced blood, the portal vein to its phase's typical level, bone to real bone
            by depth below its surface, liver, spleen, kidneys and an unenhanced pancreas inside the
            phase's published range (`guidegen.images.levels.calibrate_levels`, as ``generate-ct`` does);
            ``False`` keeps the image generator's own levels.
        precision: "auto" (bf16 only where the hardware runs it natively), "fp32", "bf16", "fp16".
        backend: "auto", "torch", "onnxruntime" or "openvino" (`guidegen.runtime`).

    Options are named as on the command line (``--image-steps``) in every error.
    """

    steps: int | None = None
    guidance: float | None = None
    image_steps: int | None = None
    image_guidance: float | None = None
    phase: str | None = None
    tumour_placement: str | None = None
    organ_sizes: str | None = None
    aorta_placement: str | None = None
    real_start: float | None = None
    levels: bool = True
    precision: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        _whole(self.steps, "--steps", 1)
        _scale(self.guidance, "--guidance")
        _whole(self.image_steps, "--image-steps", 1, MAX_IMAGE_STEPS)
        _scale(self.image_guidance, "--image-guidance")
        _choice(self.phase, "--phase", PHASES)
        _choice(self.tumour_placement, "--tumour-placement", TUMOUR_PLACEMENTS)
        _choice(self.organ_sizes, "--organ-sizes", ORGAN_SIZES)
        _choice(self.aorta_placement, "--aorta-placement", AORTA_PLACEMENTS)
        if self.real_start is not None and (
            isinstance(self.real_start, bool)
            or not isinstance(self.real_start, numbers.Real)
            or not math.isfinite(self.real_start)
            or not 0.0 < self.real_start <= 1.0
        ):
            raise InputError("--real-start", f"must be a strength above 0 and at most 1, got {self.real_start!r}")
        if not isinstance(self.levels, bool):
            raise InputError("--levels", f"must be true or false, got {self.levels!r}")
        _choice(self.precision, "--precision", PRECISIONS, optional=False)
        _choice(self.backend, "--backend", BACKENDS, optional=False)

    def replace(self, **changes: Any) -> GenerationSettings:
        """A copy with some settings changed (validated again); unknown names are refused."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def request_dict(self) -> dict[str, Any]:
        """The settings that decide a case's contents (not how the networks run), for ``run.json``:
        a run may be completed on another machine, with another precision or backend."""
        return {k: v for k, v in self.to_dict().items() if k not in ("precision", "backend")}

    @classmethod
    def from_options(cls, settings: GenerationSettings | None = None, **options: Any) -> GenerationSettings:
        """``settings`` (default: all the models' own) with ``options`` applied: the API's
        keyword arguments (``image_steps=4``) and a settings object mean the same."""
        base = settings if settings is not None else cls()
        if not isinstance(base, GenerationSettings):
            raise TypeError(f"settings must be a GenerationSettings, got {type(base).__name__}")
        return base.replace(**options) if options else base


@dataclass(frozen=True)
class DatasetRequest:
    """Everything that decides the cases' contents; stored as ``run.json``."""

    prompts: tuple[tuple[str, int], ...]
    seed: int = 0
    settings: GenerationSettings = GenerationSettings()
    format: str = "nifti"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError("--format", f"must be one of {', '.join(FORMATS)}, got {self.format!r}")
        total = sum(int(c) for _, c in self.prompts)
        if total > MAX_CASES:
            raise InputError("-n", f"asks for {total:,} cases; at most {MAX_CASES:,} per request")
        if total < 1:
            raise InputError("--prompt", "no cases requested")
        check_seed(self.seed, total)

    def to_dict(self, model_info: dict) -> dict:
        # Precision and backend are not part of the request: a run may be completed on another machine.
        return {
            "prompts": [{"prompt": p, "count": c} for p, c in self.prompts],
            "seed": self.seed,
            "settings": self.settings.request_dict(),
            "format": self.format,
            "model": {k: model_info.get(k) for k in ("model_id", "version")},
        }


def check_prompt(prompt: object, where: str | Path = "--prompt") -> str:
    """Refuse empty, non-text or overlong prompts; replace control characters and normalise spaces."""
    if not isinstance(prompt, str):
        raise InputError(where, f"must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(where, f"is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in prompt).split())
    if not cleaned:
        raise InputError(where, "is empty" if not prompt.strip() else "has no printable characters")
    return cleaned


def check_seed(seed: int, count: int = 1, where: str = "--seed") -> int:
    """Refuse a seed that torch cannot take for all ``count`` items (seed, seed + 1, …)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(where, f"must be a whole number, got {seed!r}")
    seed = int(seed)
    if not (SEED_RANGE[0] <= seed and seed + count - 1 <= SEED_RANGE[1]):
        limit = "2**64 - 1" if count == 1 else f"2**64 - {count} (item i uses seed + i)"
        raise InputError(where, f"must be from -2**63 to {limit}, got {seed}")
    return seed


def item_seeds(seed: int | Sequence[int], count: int, where: str = "--seed") -> list[int]:
    """The seed rule of every stage: item ``i`` of a request uses ``seed + i``, or give one seed per
    item. An item then depends only on its own seed, never on what else is in the batch."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise InputError(where, f"need one seed or one per item ({count}), got {len(seeds)}")
    return seeds


def check_threads(threads: int | None, where: str = "--threads") -> int | None:
    """``None`` (all cores) or a positive number of CPU threads."""
    _whole(threads, where, 1)
    return threads


def read_prompts_file(path: str | Path) -> list[tuple[str, int]]:
    """Prompts and counts from a text file (one prompt a line; ``#`` comments) or a CSV.

    A CSV (``.csv``) needs a header with a ``prompt`` column and may have a ``count`` (or ``n``)
    column; without one every prompt is generated once.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(path, "is not UTF-8 text") from None
    if "\0" in text:
        raise InputError(path, "is not a text file (it contains NUL bytes)")
    entries: list[tuple[str, int]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "prompt" not in fields:
            raise InputError(path, "CSV needs a header row with a 'prompt' column (and optionally 'count')")
        reader.fieldnames = fields
        count_key = "count" if "count" in fields else "n" if "n" in fields else None
        for line, row in enumerate(reader, start=2):
            prompt = check_prompt(row.get("prompt") or "", f"{path}: line {line}")
            count = 1
            if count_key is not None:
                value = (row.get(count_key) or "").strip()
                try:
                    count = int(value)
                except ValueError:
                    raise InputError(path, f"line {line}: count {value!r} is not a whole number") from None
                if count < 1:
                    raise InputError(path, f"line {line}: count must be at least 1, got {count}")
            entries.append((prompt, count))
    else:
        for line, content in enumerate(text.splitlines(), start=1):
            if not content.strip() or content.lstrip().startswith("#"):
                continue
            entries.append((check_prompt(content, f"{path}: line {line}"), 1))
    if not entries:
        raise InputError(path, "holds no prompts")
    if sum(c for _, c in entries) > MAX_CASES:
        raise InputError(path, f"asks for more than {MAX_CASES} cases")
    return entries
