from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests run on 2 cores next to each other (pytest -n 2): one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# "auto" precision and backend depend on the CPU and on timings: the suite pins them, so that its
# outputs are the same on every machine; tests/test_runtime.py tests "auto" itself.
os.environ.setdefault("GUIDEGEN_PRECISION", "fp32")
os.environ.setdefault("GUIDEGEN_BACKEND", "torch")
# ONNX exports and backend verdicts of the tests' models go to a folder of their own, not ~/.cache.
os.environ.setdefault("GUIDEGEN_CACHE", tempfile.mkdtemp(prefix="guidegen-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "data" / "real"


@pytest.fixture(scope="session")
def real() -> Path:
    """The bundled real CT data (see data/real/SOURCES.md)."""
    if not REAL.exists():
        pytest.fail(f"bundled data missing: {REAL}")
    return REAL
