from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on 2 cores next to each other (pytest -n 2): one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "data" / "real"


@pytest.fixture(scope="session")
def real() -> Path:
    """The bundled real CT data (see data/real/SOURCES.md)."""
    if not REAL.exists():
        pytest.fail(f"bundled data missing: {REAL}")
    return REAL
