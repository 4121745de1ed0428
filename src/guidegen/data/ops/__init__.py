"""Label-map operators for augmentation and for inference-time placement, one per module.

`ElasticDeformation` (`elastic`), `RigidJitter` (`jitter`), `OrganScaling` (`scaling`) and
`TumourInsertion` (`tumour`) with its bank of real shapes (`tumour_bank`); what they share is in
`base` and `warp`. Each draws parameters (``make_params``) apart from applying them (``apply``);
the augmentation recipe that chains them, and replays its records, is `guidegen.data.augment`.
"""

from guidegen.data.ops.base import SOFT_CLASSES, Transform, params_to_json, rotation_matrix, soft_ids
from guidegen.data.ops.elastic import ElasticDeformation, ElasticParams
from guidegen.data.ops.jitter import MAX_JITTER_DEGREES, JitterParams, RigidJitter
from guidegen.data.ops.scaling import SCALABLE_ORGANS, OrganScaling, ScalingParams
from guidegen.data.ops.tumour import (
    COLON_SEGMENTS,
    COUNT_RANGES,
    DIAMETER_RANGES_MM,
    SiteOf,
    TumourInsertion,
    TumourParams,
    TumourSpec,
)
from guidegen.data.ops.tumour_bank import DEFAULT_TUMOUR_SOURCES, TumourShape, default_tumour_shapes, load_tumour_shapes

__all__ = [
    "COLON_SEGMENTS",
    "COUNT_RANGES",
    "DEFAULT_TUMOUR_SOURCES",
    "DIAMETER_RANGES_MM",
    "MAX_JITTER_DEGREES",
    "SCALABLE_ORGANS",
    "SOFT_CLASSES",
    "ElasticDeformation",
    "ElasticParams",
    "JitterParams",
    "OrganScaling",
    "RigidJitter",
    "ScalingParams",
    "SiteOf",
    "Transform",
    "TumourInsertion",
    "TumourParams",
    "TumourShape",
    "TumourSpec",
    "default_tumour_shapes",
    "load_tumour_shapes",
    "params_to_json",
    "rotation_matrix",
    "soft_ids",
]
