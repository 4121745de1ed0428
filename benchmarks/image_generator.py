"""Cost of the slice-wise CT generator on this machine: time and peak memory, pixel vs latent space.

A script, not a test. Every measurement is short (a few steps or slices, median of a few runs), so
numbers are indicative: on a shared machine they vary by 10–30 %.

Measures, at the demo configuration (recipes/image_generator_demo.json, 128² slices):

* a training step (forward + backward + AdamW) at batch 8, fp32 and bf16 autocast;
* sampling: seconds per slice (``flow_steps`` Euler steps, one network call each) with 1 and 4
  volumes per batch, fp32 and bf16, and the implied time per 64-slice volume;
* the latent variant: an untrained MONAI ``AutoencoderKL`` (4× downsampling, 4 latent channels)
  encode/decode time per slice at 128², and the UNet step on the 32² latent.

Every row runs in a fresh Python process, so its peak resident memory (RSS, the kernel's
high-water mark) is its own: the allocator keeps freed memory, so rows sharing one process would
all report the largest peak so far.

Usage::

    python benchmarks/image_generator.py [--recipe recipes/image_generator_demo.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from guidegen.config import load_config
from guidegen.images.config import ImageGeneratorConfig
from guidegen.images.generator import ConditionalImageGenerator, sample_volume
from guidegen.runtime.precision import autocast

ROOT = Path(__file__).resolve().parents[1]


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], None], repeats: int = 3, warmup: int = 1) -> tuple[float, float]:
    """(median seconds of ``fn``, peak RSS in MB during the measurement)."""
    _reset_peak()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_mb()


def _train_step_fn(
    model: torch.nn.Module,
    cfg: ImageGeneratorConfig,
    batch: int,
    precision: str,
    forward: Callable[[torch.Tensor], torch.Tensor],
    in_shape: tuple[int, ...],
) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *in_shape)

    def step() -> None:
        with autocast("cpu", precision):
            out = forward(x)
        loss = out.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _pixel_rows(
    cfg: ImageGeneratorConfig, kind: str, precision: str, n: int, slices: int, reps: int
) -> list[list[str]]:
    torch.manual_seed(0)
    model = ConditionalImageGenerator(cfg)
    s, b = cfg.image_size, cfg.batch_size
    if kind == "train":
        phase, ann, t = torch.zeros(b, dtype=torch.long), torch.ones(b, cfg.num_classes), torch.rand(b)
        fn = _train_step_fn(
            model.train(), cfg, b, precision, lambda x: model(x, t, phase, ann), (cfg.in_channels, s, s)
        )
        sec, mb = measure(fn, repeats=reps)
        return [[f"pixel UNet train step, batch {b}", precision, f"{sec:.2f} s/step", f"{mb:.0f}"]]
    model.eval()
    labels = torch.zeros(n, s, s, slices, dtype=torch.long)
    labels[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 4  # a "liver" square

    def sample() -> None:
        sample_volume(
            model,
            labels,
            flow=cfg.flow,
            steps=cfg.flow_steps,
            guidance=1.0,
            phase=torch.zeros(n, dtype=torch.long),
            annotated=torch.ones(n, cfg.num_classes),
            text=None,
            generators=[torch.Generator().manual_seed(i) for i in range(n)],
            precision=precision,
        )

    sec, mb = measure(sample, repeats=max(1, reps - 1))
    per_slice = sec / (slices * n)
    return [
        [
            f"pixel sampling, {n} volume(s)/batch",
            precision,
            f"{per_slice:.2f} s/slice = {per_slice * 64:.0f} s per 64-slice volume",
            f"{mb:.0f}",
        ]
    ]


def _latent_rows(cfg: ImageGeneratorConfig, kind: str, precision: str, reps: int) -> list[list[str]]:
    """The latent variant: AutoencoderKL (4× down, 4 latent channels) and a UNet on 32² latents."""
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    torch.manual_seed(0)
    s, b = cfg.image_size, cfg.batch_size
    if kind == "autoencoder":
        ae = AutoencoderKL(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=(32, 64, 128),
            latent_channels=4,
            num_res_blocks=1,
            attention_levels=(False, False, False),
            norm_num_groups=16,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        ).eval()
        slices = torch.randn(8, 1, s, s)
        with torch.no_grad():
            z = ae.encode_stage_2_inputs(slices)

            def enc() -> None:
                with autocast("cpu", precision):
                    ae.encode_stage_2_inputs(slices)

            def dec() -> None:
                with autocast("cpu", precision):
                    ae.decode_stage_2_outputs(z)

            sec_e, mb_e = measure(enc, repeats=reps)
            sec_d, mb_d = measure(dec, repeats=reps)
        n_ae = sum(p.numel() for p in ae.parameters()) / 1e6
        return [
            [
                f"AutoencoderKL ({n_ae:.1f} M) encode 128² → 4×{s // 4}²",
                precision,
                f"{sec_e / 8 * 1000:.0f} ms/slice",
                f"{mb_e:.0f}",
            ],
            [f"AutoencoderKL ({n_ae:.1f} M) decode", precision, f"{sec_d / 8 * 1000:.0f} ms/slice", f"{mb_d:.0f}"],
        ]
    ls = s // 4
    lat_in = 4 + cfg.context_slices * (cfg.num_classes + 1) + 4 + 2  # noisy latent, masks, prev latent, flag, z
    unet = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=lat_in,
        out_channels=4,
        num_res_blocks=cfg.num_res_blocks,
        channels=(64, 128, 256),
        attention_levels=(False, False, True),
        norm_num_groups=16,
        num_head_channels=32,
        with_conditioning=True,
        cross_attention_dim=cfg.context_dim,
        num_class_embeds=cfg.num_phases,
        use_flash_attention=True,
    )
    n_unet = sum(p.numel() for p in unet.parameters()) / 1e6
    phase, t, ctx = torch.zeros(b, dtype=torch.long), torch.rand(b), torch.randn(b, 1, cfg.context_dim)
    if kind == "train":
        fn = _train_step_fn(
            unet.train(),
            cfg,
            b,
            precision,
            lambda x: unet(x, t * 1000, context=ctx, class_labels=phase),
            (lat_in, ls, ls),
        )
        sec, mb = measure(fn, repeats=reps)
        return [
            [f"latent UNet ({n_unet:.1f} M, {ls}²) train step, batch {b}", precision, f"{sec:.2f} s/step", f"{mb:.0f}"]
        ]
    unet.eval()
    x1 = torch.randn(1, lat_in, ls, ls)

    def fwd() -> None:
        with torch.no_grad(), autocast("cpu", precision):
            unet(x1, t[:1] * 1000, context=ctx[:1], class_labels=phase[:1])

    sec_f, mb_f = measure(fwd, repeats=max(3, reps))
    per_slice = sec_f * cfg.flow_steps
    return [
        [
            "latent sampling, 1 volume (UNet only)",
            precision,
            f"{per_slice:.2f} s/slice = {per_slice * 64:.0f} s per 64-slice volume + decoding",
            f"{mb_f:.0f}",
        ]
    ]


def _row(args: argparse.Namespace, cfg: ImageGeneratorConfig, spec: str) -> list[list[str]]:
    family, kind, precision, n = spec.split(":")
    reps = 1 if args.quick else 3
    if family == "pixel":
        return _pixel_rows(cfg, kind, precision, int(n), args.slices, reps)
    return _latent_rows(cfg, kind, precision, reps)


ROWS = (
    [f"pixel:train:{p}:8" for p in ("fp32", "bf16")]
    + [f"pixel:sample:{p}:{n}" for p in ("fp32", "bf16") for n in (1, 4)]
    + [f"latent:{k}:{p}:1" for k in ("autoencoder", "train", "sample") for p in ("fp32", "bf16")]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "image_generator_demo.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=3, help="slices generated per sampling measurement")
    parser.add_argument("--quick", action="store_true", help="one repeat per row (noisier, ~2× faster)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one row in this process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(ImageGeneratorConfig, args.recipe)
    if args.row:
        print(json.dumps(_row(args, cfg, args.row)))
        return
    n_params = sum(p.numel() for p in ConditionalImageGenerator(cfg).parameters())
    print(
        f"recipe {args.recipe.name}: {cfg.image_size}² slices, channels {cfg.channels}, {n_params / 1e6:.2f} M "
        f"parameters, {cfg.in_channels} input channels, {cfg.flow_steps} Euler steps/slice, {args.threads} threads; "
        f"each row runs in a fresh process (peak RSS includes ~0.4 GB of torch + MONAI)",
        flush=True,
    )
    rows: list[list[str]] = []
    for spec in ROWS:
        cmd = [
            sys.executable,
            __file__,
            "--recipe",
            str(args.recipe),
            "--threads",
            str(args.threads),
            "--slices",
            str(args.slices),
            "--row",
            spec,
        ] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{spec}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            rows.append(row)
            print(" | ".join(row), flush=True)
    width = max(len(r[0]) for r in rows) if rows else 10
    print()
    print(f"| {'measurement':<{width}} | precision | time | peak RSS MB |")
    print(f"|{'-' * (width + 2)}|-----------|------|-------------|")
    for name, prec, value, mb in rows:
        print(f"| {name:<{width}} | {prec} | {value} | {mb} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
