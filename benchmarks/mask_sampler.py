"""Mask sampler speed and memory at the demo size (a script, not a test).

    .venv/bin/python benchmarks/mask_sampler.py [--config recipes/mask_sampler_demo.json] [--threads 2]

Prints: training step time (fp32 vs bf16, forward + backward + AdamW), sampling time per network
evaluation and for a whole sample with the strided sampler (25 and 50 steps) and the full T-step
ancestral sampler (extrapolated from timed steps: T evaluations of the same network), with and
without classifier-free guidance, and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from guidegen.config import load_config
from guidegen.diffusion.categorical_loss import categorical_loss
from guidegen.masks.conditioning import attribute_dim
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.model import MaskDenoiser
from guidegen.masks.sampler import diffusion_from_config
from guidegen.runtime.precision import autocast


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="recipes/mask_sampler_demo.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(MaskSamplerConfig, args.config)
    model = MaskDenoiser(config)
    diffusion = diffusion_from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    k = config.num_classes
    x0 = torch.randint(0, k, (config.batch_size, *config.shape))
    text = torch.randn(config.batch_size, config.max_text_tokens, config.text_dim)
    attr = torch.zeros(config.batch_size, attribute_dim())
    params = sum(p.numel() for p in model.parameters())
    print(
        f"mask sampler: grid {config.shape} at {config.spacing} mm, channels {config.channels}, {params / 1e6:.2f} M "
        "parameters, "
        f"{args.threads} threads, batch {config.batch_size}"
    )

    rows = []
    for precision in ("fp32", "bf16"):

        def train_step() -> None:
            t = diffusion.sample_timesteps(x0.shape[0])
            x_t = diffusion.q_sample(x0, t)
            with autocast("cpu", precision):
                logits = model(F.one_hot(x_t, k).permute(0, 4, 1, 2, 3).float(), t, model.context(text, attr))
            loss = categorical_loss(diffusion, logits.float(), x0, x_t, t).total
            opt.zero_grad()
            loss.backward()
            opt.step()

        rows.append((f"train step ({precision})", time_it(train_step, args.repeats)))

    model.eval()
    for precision in ("fp32", "bf16"):
        for guided in (False, True):
            n = 2 if guided else 1
            x = torch.randn(n, k, *config.shape)
            ctx = model.context(text[:1].expand(n, -1, -1), attr[:1].expand(n, -1))
            t = torch.full((n,), 500)

            def forward() -> None:
                with torch.no_grad(), autocast("cpu", precision):
                    model(x, t, ctx)

            per_eval = time_it(forward, args.repeats)
            label = f"{precision}, {'guided (2 evals)' if guided else 'unguided'}"
            rows.append((f"one sampling step, {label}", per_eval))
            for steps in (25, 50, config.num_timesteps):
                rows.append(
                    (
                        f"  sample, {steps} steps{' (extrapolated)' if steps == config.num_timesteps else ''}",
                        per_eval * steps,
                    )
                )
    width = max(len(r[0]) for r in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.2f} s")
    print(f"peak RSS: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
