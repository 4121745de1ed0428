"""Stage 2 of GuideGen: CT generation from a label map, slice by slice along z.

Modules: `hu` (HU ↔ model units), `config` (`ImageGeneratorConfig`), `model` (the MONAI UNet and
its inputs), `generator` (`ConditionalImageGenerator`, `sample_volume`), `any_grid` (`generate_ct`), `dataset`
(`SliceDataset`: training batches), `train` (`train_image_generator`), `validate` (per-organ mean
HU checks).

The main names are importable from here; they load lazily so that ``import guidegen.images.hu``
does not pull in MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConditionalImageGenerator": "guidegen.images.generator",
    "generate_ct": "guidegen.images.any_grid",
    "sample_volume": "guidegen.images.generator",
    "ImageGeneratorConfig": "guidegen.images.config",
    "train_image_generator": "guidegen.images.train",
    "hu_to_unit": "guidegen.images.hu",
    "unit_to_hu": "guidegen.images.hu",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'guidegen.images' has no attribute {name!r}")
