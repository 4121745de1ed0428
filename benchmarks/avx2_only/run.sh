#!/bin/sh
# Run a command as if on an AVX2-only CPU (no AVX-512, AVX512-BF16, AMX, AVX-VNNI): see cpuid_avx2.c.
#   benchmarks/avx2_only/run.sh .venv/bin/python benchmarks/generate.py --threads 2
# Needs a C compiler and CPUID faulting (`grep -w cpuid_fault /proc/cpuinfo`); refuses to run without.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
lib="${XDG_CACHE_HOME:-$HOME/.cache}/guidegen/cpuid_avx2.so"
if ! grep -qw cpuid_fault /proc/cpuinfo; then
    echo "avx2_only: this CPU or kernel has no CPUID faulting (/proc/cpuinfo flag cpuid_fault)" >&2
    exit 3
fi
if [ ! -f "$lib" ] || [ "$here/cpuid_avx2.c" -nt "$lib" ]; then
    mkdir -p "$(dirname "$lib")"
    cc -O2 -Wall -shared -fPIC -o "$lib.tmp" "$here/cpuid_avx2.c" -ldl
    mv "$lib.tmp" "$lib"
fi
# The C library picked its string functions before the preload ran: ask it for the AVX2 ones.
GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL,-AVX512ER,-AVX512PF" \
LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" exec "$@"
