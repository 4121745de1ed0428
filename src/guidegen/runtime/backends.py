"""Inference backends for the two networks: PyTorch, or its ONNX export run by ONNX Runtime or OpenVINO.

On a 2-core CPU most of a case's time is the networks' forward passes (636 of the slice UNet, 25
of the 3-D mask UNet for the default model). ONNX Runtime and OpenVINO run the same graphs with
their own CPU kernels; which is fastest depends on the CPU, so ``backend="auto"`` measures.

On first use of a network in a process, `compile_network`:

1. exports the network to ONNX (fp32, batch dimension dynamic), once per weights digest;
2. checks each candidate backend against PyTorch fp32 on fixed random inputs, at the batch of
   the example and at batch 1 (a graph that baked in its batch size fails here);
3. with ``"auto"``, times the candidates that passed and takes the fastest (PyTorch included);
4. caches the ONNX file and the verdict in the cache folder (next to the model, keyed by the
   weights' digest, this CPU, the precision, the thread count and the library versions), so that
   later runs skip steps 1–3.

A backend that is not installed, fails to export, or fails its self-check is replaced by PyTorch
with one warning line. OpenVINO runs fp32 where the CPU has no bf16 even when bf16 is asked for;
the precision a backend really used is reported (`CompiledNetwork.precision`), never assumed.
ONNX Runtime's CPU kernels are fp32 only, so it always reports fp32.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from guidegen.errors import InputError
from guidegen.paths import cache_root
from guidegen.runtime.precision import autocast, cpu_capabilities, resolve_precision
from guidegen.settings import BACKENDS

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "CompiledNetwork",
    "NetworkSpec",
    "available_backends",
    "compile_network",
    "RUNTIME_CACHE",
    "cache_dirs",
    "default_cache_dir",
    "torch_threads_for",
    "weights_digest",
]

#: Environment variable that replaces "auto" with a fixed backend (a site-wide choice; the test
#: suite uses torch, so that its outputs do not depend on which backend was timed fastest).
BACKEND_ENV = "GUIDEGEN_BACKEND"
#: The optional backends, with the Python module each needs (``pip install "guidegen[fast]"``).
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: Self-check tolerance, relative to the reference output's largest magnitude (at least 1): fp32
#: graphs agree with PyTorch to ~1e-6 on the slice UNet and ~1e-5 on the mask UNet's logits; bf16
#: differs from fp32 by ~1e-2 in PyTorch itself.
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 3e-2}
#: Timed calls per candidate when ``"auto"`` chooses (after one warm-up call).
_TIMED_CALLS = 3

_LOG = logging.getLogger("guidegen.runtime")


def available_backends() -> list[str]:
    """The backends installed here (``"torch"`` always)."""
    return ["torch"] + [b for b, mod in _MODULES.items() if importlib.util.find_spec(mod) is not None]


#: Folder inside a checkpoint folder where its ONNX exports and backend verdicts are cached.
RUNTIME_CACHE = ".runtime-cache"


def cache_dirs(checkpoint: Path | None) -> tuple[Path, ...]:
    """Where a network's exports go, first writable wins: next to its checkpoint, else the user cache."""
    return ((checkpoint / RUNTIME_CACHE,) if checkpoint is not None else ()) + (default_cache_dir(),)


def default_cache_dir() -> Path:
    """``$GUIDEGEN_CACHE/runtime``, else ``~/.cache/guidegen/runtime``: used when the model's own folder
    is not writable (an installed model) or the model has no folder (built in memory)."""
    return cache_root() / "runtime"


def weights_digest(module: nn.Module, extra: str = "") -> str:
    """sha256 (hex) of a module's state dict (names, shapes, dtypes, bytes) and ``extra`` (its config)."""
    h = hashlib.sha256(extra.encode())
    for name, tensor in sorted(module.state_dict().items()):
        # reshape(-1): a channels-last weight with unit dims counts as contiguous yet has odd strides.
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class NetworkSpec:
    """A network to compile: a module whose forward takes only tensors (batch first) and returns one.

    Attributes:
        name: a file-name-safe name (``"image_generator"``, ``"mask_sampler"``).
        module: the network in eval mode, fp32 weights.
        example_inputs: one call's inputs (batch ≥ 2, so the export sees a batch dimension to free).
        input_names: one name per input.
        digest: `weights_digest` of the module (keys the cache).
        cache_dirs: where to keep the export and the verdict, first writable wins.
        channels_last: on the CPU, PyTorch runs the network with its weights and 5-D inputs in
            ``channels_last_3d`` order (oneDNN's 3-D convolutions are faster in it: the mask UNet's
            guided pair took 0.37 instead of 0.45 s in fp32 with the ISA capped at AVX2, and 0.13
            instead of 0.17 s in native bf16; converting the input alone gained little, since
            MONAI's blocks hand back the default order). The module is converted in place.
    """

    name: str
    module: nn.Module
    example_inputs: tuple[Tensor, ...]
    input_names: tuple[str, ...]
    digest: str
    cache_dirs: tuple[Path, ...] = ()
    channels_last: bool = False


class CompiledNetwork:
    """A network ready to sample with: ``net(*inputs) → float32 output`` on the inputs' device.

    Attributes:
        backend: the backend really used ("torch", "onnxruntime", "openvino").
        precision: the precision really used ("fp32", "bf16", "fp16").
        seconds_per_call: the self-check timing of the chosen backend (``None`` if not timed).
    """

    def __init__(
        self,
        call: Callable[..., Tensor],
        backend: str,
        precision: str,
        seconds_per_call: float | None = None,
        keep_alive: object = None,
    ):
        self._call = call
        self.backend = backend
        self.precision = precision
        self.seconds_per_call = seconds_per_call
        self._keep_alive = keep_alive  # e.g. the temporary folder holding an export OpenVINO reads

    def wrapped(self, wrap: Callable[[Callable[..., Tensor]], Callable[..., Tensor]]) -> CompiledNetwork:
        """The same network with its call wrapped (argument adapters), backend and precision kept."""
        return CompiledNetwork(wrap(self._call), self.backend, self.precision, self.seconds_per_call, self._keep_alive)

    def __call__(self, *inputs: Tensor) -> Tensor:
        return self._call(*inputs)

    def describe(self) -> str:
        return f"{self.backend} {self.precision}"


@contextlib.contextmanager
def torch_threads_for(network: object) -> Iterator[None]:
    """Run a sampling loop with torch on one thread when another runtime runs the network.

    Between network calls the loop does small torch operations; torch's OpenMP threads then
    spin-wait for more work and take the cores from ONNX Runtime's threads (measured: the CT stage
    took 12.6 s instead of 8.8 s on 2 cores). The runtime keeps the threads it was compiled with.
    """
    if getattr(network, "backend", "torch") == "torch":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _OneDnnConv3d(nn.Conv3d):
    """A `nn.Conv3d` that always runs oneDNN's convolution (`onednn_convolutions`)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation, self.groups)


def onednn_convolutions(module: nn.Module, copy_first: bool = True) -> nn.Module:
    """``module`` (a copy by default) with its zero-padded 3-D convolutions always run in oneDNN.

    For a batch-1 input with N·C·D·H ≤ 20480 PyTorch picks its own native 3-D convolution, about 5×
    slower than oneDNN's here: the mask UNet's levels below full resolution, on each unguided
    sampling step and each training step. With oneDNN the whole batch-1 forward took 228 instead of
    323 ms (fp32, 2 threads, AVX2 stand-in; `docs/results/fast_cpu.txt`, section 19), with the same
    output. Sampling uses a copy, because the original is exported to ONNX, which has no oneDNN
    operator. fp32 only: autocast does not cast this operator's inputs. A PyTorch built without
    oneDNN gets ``module`` back unchanged.
    """
    if not torch.backends.mkldnn.is_available():
        return module
    if copy_first:
        module = copy.deepcopy(module)
    for conv in module.modules():
        if type(conv) is nn.Conv3d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
            conv.__class__ = _OneDnnConv3d
    return module


def _torch_call(module: nn.Module, precision: str, channels_last: bool = False) -> Callable[..., Tensor]:
    if channels_last:
        module.to(memory_format=torch.channels_last_3d)
        if precision == "fp32":
            module = onednn_convolutions(module)

        def call(*inputs: Tensor) -> Tensor:
            inputs = tuple(t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t for t in inputs)
            with torch.inference_mode(), autocast(inputs[0].device, precision):
                # Back to the default order: what follows (softmax, sampling) reduces over it.
                return module(*inputs).float().contiguous()

        return call

    def call(*inputs: Tensor) -> Tensor:
        with torch.inference_mode(), autocast(inputs[0].device, precision):
            return module(*inputs).float()

    return call


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu").contiguous().numpy()


def _onnxruntime_call(onnx_path: Path, names: Sequence[str]) -> tuple[Callable[..., Tensor], str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def call(*inputs: Tensor) -> Tensor:
        out = session.run(None, {n: _to_numpy(t) for n, t in zip(names, inputs)})[0]
        return torch.from_numpy(out).to(inputs[0].device)

    return call, "fp32"


def _openvino_call(onnx_path: Path, names: Sequence[str], precision: str) -> tuple[Callable[..., Tensor], str]:
    import openvino as ov

    core = ov.Core()
    hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]
    config = {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": hint,
    }
    try:
        compiled = core.compile_model(str(onnx_path), "CPU", config)
    except RuntimeError:
        if hint == "f32":
            raise
        # Some CPUs lack kernels for a bf16 node (seen: Softmax with the ISA capped at AVX2).
        compiled = core.compile_model(str(onnx_path), "CPU", dict(config, INFERENCE_PRECISION_HINT="f32"))
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()  # e.g. "<Type: 'bfloat16'>"
    really = (
        "bf16" if ("bf16" in used or "bfloat16" in used) else "fp16" if ("f16" in used or "float16" in used) else "fp32"
    )
    request = compiled.create_infer_request()

    def call(*inputs: Tensor) -> Tensor:
        result = request.infer({n: _to_numpy(t) for n, t in zip(names, inputs)})
        return torch.from_numpy(np.array(result[compiled.output(0)], dtype=np.float32)).to(inputs[0].device)

    return call, really


def _export(spec: NetworkSpec, path: Path) -> None:
    """Export ``spec.module`` to ONNX at ``path`` (written under a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's warnings are about Python control flow we do not use
            torch.onnx.export(
                spec.module,
                spec.example_inputs,
                tmp,
                input_names=list(spec.input_names),
                output_names=["output"],
                dynamic_axes={n: {0: "batch"} for n in spec.input_names},
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _writable_dir(dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=d, prefix=".probe.", delete=True)
            probe.close()
            return d
        except OSError:
            continue
    return None


def _environment_key(precision: str) -> str:
    versions = {m: _version(m) for m in ("torch", *_MODULES.values())}
    caps = cpu_capabilities()
    return json.dumps(
        {
            "cpu": platform.processor() or platform.machine(),
            "caps": caps,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "versions": versions,
        },
        sort_keys=True,
    )


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _read_verdicts(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_verdicts(path: Path, verdicts: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(verdicts, fh, indent=1)
    os.replace(tmp, path)


def _check(
    call: Callable[..., Tensor], references: list[tuple[tuple[Tensor, ...], Tensor]], precision: str
) -> tuple[bool, float]:
    """Worst error relative to the reference's scale over the check inputs; passes below `TOLERANCE`."""
    worst = 0.0
    for inputs, ref in references:
        out = call(*inputs)
        if tuple(out.shape) != tuple(ref.shape) or not torch.isfinite(out).all():
            return False, float("inf")
        scale = max(1.0, float(ref.abs().max()))
        worst = max(worst, float((out - ref).abs().max()) / scale)
    return worst <= TOLERANCE[precision], worst


def _timed(call: Callable[..., Tensor], inputs: tuple[Tensor, ...]) -> float:
    call(*inputs)
    start = time.perf_counter()
    for _ in range(_TIMED_CALLS):
        call(*inputs)
    return (time.perf_counter() - start) / _TIMED_CALLS


def compile_network(
    spec: NetworkSpec, backend: str = "auto", precision: str = "auto", device: torch.device | str = "cpu"
) -> CompiledNetwork:
    """The network in the requested backend and precision, checked against PyTorch (see the module doc).

    Args:
        spec: the network and its example inputs.
        backend: one of `BACKENDS`.
        precision: ``"auto"`` or a precision (`guidegen.runtime.precision.PRECISIONS`).
        device: where the network runs; ONNX Runtime and OpenVINO run on the CPU only.

    Returns:
        The compiled network; its ``backend`` and ``precision`` say what really runs.
    """
    if backend not in BACKENDS:
        raise InputError("--backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto" and os.environ.get(BACKEND_ENV, "auto") != "auto":
        backend = os.environ[BACKEND_ENV]
        if backend not in BACKENDS:
            raise InputError(f"${BACKEND_ENV}", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    module = spec.module
    torch_call = _torch_call(module, precision, channels_last=spec.channels_last and device.type == "cpu")
    if backend == "torch" or (backend == "auto" and device.type != "cpu"):
        return CompiledNetwork(torch_call, "torch", precision)
    if device.type != "cpu":
        raise InputError("--backend", f"{backend} runs on the CPU only; use --backend torch (or auto) on {device.type}")
    installed = available_backends()
    wanted = [b for b in _MODULES if b in installed] if backend == "auto" else [backend]
    if backend != "auto" and backend not in installed:
        _LOG.warning('backend %s is not installed (pip install "guidegen[fast]"); using torch', backend)
        return CompiledNetwork(torch_call, "torch", precision)
    if not wanted:
        return CompiledNetwork(torch_call, "torch", precision)

    folder = _writable_dir(spec.cache_dirs)
    scratch = None
    if folder is None:
        scratch = tempfile.TemporaryDirectory(prefix="guidegen-runtime-")
        folder = Path(scratch.name)
    stem = f"{spec.name}-{spec.digest[:16]}"
    onnx_path, verdict_path = folder / f"{stem}.onnx", folder / f"{stem}.json"
    key = _environment_key(precision)
    verdicts = _read_verdicts(verdict_path)
    verdict = verdicts.get(key, {})

    if not onnx_path.exists():
        try:
            _export(spec, onnx_path)
        except Exception as exc:  # noqa: BLE001 (any exporter failure means: run in torch)
            _LOG.warning("could not export %s to ONNX (%s); using torch", spec.name, str(exc).splitlines()[0][:200])
            return CompiledNetwork(torch_call, "torch", precision)

    example = tuple(t.to("cpu") for t in spec.example_inputs)
    single = tuple(t[:1] for t in example)
    references: list[tuple[tuple[Tensor, ...], Tensor]] | None = None
    candidates: dict[str, tuple[Callable[..., Tensor], str, float | None]] = {}
    for name in wanted:
        try:
            call, used = (
                _onnxruntime_call(onnx_path, spec.input_names)
                if name == "onnxruntime"
                else _openvino_call(onnx_path, spec.input_names, precision)
            )
        except Exception as exc:  # noqa: BLE001
            _LOG.warning(
                "backend %s could not load %s (%s); using torch", name, spec.name, str(exc).splitlines()[0][:200]
            )
            continue
        known = verdict.get(name)
        if known is None or known.get("precision") != used:
            if references is None:
                fp32 = _torch_call(module, "fp32")
                references = [(example, fp32(*example)), (single, fp32(*single))]
            ok, error = _check(call, references, used)
            known = {"ok": ok, "relative_error": error, "precision": used, "seconds": None}
            verdict[name] = known
        if known["ok"] and backend == "auto" and known.get("seconds") is None:
            known["seconds"] = _timed(call, example)
        if not known["ok"]:
            _LOG.warning(
                "backend %s failed its self-check on %s (relative error %.2g > %.0e); using torch",
                name,
                spec.name,
                known["relative_error"],
                TOLERANCE[used],
            )
            continue
        candidates[name] = (call, used, known.get("seconds"))

    if backend == "auto" and candidates:
        if "torch" not in verdict:
            verdict["torch"] = {
                "ok": True,
                "relative_error": 0.0,
                "precision": precision,
                "seconds": _timed(torch_call, example),
            }
        candidates["torch"] = (torch_call, precision, verdict["torch"]["seconds"])
    verdicts[key] = verdict
    if scratch is None:
        try:
            _write_verdicts(verdict_path, verdicts)
        except OSError:
            pass  # a cache we cannot write only costs the check again next time
    if not candidates:
        return CompiledNetwork(torch_call, "torch", precision)
    if backend == "auto":
        name = min(candidates, key=lambda b: candidates[b][2] if candidates[b][2] is not None else float("inf"))
    else:
        name = backend
    call, used, seconds = candidates[name]
    return CompiledNetwork(call, name, used, seconds, keep_alive=scratch)
