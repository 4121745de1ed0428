"""Where GuideGen finds its files, and the environment variables that move them.

In a source checkout the shipped model is ``models/default`` and the bundled real data
``data/real``; an installed package without them is pointed at copies with ``GUIDEGEN_MODEL`` and
``GUIDEGEN_DATA``. Read at call time, so a changed environment (a test, a notebook) is honoured.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "DATA_ENV", "MODEL_ENV", "REPO_ROOT", "cache_root", "default_data_dir", "default_model_dir"]

#: The source checkout: ``src/guidegen/paths.py`` → two folders up from the package.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Folder of the default model (``mask_sampler/`` + ``image_generator/``).
MODEL_ENV = "GUIDEGEN_MODEL"
#: Folder of the bundled real data (``data/real`` in a checkout).
DATA_ENV = "GUIDEGEN_DATA"
#: Root of GuideGen's caches (compiled networks when the model folder is read-only).
CACHE_ENV = "GUIDEGEN_CACHE"


def default_model_dir() -> Path:
    """The shipped default model: ``$GUIDEGEN_MODEL`` or ``models/default`` in the checkout."""
    return Path(os.environ.get(MODEL_ENV) or REPO_ROOT / "models" / "default")


def default_data_dir() -> Path:
    """The bundled real data: ``$GUIDEGEN_DATA`` or ``data/real`` in the checkout."""
    return Path(os.environ.get(DATA_ENV) or REPO_ROOT / "data" / "real")


def cache_root() -> Path:
    """``$GUIDEGEN_CACHE`` or ``~/.cache/guidegen``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "guidegen")
