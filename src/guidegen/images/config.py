"""`ImageGeneratorConfig`: everything that defines the slice-wise CT generator and its training.

One frozen dataclass, saved as ``config.json`` beside every checkpoint and loaded from JSON recipes
(``recipes/image_generator_*.json``). Network, conditioning, sampling and training settings live
together because a trained model is only meaningful with all of them (the HU mapping in
`guidegen.images.hu` is fixed and not configurable for the same reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from guidegen.data.phase import ENHANCING_SETS
from guidegen.diffusion.flow import FlowConfig
from guidegen.labels.vocabulary import NUM_CLASSES
from guidegen.settings import PRECISIONS
from guidegen.terms import PHASES as CONTRAST_PHASES

__all__ = ["ImageGeneratorConfig", "PHASES", "SAMPLE_PREDICTION_MIN_T"]

#: Contrast phase vocabulary of the class embedding; id 0 ("unknown") doubles as the CFG null phase.
PHASES: tuple[str, ...] = ("unknown", *CONTRAST_PHASES)

_PREDICTIONS = ("velocity", "sample")
_LABEL_INTERPOLATIONS = ("nearest", "linear")
_REMAP_EDGES = ("blur", "partial_volume")
_PRIOR_LEVELS = ("typical", "measured")
#: Floor on t in the velocity (x_t − x̂_0) / t of a "sample"-predicting network: below it the division
#: would magnify the network's error without bound (JiT uses the same kind of clip).
SAMPLE_PREDICTION_MIN_T = 0.05


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ImageGeneratorConfig:
    """Settings of the conditional slice generator (GuideGen's second stage) and its training.

    Geometry:
        image_size: in-plane size H = W of a slice in voxels (128 → 384 mm at 3 mm).
        spacing: voxel size (x, y, z) in mm of the grid the model works on.

    Network (MONAI ``DiffusionModelUNet``, 2-D):
        channels: feature channels per resolution level.
        attention_levels: where self- and cross-attention run; ``None`` = only the lowest level
            (attention at high resolution dominates the CPU cost).
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups (every entry of ``channels`` must be a multiple).
        num_head_channels: channels per attention head.
        context_dim: width of the single cross-attention conditioning token.
        use_flash_attention: use torch's scaled-dot-product attention kernel.

    Conditioning:
        context_slices: mask slices shown around slice k (odd; 3 → k−1, k, k+1).
        num_classes: K, label classes one-hot encoded (GuideGen vocabulary: 18).
        num_phases: size of the contrast-phase embedding (`PHASES`; 0 = unknown / dropped).
        text_dim: width of the pooled prompt embedding (MiniLM: 384).
        cond_dropout: probability of training a sample unconditionally (phase → 0 and the
            conditioning token → the learned null token), for classifier-free guidance.
        prev_dropout: probability of hiding the previous slice (has_prev = 0) during training, so
            the model can start a volume and recovers when its own previous slice is poor.
        prev_noise: maximum std (model units) of Gaussian noise added to the teacher-forced
            previous slice; the std is drawn uniformly in [0, prev_noise] per sample.
        prediction: what the UNet outputs: "velocity" (``ε − x_0``, old models) or "sample"
            (the clean slice ``x_0``, turned into the velocity ``(x_t − x̂_0) / t`` inside the
            network, see below). The loss and the sampler see a velocity either way.

    Sampling:
        flow: rectified-flow settings (time sampling, shift).
        flow_steps: Euler steps per slice.
        sample_shift: the sampling schedule's time shift ``t' = s·t / (1 + (s − 1)·t)``
            (`guidegen.diffusion.flow.sampling_schedule`); ``None`` = ``flow.shift``, the
            training shift. Below 1 it spends more of the steps near t = 0, where the slice's
            detail and levels are settled: on the held-out map, 4 steps at 0.5 matched 6 to 8
            uniform steps (docs/results/fast_cpu.txt).
        guidance_scale: classifier-free guidance ``s`` (1 = conditional only, one network call
            per step; > 1 needs two).
        precision: autocast precision for training: "auto" (bf16 where the hardware runs it
            natively, else fp32; `guidegen.runtime.resolve_precision`), "bf16", "fp16" or "fp32".
            Sampling chooses its own (``precision=`` of `ConditionalImageGenerator.generate`).
        noise_correlation: correlation of the starting noise of neighbouring slices (see below).

    Training:
        lr, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up then cosine decay
            to 10 % of ``lr``; gradient norm clipping (0 = off).
        batch_size, steps: slices per optimizer step (the *global* batch) and total optimizer steps.
        grad_accumulation: micro-batches per optimizer step and process. Under ``torchrun`` with N
            processes each takes ``batch_size / N`` slices of every step, in ``grad_accumulation``
            micro-batches whose gradients are accumulated; ``batch_size`` must be a multiple of
            N × ``grad_accumulation``. Neither N nor ``grad_accumulation`` changes what is trained
            (same slices, noise and loss weights, `guidegen.distributed`), only memory and speed.
        ema_decay: EMA decay (with warm-up, `guidegen.training.EMA`).
        checkpoint_every, keep_checkpoints: checkpoint interval (steps) and how many to keep.
        log_every: steps between loss lines in ``run_dir/log.jsonl``.
        seed: seeds the initial weights and every training step's randomness.
        augment_prob, rotate_deg, scale, translate_mm: joint in-plane affine augmentation of
            CT, masks and previous slice (probability; max rotation in degrees; max relative
            zoom; max shift in mm). No flips (left/right anatomy matters) and no intensity changes
            (HU are physical).
        holdout_cases: prepared case ids never trained on (for validation).
        infer_phase: estimate an unknown contrast phase from a case's mean aortic / liver HU.
    """

    image_size: int = 128
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)

    channels: tuple[int, ...] = (32, 64, 128, 256)
    attention_levels: tuple[bool, ...] | None = None
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    num_head_channels: int = 32
    context_dim: int = 256
    use_flash_attention: bool = True

    context_slices: int = 3
    num_classes: int = NUM_CLASSES
    num_phases: int = len(PHASES)
    text_dim: int = 384
    cond_dropout: float = 0.1
    prev_dropout: float = 0.1
    prev_noise: float = 0.02
    # Why "sample" (x-prediction, Li & He 2025, "Back to Basics: Let Denoising Generative Models
    # Denoise"): a velocity ε − x_0 is mostly noise, a full-resolution, high-dimensional signal that a
    # small UNet reproduces imperfectly; whatever it gets wrong stays in the image as grain (the
    # velocity models' liver was 2-3× noisier than real CT). A clean CT slice is smooth and far easier
    # to output. The objective is unchanged (same velocity target, same loss); only the
    # parametrisation differs. t is floored at `SAMPLE_PREDICTION_MIN_T` in the division.
    prediction: str = "velocity"

    flow: FlowConfig = field(default_factory=FlowConfig)
    flow_steps: int = 8
    sample_shift: float | None = None
    guidance_scale: float = 1.0
    precision: str = "auto"
    # Correlation ρ of the starting noise of neighbouring slices: ε_k = ρ·ε_{k−1} + √(1−ρ²)·ξ_k
    # (each ε_k still standard normal). Why: the flow maps noise to a slice deterministically, so
    # independent noise per slice gives every slice its own texture and the volume flickers along z
    # even when the organ levels are right; correlated noise keeps the texture of slice k close to
    # that of slice k−1 (the mixed noise prior of video diffusion, Ge et al. 2023, "Preserve Your Own
    # Correlation"). A sampling setting only: the model is trained on independent noise, for which
    # every ε_k is still distributed correctly. 0 (old models) = independent noise.
    noise_correlation: float = 0.0

    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    batch_size: int = 8
    grad_accumulation: int = 1
    steps: int = 3000
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    augment_prob: float = 0.8
    rotate_deg: float = 8.0
    scale: float = 0.08
    translate_mm: float = 12.0
    # How the augmentation's in-plane transform resamples the label slices: "nearest" (old models),
    # or "linear" (bilinear weights on the one-hot labels, the largest wins). Why tried: the CT is
    # moved bilinearly, and nearest labels then sit up to half a pixel off the CT's edge, at random,
    # which could teach the network a blurred edge (generated organs have a darker rim than real CT).
    # With linear labels the boundary lands where the moved CT edge crosses halfway. Measured: it did
    # not sharpen the rims (docs/results/image_generator_noncontrast.txt), so it stays off.
    label_interpolation: str = "nearest"
    # Probability that a training slice has some of its annotated classes hidden (pixels shown as
    # "body", as preparation shows unannotated tissue, annotated flag off; each class hidden with
    # probability 1/2, never background, body or the tumour).
    # Partial label maps (AMOS: no bones; LiTS: liver only) then look like cases seen in training
    # instead of like the one scan that shares their label set, and the model learns to draw
    # unannotated anatomy from context. 0 (old models) draws nothing.
    p_hide_classes: float = 0.0
    # Probability that a training slice is re-rendered in a random contrast phase: each enhancing
    # structure (aorta, IVC, liver, spleen, kidneys) is shifted from its measured mean HU in the
    # scan to the phase's typical value (`guidegen.data.phase.TYPICAL_HU`; the shift map blurred
    # by one pixel) and the slice is labelled with that phase. Our few scans tie phase to anatomy
    # and annotation pattern (the one non-contrast scan is the one complete map); this unties them.
    # 0 (old models) draws nothing.
    p_phase_remap: float = 0.0
    # How the phase remap treats a structure's edge. "blur" (old models): the shift map is blurred by
    # one pixel, which also weakens the shift *inside* a thin structure: an arterial aorta 5-7 pixels
    # across (interior 379 HU) re-rendered non-contrast came out at 81 HU inside instead of 40, so
    # the generator learnt a non-contrast aorta of ~60 HU with a dark rim. "partial_volume": every
    # pixel inside the label moves by the full shift except its one-pixel edge, which, like the
    # one-pixel ring of unlabelled tissue outside it, moves by the fraction of the structure the
    # pixel holds, read off the CT between the structure's level and the surrounding fat's (outside
    # an unenhanced structure, whose level soft tissue shares, at most the blurred label's share;
    # `guidegen.images.dataset.partial_volume_shift_map`). Measured: the training scan's non-contrast
    # aorta came down from 60 to 50-51 HU, but maps not used in training did no better (runs M, M2
    # in docs/results/image_generator_noncontrast.txt), so the shipped recipe keeps "blur".
    phase_remap_edge: str = "blur"
    # Largest whole-slice HU offset added to the teacher-forced previous slice (drawn uniformly in
    # ±prev_shift_hu per slice, enhancing structures only). Generation feeds the model its own
    # previous slice, a little too bright, and a model that copies the previous slice's level drifts
    # brighter along z (docs/results/image_generator_phase_remap.txt); an unreliable level makes
    # it take organ HU from the phase and the masks instead. 0 (old models) draws nothing.
    prev_shift_hu: float = 0.0
    # Give the network, as one more input channel, the typical HU of each enhancing structure
    # (aorta, IVC, liver, spleen, kidneys) in the requested phase on that structure's pixels of the
    # slice (`guidegen.data.phase.TYPICAL_HU`, the centres of published ranges; zero elsewhere and
    # for the unknown / unconditional phase). Why: the phase embedding alone is a weak, global
    # signal, and with five training scans the model rendered every phase of an unseen map at the
    # enhanced average (docs/results/image_generator_phase_remap.txt); a per-pixel prior says where
    # and how bright, and the network learns the texture and the deviations. False (old models): no
    # such channel.
    phase_prior: bool = False
    # Which structures the phase prior describes and the phase remap moves
    # (`guidegen.data.phase.typical_hu`). "core" (old models): aorta, IVC, liver, spleen, kidneys.
    # "core_and_vessels" adds the portal vein, the heart and the other arteries and veins. Why: a
    # non-contrast training slice re-rendered in the portal-venous phase otherwise keeps an
    # unenhanced portal vein and iliac vessels beside an enhanced aorta, which no real scan shows, and
    # no training CT has a heart, so without a prior the network has no level to draw one at.
    enhancing_structures: str = "core"
    # With ``phase_prior`` and ``prediction`` "sample": the UNet predicts the clean slice *minus* the
    # phase-prior channel, so each enhancing structure starts from its phase's typical HU and the
    # network learns the deviations (texture, edges, a scan's own level). Why tried: with five
    # training scans, how bright a structure comes out on an unseen map swung by 20-40 HU between
    # runs that differed only in seed or in a detail of the data (docs/results/
    # image_generator_noncontrast.txt); the input channel alone did not hold the level there.
    # Measured (run N there): it did not hold it either, and put fewer pairs in range. False (old
    # models, the shipped recipe): the UNet predicts the whole slice.
    prior_residual: bool = False
    # What the phase-prior channel holds on a *training* slice. "typical" (old models): the phase's
    # typical HU, whatever the scan measured. "measured": the scan's own mean HU of each enhancing
    # structure it has measured (the typical HU for a slice the phase remap re-rendered, which puts
    # them there, and for structures the scan has not measured). Why: the real scans sit 10-30 HU
    # off the typical levels (non-contrast spleen 34 against 45, kidneys 12-20 against 32; contrast
    # spleens 78 and 147 against 120), so with "typical" the channel says one level and the target
    # shows another, and the network has to guess each scan's offset from its anatomy; on an unseen
    # map that guess is what swung between runs. With "measured" the channel always states the
    # level the target has. Generation is the same in both: the typical HU of the requested phase.
    # Measured (runs P and P1, docs/results/image_generator_noncontrast.txt; with phase_remap_edge
    # "partial_volume", which it needs): more structure-phase pairs in range on complete maps not
    # used in training in both seeds, but the held-out map missed issue 4's validation bars in both,
    # so the shipped recipe keeps "typical".
    prior_levels: str = "typical"
    # Feed the slice's position k / (Z − 1) as the z channel (True, old models), or a constant 0.
    # Why off: the fraction of a scan's field of view is no anatomical position (a 16-slice AMOS crop
    # and a 112-slice abdomen-pelvis scan put the liver at 0–0.93 and 0.62–1.0), and with five
    # training scans it mostly tells the network which scan it is looking at. The stop-15 generator
    # (trained with it) drew the held-out crop's non-contrast liver at 47 HU with the channel held
    # at 0 and 35 at 1 (real CT 53), sliding from 56 to 31 HU along z where the real liver is flat
    # (docs/results/image_generator_noncontrast.txt). The label slices already say where we are.
    # With two seeds each, off put more structure-phase pairs in range on complete sampled maps
    # (62-64 of 80 against 50-52) and 1-3 fewer on the held-out partial map.
    slice_position: bool = True
    # Weight λ of the structure-level loss: the squared *mean* velocity error inside each labelled
    # structure of slice k (not "body", a scan-dependent mix), averaged over the structures present,
    # added to the per-pixel loss (`guidegen.images.train.structure_level_loss`). Why: a kidney is
    # ~2 % of a slice, so a 60 HU error in its level adds little to the per-pixel loss, which texture
    # dominates; the network then misses organ HU on unseen maps by 60+ HU. Both losses have the
    # same minimiser (the conditional mean), so λ only changes what the network learns first, not
    # what it aims at. 0 (old models) = per-pixel loss only.
    level_loss_weight: float = 0.0
    holdout_cases: tuple[str, ...] = ()
    # A trained model folder of the same network to start from instead of random weights (fine-tuning,
    # or growing a model to a newer vocabulary: `guidegen.training.warm_start`); a relative path is read
    # like the recipe's data paths. None: random initialisation.
    init_from: str | None = None
    infer_phase: bool = True

    def __post_init__(self) -> None:
        _check_positive_int("image_size", self.image_size, 8)
        if len(self.spacing) != 3 or any(not (isinstance(s, (int, float)) and 0.1 <= s <= 20) for s in self.spacing):
            raise ValueError(f"spacing must be three voxel sizes between 0.1 and 20 mm, got {self.spacing!r}")
        if len(self.channels) < 1:
            raise ValueError("channels must list at least one level")
        for c in self.channels:
            _check_positive_int("channels", c)
        _check_positive_int("norm_num_groups", self.norm_num_groups)
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(
                f"channels {self.channels} must all be multiples of norm_num_groups={self.norm_num_groups}"
            )
        levels = self.attention_levels_resolved
        if len(levels) != len(self.channels):
            raise ValueError(
                f"attention_levels must have one entry per level of channels ({len(self.channels)}), got {levels}"
            )
        if not any(levels):
            raise ValueError("attention_levels must enable at least one level (cross-attention carries the condition)")
        if self.image_size % (2 ** (len(self.channels) - 1)):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**(len(channels)-1)="
                f"{2 ** (len(self.channels) - 1)}"
            )
        _check_positive_int("num_res_blocks", self.num_res_blocks)
        _check_positive_int("num_head_channels", self.num_head_channels)
        for c, att in zip(self.channels, levels):
            if att and c % self.num_head_channels:
                raise ValueError(
                    f"channels with attention ({c}) must be multiples of num_head_channels={self.num_head_channels}"
                )
        _check_positive_int("context_dim", self.context_dim)
        _check_positive_int("context_slices", self.context_slices)
        if self.context_slices % 2 == 0:
            raise ValueError(f"context_slices must be odd (k−r … k+r), got {self.context_slices}")
        _check_positive_int("num_classes", self.num_classes, 2)
        _check_positive_int("num_phases", self.num_phases)
        _check_positive_int("text_dim", self.text_dim)
        _check_probability("cond_dropout", self.cond_dropout)
        _check_probability("prev_dropout", self.prev_dropout)
        if not (isinstance(self.prev_noise, (int, float)) and 0 <= self.prev_noise <= 1):
            raise ValueError(f"prev_noise must be in [0, 1] model units, got {self.prev_noise!r}")
        if self.prediction not in _PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(_PREDICTIONS)}, got {self.prediction!r}")
        if not isinstance(self.flow, FlowConfig):
            raise ValueError(f"flow must be a FlowConfig, got {type(self.flow).__name__}")
        _check_positive_int("flow_steps", self.flow_steps)
        if self.sample_shift is not None and not (
            isinstance(self.sample_shift, (int, float)) and math.isfinite(self.sample_shift) and self.sample_shift > 0
        ):
            raise ValueError(f"sample_shift must be a positive number or null, got {self.sample_shift!r}")
        if not (isinstance(self.guidance_scale, (int, float)) and math.isfinite(self.guidance_scale)):
            raise ValueError(f"guidance_scale must be a finite number, got {self.guidance_scale!r}")
        if not (isinstance(self.noise_correlation, (int, float)) and 0 <= self.noise_correlation < 1):
            raise ValueError(f"noise_correlation must be in [0, 1), got {self.noise_correlation!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check_positive_int("warmup_steps", self.warmup_steps, 0)
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip!r}")
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("grad_accumulation", self.grad_accumulation)
        if self.batch_size % self.grad_accumulation:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of grad_accumulation={self.grad_accumulation}"
            )
        _check_positive_int("steps", self.steps)
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        _check_positive_int("checkpoint_every", self.checkpoint_every)
        _check_positive_int("keep_checkpoints", self.keep_checkpoints)
        _check_probability("p_hide_classes", self.p_hide_classes)
        _check_probability("p_phase_remap", self.p_phase_remap)
        if self.prior_residual and not (self.phase_prior and self.prediction == "sample"):
            raise ValueError(
                'prior_residual needs phase_prior true and prediction "sample" (it offsets the predicted slice)'
            )
        if self.prior_levels not in _PRIOR_LEVELS:
            raise ValueError(f"prior_levels must be one of {', '.join(_PRIOR_LEVELS)}, got {self.prior_levels!r}")
        if self.prior_levels != "typical" and not self.phase_prior:
            raise ValueError('prior_levels "measured" needs phase_prior true (it sets the phase-prior channel)')
        if self.enhancing_structures not in ENHANCING_SETS:
            raise ValueError(
                f"enhancing_structures must be one of {', '.join(ENHANCING_SETS)}, got {self.enhancing_structures!r}"
            )
        if self.phase_remap_edge not in _REMAP_EDGES:
            raise ValueError(
                f"phase_remap_edge must be one of {', '.join(_REMAP_EDGES)}, got {self.phase_remap_edge!r}"
            )
        if self.label_interpolation not in _LABEL_INTERPOLATIONS:
            raise ValueError(
                f"label_interpolation must be one of {', '.join(_LABEL_INTERPOLATIONS)}, "
                f"got {self.label_interpolation!r}"
            )
        if not (isinstance(self.level_loss_weight, (int, float)) and 0 <= self.level_loss_weight <= 100):
            raise ValueError(f"level_loss_weight must be in [0, 100], got {self.level_loss_weight!r}")
        if not (isinstance(self.prev_shift_hu, (int, float)) and 0 <= self.prev_shift_hu <= 500):
            raise ValueError(f"prev_shift_hu must be in [0, 500] HU, got {self.prev_shift_hu!r}")
        _check_positive_int("log_every", self.log_every)
        _check_positive_int("seed", self.seed, 0)
        _check_probability("augment_prob", self.augment_prob)
        if not (0 <= self.rotate_deg <= 45):
            raise ValueError(f"rotate_deg must be in [0, 45], got {self.rotate_deg!r}")
        if not (0 <= self.scale < 0.5):
            raise ValueError(f"scale must be in [0, 0.5), got {self.scale!r}")
        if not (self.translate_mm >= 0):
            raise ValueError(f"translate_mm must be >= 0, got {self.translate_mm!r}")

    @property
    def attention_levels_resolved(self) -> tuple[bool, ...]:
        """``attention_levels`` with the default (attention only at the lowest level) filled in."""
        if self.attention_levels is None:
            return tuple(i == len(self.channels) - 1 for i in range(len(self.channels)))
        return tuple(bool(a) for a in self.attention_levels)

    @property
    def context_radius(self) -> int:
        """r such that slices k−r … k+r are shown."""
        return self.context_slices // 2

    @property
    def in_channels(self) -> int:
        """Assembled input channels (`guidegen.images.model.assemble_inputs`): noisy slice (1) + per
        context slice K one-hot + 1 unknown, + previous slice (1) + has-previous flag (1) + z position
        (1; a constant 0 when ``slice_position`` is off). The network adds the phase-prior channel
        itself when ``phase_prior`` is on."""
        return 1 + self.context_slices * (self.num_classes + 1) + 3
