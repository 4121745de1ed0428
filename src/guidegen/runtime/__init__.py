"""How the two networks run: numerical precision chosen by the hardware, and the inference backend.

* `resolve_precision` turns ``"auto"`` into ``"bf16"`` only where bf16 is native (a CUDA GPU with
  bf16, or a CPU whose oneDNN build executes bf16: AVX512-BF16 or AMX), and ``"fp32"`` elsewhere:
  on a CPU without native bf16 PyTorch emulates it, 10–100× slower than fp32.
* `compile_network` wraps a network for sampling in the chosen backend: PyTorch (autocast), or an
  ONNX export of it run by ONNX Runtime or OpenVINO (``pip install "guidegen[fast]"``), checked
  against PyTorch fp32 on first use and cached next to the model, keyed by the weights' digest.
"""

from guidegen.errors import InputError
from guidegen.runtime.backends import (BACKENDS, CompiledNetwork, NetworkSpec, available_backends,
                                       compile_network)
from guidegen.runtime.precision import PRECISIONS, cpu_capabilities, native_bf16, resolve_precision

__all__ = ["BACKENDS", "PRECISIONS", "CompiledNetwork", "NetworkSpec", "available_backends", "check_runtime_options",
           "compile_network", "cpu_capabilities", "native_bf16", "resolve_precision"]


def check_runtime_options(precision: str, backend: str) -> None:
    """Refuse an unknown ``--precision`` or ``--backend`` in one line, before any model loads."""
    if precision not in PRECISIONS:
        raise InputError("--precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise InputError("--backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
