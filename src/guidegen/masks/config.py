"""Configuration of the Volumetric Mask Sampler (network, diffusion, training)."""

from __future__ import annotations

from dataclasses import dataclass

from guidegen.labels.vocabulary import ID, NUM_CLASSES
from guidegen.settings import AORTA_PLACEMENTS, ORGAN_SIZES, TUMOUR_PLACEMENTS
from guidegen.text.encoder import MAX_TEXT_TOKENS

#: Values of the sampler's last sampling step (``final_decode``).
FINAL_DECODES: tuple[str, ...] = ("argmax", "matched")


@dataclass(frozen=True)
class MaskSamplerConfig:
    """Everything needed to rebuild the sampler and to reproduce its training.

    Grid: ``shape`` voxels (X, Y, Z) at ``spacing`` mm: the demo default 64×64×56 at 6 mm covers
    384 × 384 × 336 mm, liver dome to pelvis. The paper's 128×128×64 is ``shape=(128, 128, 64)``
    with ``spacing=(3.0, 3.0, 5.0)`` and wider channels (recipes/mask_sampler_paper.json).

    Batch: ``batch_size`` is the *global* batch of one optimizer step, whatever runs it: under
    ``torchrun`` with N processes each takes ``batch_size / N`` examples, and each process splits
    its share into ``grad_accumulation`` micro-batches (gradients accumulated, one optimizer step).
    ``batch_size`` must be a multiple of N × ``grad_accumulation``. Neither N nor
    ``grad_accumulation`` changes what is trained (same examples, same noise, same loss weights;
    `guidegen.distributed`), only memory per process and speed, so a run may resume with others.
    """

    # grid
    shape: tuple[int, int, int] = (64, 64, 56)
    spacing: tuple[float, float, float] = (6.0, 6.0, 6.0)
    num_classes: int = NUM_CLASSES
    # network (MONAI DiffusionModelUNet, 3-D)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 8
    text_dim: int = 384
    max_text_tokens: int = MAX_TEXT_TOKENS
    # The attribute token also enters every residual block through the timestep embedding
    # (FiLM-like), not only the cross-attention of the attention levels: a tumour's site and size
    # must reach the full-resolution layers where a 3-voxel tumour is drawn. Off in old models.
    attributes_in_time_embedding: bool = False
    # diffusion
    num_timesteps: int = 1000
    schedule: str = "cosine"
    kl_weight: float = 1.0
    ce_weight: float = 1.0
    # Loss weight of voxels labelled tumour (1 = plain mean). A 4 cm tumour is ~0.07 % of an
    # 8 mm map, so unweighted it barely moves the loss. Beware: any weight ≠ 1 biases the learned
    # p(x0 | xt) and sampling compounds it; at 25 every sampled map filled with litres of tumour
    # (docs/results/mask_sampler_tumour_weight.txt). Kept for experiments; the recipes leave it at 1.
    tumour_weight: float = 1.0
    sample_steps: int = 25
    guidance_scale: float = 2.0
    # Guidance only while t ≥ this fraction of num_timesteps; below it the conditional model alone
    # (one network call per step instead of two). Guidance matters where the layout is decided, at
    # high noise; late steps only refine borders (Kynkäänniemi et al., NeurIPS 2024, apply guidance
    # in a limited interval). 0: every step.
    guidance_min_t: float = 0.0
    # Where stated tumours come from when sampling: "insert" puts real tumour shapes of the stated
    # size into the stated host of the sampled anatomy (`guidegen.masks.placement`: the demo
    # network does not learn tumours); "network" keeps only what the network draws.
    tumour_placement: str = "insert"
    # Stated organ sizes when sampling: "scale" gives an organ the prompt calls enlarged / small /
    # normal / absent that size when the sampled one does not show it (`guidegen.masks.placement`:
    # the demo network follows size statements weakly); "all" also brings every solid organ the
    # prompt leaves unchanged into its normal range (the network draws unmentioned organs abnormal:
    # docs/results/mask_unstated.txt); "network" keeps the network's organs.
    organ_sizes: str = "all"
    # The aorta when sampling: "tube" redraws it as one tube of normal adult calibre (17-23 mm)
    # along the course the network's aorta takes (`guidegen.masks.placement.draw_aorta_tube`: the
    # demo network draws it as scattered specks ~13 mm wide once upsampled, whose CT misses every
    # phase's HU); "network" keeps the network's aorta.
    aorta_placement: str = "tube"
    # Last sampling step: "argmax" of p(x0 | x1), or "matched": the argmax after per-class offsets
    # that give every class but the tumour its expected voxel count (`count_matched_argmax`): the
    # plain argmax drops organs whose location the network is unsure of (pancreas 1-8 voxels where
    # the network expects ~60). On the prompt suite "matched" cut organ-volume outliers from 233
    # to 136 (docs/results/mask_suite_placement.txt).
    final_decode: str = "matched"
    # Slices at the top of the grid where sampling allows no abdominal organ (nor tumour). Training
    # puts the liver top 4 slices below the grid top (`guidegen.masks.train.load_base_cases`), and
    # most training scans end there: above it their voxels are unknown, which the loss ignores, so
    # the network was never shown where the dome ends and draws its tip into the top slice (the
    # liver cut by the grid in 3 of 16 normal maps). With the top slice organ-free the domes taper
    # as the real ones do; two slices blunted them (docs/results/organ_free_top.txt). 0: as drawn.
    organ_free_top: int = 0
    # Classes whose expected volume is held, through sampling, at what the network's first (pure
    # noise) prediction expects (`guidegen.diffusion.categorical_sampling.hold_expected_counts`).
    # The demo network expects about 1 L of colon and 0.8 L of small bowel from noise, as in its
    # training maps, but step after step the colon takes over the small bowel's place (2.3 L against
    # 0.2 L, a solid lump); holding both keeps each at its share and lets the network decide where
    # they go (docs/results/hold_volumes.txt). Empty: as drawn.
    hold_volumes: tuple[str, ...] = ()
    # Training: weight of `guidegen.diffusion.categorical_loss.expected_count_loss` on the classes
    # ``count_classes``, added to the variational loss. The voxel losses let the network ignore
    # whether the text asks for a tumour (its expected tumour volume was the same for "normal CT"
    # as for "3 cm tumour in the liver"); the count term puts each class's total in the loss.
    # With attributes_in_time_embedding it made the tumour follow the prompt, but not yet the stated
    # host, at a cost to the delivered maps (docs/results/mask_sampler_count_film.txt). 0: off.
    count_weight: float = 0.0
    count_classes: tuple[str, ...] = ()
    # Training: weight of `guidegen.diffusion.categorical_loss.outside_host_loss`, the share of the
    # tumour probability the prediction puts outside the organ the tumour sits in (read from the
    # training map). The count term alone drew a liver tumour over liver, pancreas and spleen; with
    # this term the network drew almost no tumour instead (docs/results/mask_sampler_count_film.txt,
    # section 4). Kept for experiments. 0: off.
    outside_host_weight: float = 0.0
    # classifier-free guidance dropout (each independently)
    drop_text: float = 0.15
    drop_attributes: float = 0.15
    # training
    seed: int = 0
    steps: int = 6000
    batch_size: int = 1
    grad_accumulation: int = 1
    lr: float = 5e-4
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    precision: str = "auto"
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    # training data
    prepared_cache: str = ".cache/prepared-6mm"
    data_sources: tuple[str, ...] = ("data/real/totalseg-example-a", "data/real/masks-only", "data/real/msd-spleen-8")
    min_extent_mm: float = 150.0
    p_tumour: float = 0.6
    p_organ_scaling: float = 0.5
    p_elastic: float = 0.8
    p_field_drop: float = 0.35
    # How often an abnormal organ finding or a tumour is left out of an example's text
    # (`guidegen.masks.examples.drop_fields`); None: the rule of the earlier models (p_field_drop for
    # organs, a third of it for tumours), under which an enlarged organ goes unmentioned in a third of
    # the examples that have one.
    p_abnormal_drop: float | None = None
    # A trained model folder of the same network to start from instead of random weights (fine-tuning,
    # or growing a model to a newer vocabulary: `guidegen.training.warm_start`); a relative path is read
    # like the recipe's data paths. None: random initialisation.
    init_from: str | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(s % (2 ** (len(self.channels) - 1)) for s in self.shape):
            raise ValueError(f"shape {self.shape} must be 3 sizes divisible by {2 ** (len(self.channels) - 1)}")
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channels level")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}")
        if (
            not isinstance(self.grad_accumulation, int)
            or self.grad_accumulation < 1
            or self.batch_size % self.grad_accumulation
        ):
            raise ValueError(
                f"grad_accumulation must be a positive divisor of batch_size={self.batch_size}, got "
                f"{self.grad_accumulation!r}"
            )
        if not self.tumour_weight > 0:
            raise ValueError(f"tumour_weight must be positive, got {self.tumour_weight!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.final_decode not in FINAL_DECODES:
            raise ValueError(f"final_decode must be one of {', '.join(FINAL_DECODES)}, got {self.final_decode!r}")
        if self.aorta_placement not in AORTA_PLACEMENTS:
            raise ValueError(
                f"aorta_placement must be one of {', '.join(AORTA_PLACEMENTS)}, got {self.aorta_placement!r}"
            )
        if self.organ_sizes not in ORGAN_SIZES:
            raise ValueError(f"organ_sizes must be one of {', '.join(ORGAN_SIZES)}, got {self.organ_sizes!r}")
        if self.tumour_placement not in TUMOUR_PLACEMENTS:
            raise ValueError(
                f"tumour_placement must be one of {', '.join(TUMOUR_PLACEMENTS)}, got {self.tumour_placement!r}"
            )
        if self.p_abnormal_drop is not None and not 0.0 <= self.p_abnormal_drop <= 1.0:
            raise ValueError(f"p_abnormal_drop must be None or in [0, 1], got {self.p_abnormal_drop!r}")
        if not 0 <= self.organ_free_top < self.shape[2]:
            raise ValueError(f"organ_free_top must be in [0, {self.shape[2]}), got {self.organ_free_top!r}")
        for field in ("hold_volumes", "count_classes"):
            unknown = [c for c in getattr(self, field) if c not in ID or ID[c] >= self.num_classes]
            if unknown:
                raise ValueError(f"{field} names classes this {self.num_classes}-class sampler lacks: {unknown}")
        if "background" in self.count_classes:
            # Where a case leaves classes unannotated they hide under its background: no true count.
            raise ValueError("count_classes cannot count the background")
        if not self.count_weight >= 0:
            raise ValueError(f"count_weight must be >= 0, got {self.count_weight!r}")
        if not self.outside_host_weight >= 0:
            raise ValueError(f"outside_host_weight must be >= 0, got {self.outside_host_weight!r}")
        if not 0.0 <= self.guidance_min_t <= 1.0:
            raise ValueError(f"guidance_min_t must be in [0, 1], got {self.guidance_min_t}")
        if not 1 <= self.sample_steps <= self.num_timesteps:
            raise ValueError(f"sample_steps must be in [1, {self.num_timesteps}], got {self.sample_steps}")
