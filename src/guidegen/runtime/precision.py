"""Sampling precision chosen by what the hardware executes natively.

bf16 autocast runs our UNets 2–3× faster than fp32 on CPUs with AMX and ~1.3–2× faster on
AVX512-BF16, but on a CPU without either PyTorch *emulates* bf16: one 64-channel 3×3 convolution
took 2.35 s in bf16 against 0.043 s in fp32 on a 2-core AVX2 EPYC (issue 23), and the demo took
over 40 minutes. So ``"auto"`` picks bf16 only where it is native, and confirms that with a
micro-benchmark, because a capability flag can say "supported" for a path that is still slow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

import torch

from guidegen.settings import PRECISIONS

__all__ = ["PRECISIONS", "PRECISION_ENV", "autocast", "cpu_capabilities", "native_bf16", "resolve_precision"]

#: Environment variable that replaces "auto" with a fixed precision.
PRECISION_ENV = "GUIDEGEN_PRECISION"

_LOG = logging.getLogger(__name__)


def cpu_capabilities() -> dict[str, object]:
    """What this CPU offers for our kernels, as PyTorch sees it (names as in /proc/cpuinfo)."""
    cpu = torch.cpu
    flag = lambda name: bool(getattr(cpu, name, lambda: False)())  # noqa: E731  (private probes may vanish)
    return {
        "aten_kernels": torch.backends.cpu.get_cpu_capability(),  # "AVX2", "AVX512", …
        "avx2": flag("_is_avx2_supported"),
        "avx512": flag("_is_avx512_supported"),
        "avx512_bf16": flag("_is_avx512_bf16_supported"),
        "amx": flag("_is_amx_tile_supported"),
        # oneDNN's own answer: False when its ISA is capped (ONEDNN_MAX_CPU_ISA) below bf16.
        "onednn_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str = "cpu") -> bool:
    """Whether bf16 autocast is native (and not slower than fp32) on this device type.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN must report bf16 support (AVX512-BF16
    or AMX, ISA cap respected), and a convolution must not run much slower in bf16 than in fp32
    (`_bf16_not_slower`, a ~0.05 s one-off check, cached for the process).
    """
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    if not cpu_capabilities()["onednn_bf16"]:
        return False
    return _bf16_not_slower()


def _bf16_not_slower() -> bool:
    """Whether bf16 is not much slower than fp32 on a 32-channel convolution.

    Emulated bf16 is 10-100x slower than fp32 and native bf16 faster, so the line is drawn at 1.5x:
    far from both, so that a busy machine (another process taking a core) cannot tip the decision.
    Calls alternate and the best of five is kept, for the same reason.
    """
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(2, 32, 64, 64)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    with torch.inference_mode():
        for _ in range(6):
            for name in best:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                    start = time.perf_counter()
                    conv(x)
                    best[name] = min(best[name], time.perf_counter() - start)
    _LOG.debug("bf16 check: conv %.2f ms fp32, %.2f ms bf16", best["fp32"] * 1e3, best["bf16"] * 1e3)
    return best["bf16"] <= 1.5 * best["fp32"]


def resolve_precision(precision: str | None, device: torch.device | str = "cpu") -> str:
    """The precision to run with: ``"auto"`` (or ``None``) → ``"bf16"`` where native, else ``"fp32"``,
    unless ``$GUIDEGEN_PRECISION`` names a precision (a site-wide choice; the test suite uses fp32).

    An explicit ``"fp32"``, ``"bf16"`` or ``"fp16"`` is returned as is (fp16 on a CPU is allowed,
    as in PyTorch, though slow).
    """
    if precision is None or precision == "auto":
        site = os.environ.get(PRECISION_ENV, "auto")
        if site != "auto":
            return resolve_precision(site, device)
        return "bf16" if native_bf16(torch.device(device).type) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the given device (``"auto"`` resolved first), or nothing for fp32."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
