/* Make this process see an AVX2-only x86-64 CPU (no AVX-512, no AVX512-BF16, no AMX, no AVX-VNNI),
 * so that every library's runtime dispatch (oneDNN, PyTorch's ATen, ONNX Runtime's MLAS, OpenVINO,
 * NumPy) picks the code paths an AVX2-only CPU would run. A benchmark stand-in for issue 23, for
 * machines whose CPU has AVX-512 but whose users' CPUs do not.
 *
 * How: Linux CPUID faulting (arch_prctl ARCH_SET_CPUID, /proc/cpuinfo flag `cpuid_fault`). Every
 * CPUID instruction then raises SIGSEGV; the handler below runs the real CPUID with faulting briefly
 * off, clears the feature bits an AVX2-only CPU lacks, and steps over the instruction. The setting
 * is inherited by threads and forks; an exec'd child gets it again through LD_PRELOAD.
 *
 * Limits, stated because they matter for timings: the core's micro-architecture and clock are still
 * this CPU's (an AVX2 instruction may run faster here than on an older core), and the C library
 * chose its string functions before this library loaded (use GLIBC_TUNABLES, see run.sh).
 * Another SIGSEGV handler installed later is kept and called for faults that are not CPUID.
 *
 * Build: cc -O2 -shared -fPIC -o cpuid_avx2.so cpuid_avx2.c -ldl
 * SPDX-License-Identifier: Apache-2.0
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012

static struct sigaction next_segv; /* a handler installed after ours, for faults that are not CPUID */
static int installed;
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31 */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        /* ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14 */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24, AMX-INT8 25 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: AVX-VNNI 4, AVX512-BF16 5, AMX-FP16 21, AVX-IFMA 23; EDX: AVX-VNNI-INT8 4, AVX-NE-CONVERT 5,
         * AMX-COMPLEX 8, AVX10 19 */
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 8) | (1u << 19));
    } else if (leaf == 0xd && sub == 0) {
        /* EAX: the XSAVE components the CPU supports: drop opmask 5, ZMM_Hi256 6, Hi16_ZMM 7, AMX 17, 18 */
        r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = (ucontext_t *)context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    /* A faulting CPUID is a general-protection fault (SI_KERNEL); a page fault, whose RIP may not
     * even be readable, never is. */
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        uint32_t r[4];
        uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        real_cpuid(leaf, sub, r);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        g[REG_RAX] = r[0];
        g[REG_RBX] = r[1];
        g[REG_RCX] = r[2];
        g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        return;
    }
    if (next_segv.sa_flags & SA_SIGINFO) {
        if (next_segv.sa_sigaction) {
            next_segv.sa_sigaction(sig, info, context);
            return;
        }
    } else if (next_segv.sa_handler != SIG_DFL && next_segv.sa_handler != SIG_IGN) {
        next_segv.sa_handler(sig);
        return;
    }
    struct sigaction dfl; /* a real fault: die of it */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);
    raise(SIGSEGV);
}

/* Keep the CPUID handler first: a later SIGSEGV handler (faulthandler, a JIT) becomes the next one. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (sig == SIGSEGV && installed) {
        struct sigaction previous = next_segv;
        if (act) next_segv = *act;
        if (old) *old = previous;
        return 0;
    }
    return real_sigaction(sig, act, old);
}

__attribute__((constructor)) static void start(void) {
    struct sigaction sa;
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    real_sigaction(SIGSEGV, &sa, &next_segv);
    installed = 1;
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid_avx2: this CPU or kernel has no CPUID faulting; the CPU is not masked\n");
        exit(3);
    }
}
