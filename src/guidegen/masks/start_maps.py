"""Real label maps to start the mask sampler from (SDEdit; issue 24).

With a handful of real maps the network alone draws blobby organs and broken bowel. Instead of
pure noise, the reverse process can start from a real map of the bank, deformed (the training
augmentation's elastic field and rigid jitter, drawn from the map's seed) and carried forward to
timestep ``t = strength · T`` of the categorical forward process (`q_sample`: a fraction
``1 − ᾱ_t`` of the voxels redrawn uniformly). The network then denoises it under the prompt's
conditioning, and the placement stage acts on the result as on any sampled map. ``strength`` 1 is
sampling from noise; small values keep the real anatomy almost as it is.

The bank is a file beside the sampler's checkpoint (`START_MAPS`, with `START_MAPS_INFO` naming its
cases, their sources and the sha256 verified on load). It holds maps the evaluation never uses as
its real reference (`guidegen.masks.start_maps.build_start_maps` takes the sources it is given;
`models/default/MODEL_CARD.md` lists the shipped bank's cases). The maps are on the sampler's grid,
z-aligned as in training (`guidegen.masks.train.load_base_cases`), with no unknown voxel left
(`known_everywhere`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from guidegen.data.body import complete_body
from guidegen.data.ops.elastic import ElasticDeformation
from guidegen.data.ops.jitter import RigidJitter
from guidegen.data.ops.scaling import OrganScaling, ScalingParams
from guidegen.errors import InputError
from guidegen.io.atomic import atomic_file
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, ORGANS, UNKNOWN, fold_for_model
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.placement import fill_from_nearest
from guidegen.text.measure import REFERENCE_RANGES

#: The bank's arrays (``maps``: (M, X, Y, Z) uint8) and its record (case ids, sources, sha256).
START_MAPS = "start_maps.npz"
START_MAPS_INFO = "start_maps.json"
#: Seed-sequence prefix of a start map's choice and deformation ("strt").
_START_STREAM = 0x73747274


def start_steps(steps: int, strength: float) -> int:
    """Network evaluations from a real start: the strided sampler's spacing kept, so ``strength`` of ``steps``."""
    return max(1, min(steps, round(steps * strength)))


def build_start_maps(
    config: MaskSamplerConfig,
    sources: Sequence[str | Path],
    cache: str | Path,
    exclude: Sequence[str] = (),
    max_unknown: float = 0.5,
) -> tuple[np.ndarray, list[str]]:
    """Real maps of ``sources`` (folders `guidegen prepare` reads) on the sampler's grid.

    Only maps that annotate every organ and the colon are kept (a start map's unannotated organ
    would be drawn as whatever covers it), and only where at most ``max_unknown`` of the grid is
    unknown (a narrow field of view starts most voxels from noise). ``exclude``: case ids (or their
    prefixes) left out, e.g. the maps an evaluation holds out.

    Returns:
        ((M, X, Y, Z) uint8 maps folded to the config's classes, their case ids).
    """
    from guidegen.masks.train import load_base_cases  # training code: imported only to build a bank

    cfg = dataclasses.replace(config, data_sources=[str(s) for s in sources], prepared_cache=str(cache))
    maps, ids = [], []
    for case in load_base_cases(cfg):
        if any(case["case_id"].startswith(x) for x in exclude):
            continue
        if not set(ORGANS) | {"colon"} <= set(case["annotated"]) or (case["labels"] == UNKNOWN).mean() > max_unknown:
            continue
        # A map without a CT has no body outline: its unlabelled tissue is background, which a start
        # map would carry into the sample as air inside the patient. Give it the derived outline.
        grid = np.diag([*map(float, config.spacing), 1.0])
        completed = complete_body(Volume(case["labels"].copy(), grid, "labels"), case["annotated"]).labels
        folded = fold_for_model(np.asarray(completed.array), config.num_classes).astype(np.uint8)
        maps.append(normal_sizes(known_everywhere(folded), config.spacing))
        ids.append(case["case_id"])
    if not maps:
        raise InputError(None, f"no source map annotates every organ and the colon with ≤ {max_unknown:.0%} unknown")
    return np.stack(maps), ids


def known_everywhere(labels: np.ndarray) -> np.ndarray:
    """The map with its unknown voxels (beyond the scan's field of view) filled.

    The network was never taught anything there (its training loss ignores unknown voxels), so
    noise left in them comes back as specks of vessels and organs at the grid's edges. Each takes
    the class of the nearest known voxel, except that no organ is extended beyond what the scan
    showed: background stays background, anything else becomes body for the network to fill in.
    """
    unknown = labels == UNKNOWN
    if not unknown.any():
        return labels
    filled = fill_from_nearest(labels, unknown)
    organ = (filled != ID["background"]) & (filled != ID["body"])
    return np.where(unknown & organ, np.uint8(ID["body"]), filled).astype(np.uint8)


def normal_sizes(labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The map with each organ of `REFERENCE_RANGES` outside its normal volume scaled into it.

    A start map is a healthy template: what the prompt does not state must not come out enlarged
    or shrunk because the bank's subject was (s0004 has a 1.1 L spleen). The organ is scaled to
    the middle of its normal range, as `OrganScaling` scales it in training.
    """
    volume = Volume(labels.copy(), np.diag([*map(float, spacing), 1.0]), "labels")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    scaling = OrganScaling()
    for organ, ref in REFERENCE_RANGES.items():
        ml = float((volume.array == ID[organ]).sum()) * voxel_ml
        low = ref.low_ml if ref.low_ml is not None else 0.0
        if ml == 0.0 or low <= ml <= ref.high_ml:
            continue
        target = (low + ref.high_ml) / 2.0
        factor = float(np.clip(target / ml, 0.1, 10.0))
        volume, _ = scaling.apply(volume, ScalingParams(organ=organ, volume_factor=round(factor, 4)))
    return np.asarray(volume.array, dtype=np.uint8)


def save_start_maps(folder: str | Path, maps: np.ndarray, case_ids: Sequence[str], note: str = "") -> Path:
    """Write the bank beside a sampler checkpoint (atomically; an existing bank is replaced)."""
    folder = Path(folder)
    with atomic_file(folder / START_MAPS, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, maps=maps.astype(np.uint8))
    info = {
        "case_ids": list(case_ids),
        "shape": list(maps.shape[1:]),
        "note": note,
        "sha256": hashlib.sha256((folder / START_MAPS).read_bytes()).hexdigest(),
    }
    with atomic_file(folder / START_MAPS_INFO, overwrite=True) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
    return folder / START_MAPS


def load_start_maps(folder: str | Path, config: MaskSamplerConfig) -> np.ndarray:
    """The bank beside a checkpoint, checked: (M, X, Y, Z) uint8 on the config's grid."""
    folder = Path(folder)
    path, info_path = folder / START_MAPS, folder / START_MAPS_INFO
    if not path.is_file() or not info_path.is_file():
        raise InputError(folder, f"has no {START_MAPS} (+ {START_MAPS_INFO}): this sampler cannot start from real maps")
    info = json.loads(info_path.read_text())
    if hashlib.sha256(path.read_bytes()).hexdigest() != info.get("sha256"):
        raise InputError(path, f"does not match the sha256 in {START_MAPS_INFO} (corrupted or half-copied)")
    with np.load(path) as data:
        maps = data["maps"]
    if maps.ndim != 4 or tuple(maps.shape[1:]) != tuple(config.shape) or maps.dtype != np.uint8:
        raise InputError(path, f"holds maps of shape {maps.shape[1:]}, not the sampler's {tuple(config.shape)}")
    return maps


def start_map(maps: np.ndarray, affine: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """One deformed start map for a seed: (X, Y, Z) labels and the bank index it came from.

    The choice and the deformation come from the seed's own stream, so a seed always starts from
    the same map, whatever else is in the batch.
    """
    rng = np.random.default_rng([_START_STREAM, int(seed) % 2**64])
    index = int(rng.integers(len(maps)))
    labels = Volume(maps[index].copy(), affine.copy(), "labels")
    for transform in (ElasticDeformation(), RigidJitter(max_rotation_deg=4.0, max_translation_mm=8.0)):
        labels, _ = transform.apply(labels, transform.make_params(rng, labels))
    return np.asarray(labels.array, dtype=np.uint8), index
