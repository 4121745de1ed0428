"""Random, replayable augmentation of GuideGen label maps (and optionally their CT).

The mask sampler learns from very few real label maps, so it needs variety that still looks like
anatomy: smooth deformations, small rigid jitter, organs that are larger or smaller than in the
source (so "enlarged spleen" exists in the training data) and inserted tumours of real shapes (so
"4 cm sigmoid colon cancer" exists).

The operators live in `guidegen.data.ops`, one per module, each drawing its parameters apart from
applying them (TorchIO's ``make_params`` / ``apply``). This module is the recipe:
`augment_case` (`augment_pair` with a CT) chains the operators with configurable probabilities
(`AugmentConfig`) and returns a JSON-able record of the parameters and of what was actually
achieved (organ volume, tumour diameter); `replay` re-applies a record, and `params_to_json` /
`params_from_json` convert one step's parameters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from guidegen.data.ops.base import check_inputs, jsonable, params_to_json
from guidegen.data.ops.elastic import ElasticDeformation, ElasticParams
from guidegen.data.ops.jitter import JitterParams, RigidJitter
from guidegen.data.ops.scaling import OrganScaling, ScalingParams
from guidegen.data.ops.tumour import TumourInsertion, TumourParams, TumourSpec
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import NAMES

__all__ = [
    "RECORD_VERSION",
    "AugmentConfig",
    "Params",
    "augment_case",
    "augment_pair",
    "params_from_json",
    "params_to_json",
    "replay",
]

RECORD_VERSION = 1

Params = ElasticParams | JitterParams | ScalingParams | TumourParams


_TRANSFORMS: dict[str, type] = {
    "ElasticDeformation": ElasticDeformation,
    "RigidJitter": RigidJitter,
    "OrganScaling": OrganScaling,
    "TumourInsertion": TumourInsertion,
}


def params_from_json(kind: type[Params] | str, data: dict[str, Any]) -> Params:
    """Rebuild a parameter dataclass from `params_to_json` output.

    Args:
        kind: the dataclass or its transform's name (``"ElasticDeformation"`` …).
        data: the JSON dictionary.

    Raises:
        ValueError: unknown ``kind`` or fields.
    """
    cls = _TRANSFORMS[kind].params_type if isinstance(kind, str) and kind in _TRANSFORMS else kind
    if not isinstance(cls, type) or cls not in (ElasticParams, JitterParams, ScalingParams, TumourParams):
        raise ValueError(f"kind must be a parameter class or one of {', '.join(_TRANSFORMS)}, got {kind!r}")
    names = {f.name for f in fields(cls)}
    extra = set(data) - names
    if extra:
        raise ValueError(f"data has fields {sorted(extra)} that {cls.__name__} does not know")

    def tup(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    values = {k: tup(v) for k, v in data.items()}
    if cls is TumourParams:
        values["tumours"] = tuple(TumourSpec(**{k: tup(v) for k, v in t.items()}) for t in data["tumours"])
    return cls(**values)


def _class_volumes_ml(labels: Volume) -> dict[str, float]:
    counts = np.bincount(labels.array.ravel(), minlength=256)
    return {NAMES[i]: round(float(counts[i]) * labels.voxel_volume_ml, 3) for i in range(1, len(NAMES)) if counts[i]}


@dataclass(frozen=True)
class AugmentConfig:
    """Which transforms `augment_case` applies, with what probability, in this order.

    Global geometry comes first and anatomy changes last, so that the volumes and diameters the
    record reports are those of the final map (a later deformation would change them slightly).

    Attributes:
        elastic, p_elastic: `ElasticDeformation` settings and probability (``None``: never).
        jitter, p_jitter: `RigidJitter` …
        scaling, p_scaling, max_scalings: `OrganScaling`; each of up to ``max_scalings`` draws
            (distinct organs) happens with probability ``p_scaling``.
        tumour, p_tumour: `TumourInsertion` (default bank loaded on first use).
    """

    elastic: ElasticDeformation | None = field(default_factory=ElasticDeformation)
    p_elastic: float = 0.8
    jitter: RigidJitter | None = field(default_factory=RigidJitter)
    p_jitter: float = 0.8
    scaling: OrganScaling | None = field(default_factory=OrganScaling)
    p_scaling: float = 0.5
    max_scalings: int = 2
    tumour: TumourInsertion | None = field(default_factory=TumourInsertion)
    p_tumour: float = 0.4

    def __post_init__(self) -> None:
        for name in ("p_elastic", "p_jitter", "p_scaling", "p_tumour"):
            p = getattr(self, name)
            if not (0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if not 0 <= self.max_scalings <= 10:
            raise ValueError(f"max_scalings must be between 0 and 10, got {self.max_scalings}")

    def transform(self, name: str) -> Any:
        """The configured instance for a transform name (a default one where not configured)."""
        attribute = {
            "ElasticDeformation": "elastic",
            "RigidJitter": "jitter",
            "OrganScaling": "scaling",
            "TumourInsertion": "tumour",
        }.get(name)
        if attribute is None:
            raise ValueError(f"name must be one of {', '.join(_TRANSFORMS)}, got {name!r}")
        return getattr(self, attribute) or _TRANSFORMS[name]()


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()[:16]


def augment_pair(
    labels: Volume, ct: Volume | None, rng: np.random.Generator | int, config: AugmentConfig | None = None
) -> tuple[Volume, Volume | None, dict[str, Any]]:
    """`augment_case` with a CT on the same grid, transformed consistently where that makes sense.

    Returns:
        (labels, ct, record); see `augment_case`.
    """
    config = config or AugmentConfig()
    rng = np.random.default_rng(rng)
    check_inputs(labels, ct)
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "input_sha256": _digest(labels.array),
        "shape": list(labels.shape),
        "spacing_mm": [round(s, 4) for s in labels.spacing],
    }
    start = len(labels.meta.get("augmentations", []))
    current, current_ct = labels, ct
    chain: list[tuple[Any, float]] = [(config.elastic, config.p_elastic), (config.jitter, config.p_jitter)]
    chain += [(config.scaling, config.p_scaling)] * config.max_scalings
    chain += [(config.tumour, config.p_tumour)]
    scaled: set[str] = set()
    for transform, p in chain:
        if transform is None or rng.random() >= p or not transform.applicable(current):
            continue
        if isinstance(transform, OrganScaling):
            left = [o for o in transform.present(current) if o not in scaled]
            if not left:
                continue
            params = transform.make_params(rng, current, organ=left[int(rng.integers(len(left)))])
            scaled.add(params.organ)
        else:
            params = transform.make_params(rng, current)
        current, current_ct = transform.apply(current, params, current_ct)
    record["steps"] = current.meta.get("augmentations", [])[start:]
    record["volumes_ml"] = _class_volumes_ml(current)
    return current, current_ct, jsonable(record)


def augment_case(
    labels: Volume, rng: np.random.Generator | int, config: AugmentConfig | None = None
) -> tuple[Volume, dict[str, Any]]:
    """Apply a random chain of augmentations to a label map.

    Args:
        labels: GuideGen label map, (X, Y, Z) uint8, any spacing.
        rng: random generator (or an integer seed).
        config: transforms and probabilities; default `AugmentConfig()`.

    Returns:
        (labels, record): the augmented map (same grid) and a JSON-serialisable record::

            {"version": 1, "input_sha256": ..., "shape": [...], "spacing_mm": [...],
             "steps": [{"transform": "OrganScaling", "params": {...}, "result": {...}}, ...],
             "volumes_ml": {"liver": ..., ...}}

        ``result`` holds what was achieved (e.g. ``achieved_volume_factor``, tumour
        ``diameter_mm``); `replay` re-applies ``steps``.
    """
    out, _, record = augment_pair(labels, None, rng, config)
    return out, record


def replay(
    labels: Volume,
    record: dict[str, Any],
    ct: Volume | None = None,
    config: AugmentConfig | None = None,
    check_input: bool = True,
) -> tuple[Volume, Volume | None]:
    """Re-apply the steps of an `augment_case` record (no randomness involved).

    Args:
        labels: the same input map the record was made from.
        record: the record (or its JSON round trip).
        ct: optional CT on the labels' grid.
        config: supplies the tumour shape bank (and site_of); default `AugmentConfig()`.
        check_input: refuse a ``labels`` whose content differs from the recorded input.

    Raises:
        ValueError: record of another version, other input, or unknown transforms.
    """
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"record has version {record.get('version')!r}; this code replays {RECORD_VERSION}")
    if check_input and record.get("input_sha256") not in (None, _digest(labels.array)):
        raise ValueError("labels differ from the map the record was made from (input_sha256)")
    config = config or AugmentConfig()
    for step in record.get("steps", []):
        name = step.get("transform")
        if name not in _TRANSFORMS:
            raise ValueError(f"record step names an unknown transform {name!r}")
        params = params_from_json(name, step["params"])
        labels, ct = config.transform(name).apply(labels, params, ct)
    return labels, ct
