"""Does the mask sampler's network listen to the prompt? (issue 24; a script, not a test)

    .venv/bin/python benchmarks/mask_conditioning.py [--model models/default/mask_sampler]
        [--timesteps 950 500 100] [--seed 0] [--threads 2]

For a few prompts that differ in one finding (a tumour, its size, its absence, an enlarged spleen,
nothing stated), one network call on the *same* noisy map ``x_t`` per timestep gives the expected
volume (Σ_v p̂(x0_v = c | x_t), in voxels) of the tumour and the spleen. Three conditionings are
compared: the prompt's text and attribute record as sampling gives them, the attribute record alone
(null text), and the text alone (the all-unknown record). A network that has learnt a finding shows
it as a difference between the prompts' rows; one that ignores it shows the same number in every row.
``x_t`` is drawn uniformly at random over the classes at every timestep (the forward process's limit,
exact only near t = T), so the figures at small t are the network's answer to an unusual input: read
them as differences between prompts, not as volumes.

The shipped sampler (docs/results/mask_sampler_count_film.txt) gives the same tumour volume whatever
the prompt says about tumours; the spleen follows "markedly enlarged spleen".
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from byom_native import cpu_name  # a script's folder is on sys.path

from guidegen.labels.vocabulary import ID
from guidegen.masks.conditioning import attribute_vector
from guidegen.masks.sampler import VolumetricMaskSampler

PROMPTS = (
    "3 cm tumour in the liver",
    "5 cm tumour in the left kidney",
    "no tumour, normal abdomen",
    "markedly enlarged spleen",
    "abdominal CT",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/default/mask_sampler")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[950, 500, 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sampler = VolumetricMaskSampler.from_pretrained(args.model)
    model, config = sampler.model, sampler.config
    text, attributes = sampler.encode(PROMPTS)  # tokens and attribute records, as sampling makes them
    unknown = torch.from_numpy(np.stack([attribute_vector(None)] * len(PROMPTS)))
    conditionings = {
        "text + attributes": model.context(text, attributes),
        "attributes alone": model.context(None, attributes),
        "text alone": model.context(text, unknown),
    }
    print(
        f"{args.model}: CPU {cpu_name()}; expected voxels of tumour / spleen ({np.prod(config.spacing):.0f} mm³ each)"
    )
    print(f"{'t':>5}  {'conditioning':<18}" + "".join(f"{p[:26]:>30}" for p in PROMPTS))
    generator = torch.Generator().manual_seed(args.seed)
    for t in args.timesteps:
        labels = torch.randint(0, config.num_classes, (1, *config.shape), generator=generator)
        x_t = torch.nn.functional.one_hot(labels, config.num_classes).permute(0, 4, 1, 2, 3).float()
        x_t = x_t.expand(len(PROMPTS), *x_t.shape[1:])
        for name, context in conditionings.items():
            with torch.inference_mode():
                probs = torch.softmax(model(x_t, torch.full((len(PROMPTS),), t), context).float(), dim=1)
            tumour = probs[:, ID["tumour"]].flatten(1).sum(1)
            spleen = probs[:, ID["spleen"]].flatten(1).sum(1)
            cells = "".join(f"{float(a):>17.1f} / {float(b):>9.0f} " for a, b in zip(tumour, spleen, strict=True))
            print(f"{t:>5}  {name:<18}{cells}")


if __name__ == "__main__":
    main()
