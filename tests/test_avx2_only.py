"""The AVX2-only stand-in of `benchmarks/avx2_only` (issue 23): a machine with AVX-512 answers like an
AVX2-only CPU, so `auto` precision and every backend's kernel choice can be checked without mocking.

Runs only where the stand-in can: a C compiler and Linux CPUID faulting (the `cpuid_fault` flag).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "avx2_only" / "run.sh"


def _faulting() -> bool:
    try:
        return any("cpuid_fault" in line.split() for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or not _faulting() or sys.platform != "linux",
    reason="needs a C compiler and CPUID faulting (Linux, /proc/cpuinfo flag cpuid_fault)",
)


def _run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """``python -c code`` under the stand-in, its library built into the test's own cache folder."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("GUIDEGEN_PRECISION", None)  # the suite pins fp32; this asks what auto picks
    return subprocess.run([str(RUN), sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


QUERY = """
import json
from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
from guidegen.runtime.precision import cpu_capabilities, resolve_precision
print(json.dumps({**cpu_capabilities(), "auto": resolve_precision("auto"), "numpy_avx512f": numpy_features["AVX512F"]}))
"""


def test_the_stand_in_hides_avx512_from_every_dispatcher_and_auto_picks_fp32(tmp_path):
    masked = _run(tmp_path, QUERY)
    assert masked.returncode == 0, masked.stderr
    seen = json.loads(masked.stdout.strip().splitlines()[-1])
    assert seen["aten_kernels"] == "AVX2" and seen["avx2"]
    assert not (seen["avx512"] or seen["avx512_bf16"] or seen["amx"] or seen["onednn_bf16"] or seen["numpy_avx512f"])
    assert seen["auto"] == "fp32"


def test_a_real_segmentation_fault_still_kills_the_process(tmp_path):
    # The stand-in handles SIGSEGV for CPUID; any other fault must end the process as before, also
    # when Python's faulthandler was installed after the stand-in (it then runs as the next handler).
    crash = _run(tmp_path, "import ctypes; ctypes.string_at(0)")
    assert crash.returncode == -signal.SIGSEGV
    reported = _run(tmp_path, "import ctypes, faulthandler; faulthandler.enable(); ctypes.string_at(0)")
    assert reported.returncode == -signal.SIGSEGV
    assert "Segmentation fault" in reported.stderr
