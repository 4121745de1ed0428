"""How the two networks run: numerical precision chosen by the hardware, and the inference backend.

* `resolve_precision` turns ``"auto"`` into ``"bf16"`` only where bf16 is native (a CUDA GPU with
  bf16, or a CPU whose oneDNN build executes bf16: AVX512-BF16 or AMX), and ``"fp32"`` elsewhere:
  on a CPU without native bf16 PyTorch emulates it, 10–100× slower than fp32.
* `compile_network` wraps a network for sampling in the chosen backend: PyTorch (autocast), or an
  ONNX export of it run by ONNX Runtime or OpenVINO (``pip install "guidegen[fast]"``), checked
  against PyTorch fp32 on first use and cached next to the model, keyed by the weights' digest.

The names a user may ask for (`guidegen.settings.PRECISIONS`, `guidegen.settings.BACKENDS`) are
checked by `guidegen.settings.GenerationSettings` before anything here is imported.
"""

from guidegen.runtime.backends import CompiledNetwork, NetworkSpec, available_backends, compile_network
from guidegen.runtime.precision import cpu_capabilities, native_bf16, resolve_precision

__all__ = [
    "CompiledNetwork",
    "NetworkSpec",
    "available_backends",
    "compile_network",
    "cpu_capabilities",
    "native_bf16",
    "resolve_precision",
]
