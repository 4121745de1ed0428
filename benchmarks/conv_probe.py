"""Issue 23's probe: one 64-channel 3×3 convolution on (4, 64, 64, 64), fp32 against bf16 autocast.

    .venv/bin/python benchmarks/conv_probe.py [--threads 2]
    benchmarks/avx2_only/run.sh .venv/bin/python benchmarks/conv_probe.py   # as on an AVX2-only CPU

Prints the CPU line of `benchmarks/generate.py`, then the first call (oneDNN builds its kernel
there) and the best of five later calls for each precision, and their ratio. Where bf16 is
emulated (no AVX512-BF16 or AMX), bf16 is tens of times slower: what made the demo take 40 minutes.
"""

from __future__ import annotations

import argparse
import time

import torch
from generate import cpu_line  # a script's folder is on sys.path


def timed(conv: torch.nn.Module, x: torch.Tensor, bf16: bool, repeats: int = 5) -> tuple[float, float]:
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(repeats + 1):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return times[0], min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(4, 64, 64, 64)
    print(cpu_line())
    print(f"Conv2d(64, 64, 3) on {tuple(x.shape)}, {args.threads} threads: first call / best of 5 later calls")
    result = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        first, best = timed(conv, x, bf16)
        result[name] = best
        print(f"  {name}: {first * 1e3:8.1f} ms / {best * 1e3:8.1f} ms")
    print(f"  bf16 / fp32 (best): {result['bf16'] / result['fp32']:.1f}x")


if __name__ == "__main__":
    main()
