"""`ConditionalImageGenerator`: CT volumes from label maps, one axial slice at a time (GuideGen stage 2).

Dai et al. (2024) generate the CT of a sampled label map with a 2-D conditional diffusion model run
autoregressively along z: slice k is generated from noise, conditioned on the masks of slices
k−1, k, k+1 and on the *generated* slice k−1, so the CT follows the mask exactly while neighbouring
slices stay consistent. We use a rectified flow (`guidegen.diffusion.flow`) with a few Euler steps
per slice (the shipped model samples with 4; docs/results/fast_cpu.txt) instead of DDPM.

* `sample_volume` is the sampling loop, a pure function: every volume of a batch is at slice k at
  the same time (the batch dimension is volumes), each volume draws its noise from its own
  ``torch.Generator``, so a batch gives the same volumes as generating them one by one.
* `ConditionalImageGenerator.generate` takes label `Volume`s on the model grid and returns int16 HU
  `Volume`s on the same grid.
* `guidegen.images.any_grid.generate_ct` ("bring your own mask") runs it for a label map on any
  grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from guidegen.checkpoint import load_checkpoint, load_weights, save_checkpoint
from guidegen.diffusion.flow import FlowConfig, euler_sample, guided_velocity, sampling_schedule
from guidegen.errors import InputError
from guidegen.images.config import PHASES, ImageGeneratorConfig
from guidegen.images.hu import units_to_int16_hu
from guidegen.images.model import SliceDenoiser, assemble_inputs, context_labels, mask_channels, phase_id
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import NAMES, NUM_CLASSES, UNKNOWN, fold_for_drawing, fold_names
from guidegen.runtime import CompiledNetwork, NetworkSpec, compile_network
from guidegen.runtime.backends import cache_dirs, torch_threads_for, weights_digest
from guidegen.runtime.precision import autocast, resolve_precision
from guidegen.settings import GenerationSettings, item_seeds

__all__ = [
    "ConditionalImageGenerator",
    "SliceCallback",
    "annotated_vector",
    "checked_ids",
    "image_settings",
    "sample_volume",
]

#: ``callback(k, slices)`` after slice k of every volume is finished; ``slices`` is (N, X, Y) model units.
SliceCallback = Callable[[int, Tensor], None]
#: ``network(inputs, t, phase, annotated, text, uncond) → (N, 1, H, W)`` float32 velocity; ``text``
#: and ``uncond`` may be ``None`` (no prompt; all conditional).
VelocityNetwork = Callable[..., Tensor]


class _ExportableSlice(nn.Module):
    """The slice denoiser with every argument a tensor (no ``None``), as ONNX export needs: no prompt
    is a row of zeros (`SliceDenoiser.condition_token` treats both alike), all-conditional is an
    all-False ``uncond``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self, inputs: Tensor, t: Tensor, phase: Tensor, annotated: Tensor, text: Tensor, uncond: Tensor
    ) -> Tensor:
        return self.net(inputs, t, phase, annotated, text, uncond)


class ConditionalImageGenerator(nn.Module):
    """The slice denoiser with its configuration, loadable and savable as a checkpoint folder.

    Args:
        config: the generator configuration.
    """

    def __init__(self, config: ImageGeneratorConfig):
        super().__init__()
        if not isinstance(config, ImageGeneratorConfig):
            raise ValueError(f"config must be an ImageGeneratorConfig, got {type(config).__name__}")
        self.config = config
        self.net = SliceDenoiser(config)
        self.source: Path | None = None  # the checkpoint folder it was loaded from (caches the exports)
        self._networks: dict[tuple[str, str, str], CompiledNetwork] = {}

    def forward(
        self,
        inputs: Tensor,
        t: Tensor,
        phase: Tensor,
        annotated: Tensor,
        text: Tensor | None = None,
        uncond: Tensor | None = None,
        levels: Tensor | None = None,
    ) -> Tensor:
        """See `SliceDenoiser.forward`: (N, C_in, H, W) inputs → (N, 1, H, W) velocity."""
        return self.net(inputs, t, phase, annotated, text, uncond, levels)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> ConditionalImageGenerator:
        """Load a checkpoint folder written by `save_pretrained` or training (checksums verified)."""
        config, weights, _ = load_checkpoint(folder, ImageGeneratorConfig)
        model = cls(config)
        load_weights(model, weights, folder)
        model.source = Path(folder)
        return model.to(device).eval()

    def save_pretrained(self, folder: str | Path, overwrite: bool = True) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ checksums) atomically."""
        return save_checkpoint(
            folder, self.config, self.state_dict(), overwrite=overwrite, metadata={"component": "image_generator"}
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def network(self, backend: str = "auto", precision: str | None = "auto") -> CompiledNetwork:
        """The velocity network ready for sampling in a backend and precision (`guidegen.runtime`).

        ``precision`` "auto" is bf16 only where it is native; the config's ``precision`` is the
        training precision and does not apply here. Compiled once per (backend, precision, device)
        and kept; ONNX exports are cached next to the checkpoint (``.runtime-cache/``).
        """
        key = (backend, precision or "auto", str(self.device))
        if key not in self._networks:
            cfg = self.config
            n = 2  # the export frees the batch dimension; two items show it which one that is
            example = (
                torch.randn(
                    n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)
                ),
                torch.tensor([0.7, 0.3]),
                torch.tensor([min(3, cfg.num_phases - 1), 0]),
                torch.ones(n, cfg.num_classes),
                torch.randn(n, cfg.text_dim, generator=torch.Generator().manual_seed(1)),
                torch.tensor([False, True]),
            )
            # Wraps the generator itself (not only .net), so a forward replaced on the instance is used.
            spec = NetworkSpec(
                "image_generator",
                _ExportableSlice(self).eval(),
                example,
                ("inputs", "t", "phase", "annotated", "text", "uncond"),
                weights_digest(self.net, repr(cfg)),
                cache_dirs(self.source),
            )
            compiled = compile_network(spec, backend, precision or "auto", self.device)
            self._networks[key] = _with_defaults(compiled, cfg.text_dim)
        return self._networks[key]

    @torch.no_grad()
    def generate(
        self,
        labels: Volume | Sequence[Volume],
        seed: int | Sequence[int] = 0,
        *,
        phase: str | int | None | Sequence[str | int | None] = None,
        prompt: str | None = None,
        text_embedding: Tensor | None = None,
        annotated: Sequence[str] | None = None,
        settings: GenerationSettings | None = None,
        noise_correlation: float | None = None,
        callback: SliceCallback | None = None,
        check_grid: bool = True,
        **options: object,
    ) -> list[Volume]:
        """Generate CTs for label maps already on the model grid (use `generate_ct` for any other grid).

        Volumes of equal shape are generated together as one batch.

        Args:
            labels: label `Volume`(s) (X, Y, Z) in GuideGen ids with X = Y = ``image_size`` and the
                model's voxel size; 255 = unknown.
            seed: one seed, or one per volume (volume i uses ``seed + i`` when one seed is given).
            phase: contrast phase name or id (`guidegen.images.config.PHASES`), or a sequence with
                one per volume; default the settings' ``phase`` (``None`` = unknown).
            prompt: text prompt (encoded with the offline MiniLM `guidegen.text.encoder.TextEncoder`).
            text_embedding: (D,) or (N, D) pooled prompt embedding instead of ``prompt``.
            annotated: class names treated as annotated; default every class.
            settings: `guidegen.settings.GenerationSettings`; this stage reads ``image_steps`` and
                ``image_guidance`` (default the config's ``flow_steps``, ``guidance_scale``),
                ``phase``, ``precision`` and ``backend`` (`guidegen.runtime`).
            noise_correlation: overrides the config's ``noise_correlation``.
            callback: see `SliceCallback` (called per batch of equal-shape volumes).
            check_grid: refuse labels whose grid is not the model's (`generate_ct` resamples onto a
                grid of its own choosing first and turns this off).
            **options: any `GenerationSettings` field, applied on top of ``settings``.

        Returns:
            int16 HU CT `Volume`s on the labels' grids, in input order; ``meta["runtime"]`` says which
            backend and precision really ran.
        """
        settings = image_settings(settings, options)
        vols = [labels] if isinstance(labels, Volume) else list(labels)
        if not vols:
            raise ValueError("labels must contain at least one Volume")
        if check_grid:
            for v in vols:
                _check_model_grid(v, self.config)
        cfg = self.config
        network = self.network(settings.backend, settings.precision)
        seeds = item_seeds(seed, len(vols))
        text = _text_embedding(prompt, text_embedding, len(vols), cfg.text_dim)
        ann = annotated_vector(annotated, cfg.num_classes)
        phase = settings.phase if phase is None else phase
        if phase is None or isinstance(phase, (str, int)):
            phases = [phase_id(phase)] * len(vols)
        else:
            phases = [phase_id(p) for p in phase]
            if len(phases) != len(vols):
                raise ValueError(f"phase must be one phase or one per volume ({len(vols)}), got {len(phases)}")
        results: list[Volume | None] = [None] * len(vols)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, v in enumerate(vols):
            groups.setdefault(v.shape, []).append(i)
        for idx in groups.values():
            lab = torch.stack([torch.from_numpy(checked_ids(vols[i], cfg.num_classes)) for i in idx]).to(self.device)
            gens = [torch.Generator(device=self.device).manual_seed(seeds[i]) for i in idx]
            units = sample_volume(
                self,
                lab,
                flow=cfg.flow,
                steps=settings.image_steps or cfg.flow_steps,
                guidance=cfg.guidance_scale if settings.image_guidance is None else settings.image_guidance,
                phase=torch.tensor([phases[i] for i in idx], dtype=torch.long, device=self.device),
                annotated=ann.expand(len(idx), -1).to(self.device),
                text=None if text is None else text[idx].to(self.device),
                generators=gens,
                network=network,
                callback=callback,
                noise_correlation=cfg.noise_correlation if noise_correlation is None else noise_correlation,
            )
            for j, i in enumerate(idx):
                meta = {
                    "seed": seeds[i],
                    "phase": PHASES[phases[i]] if phases[i] else None,
                    "prompt": prompt,
                    "generator": "guidegen.images",
                    "runtime": {"backend": network.backend, "precision": network.precision},
                }
                results[i] = Volume(units_to_int16_hu(units[j]), vols[i].affine.copy(), "ct", meta)
        return results  # type: ignore[return-value]


def image_settings(settings: GenerationSettings | None, options: dict[str, object]) -> GenerationSettings:
    """The settings with keyword options applied; ``steps``/``guidance`` name the *mask* sampler's
    settings, so passing them to the image stage is a mistake worth stopping (it would be ignored)."""
    mistaken = sorted({"steps", "guidance"} & set(options))
    if mistaken:
        raise TypeError(
            f"{', '.join(mistaken)} are the mask sampler's settings; the image generator's are "
            f"{', '.join('image_' + m for m in mistaken)}"
        )
    return GenerationSettings.from_options(settings, **options)


def _with_defaults(compiled: CompiledNetwork, text_dim: int) -> CompiledNetwork:
    """Give an exported network the tensors that stand for ``None`` (see `_ExportableSlice`)."""
    if compiled.backend == "torch":
        return compiled

    def fill(call: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def filled(
            inputs: Tensor, t: Tensor, phase: Tensor, annotated: Tensor, text: Tensor | None, uncond: Tensor | None
        ) -> Tensor:
            n = inputs.shape[0]
            text = inputs.new_zeros(n, text_dim) if text is None else text.float()
            uncond = torch.zeros(n, dtype=torch.bool, device=inputs.device) if uncond is None else uncond.bool()
            return call(inputs.float(), t.float(), phase.long(), annotated.float(), text, uncond)

        return filled

    return compiled.wrapped(fill)


def annotated_vector(annotated: Sequence[str] | None, num_classes: int) -> Tensor:
    """(1, K) float indicator of annotated classes; ``None`` = all (a complete label map)."""
    vec = torch.ones(1, num_classes)
    if annotated is not None:
        vec.zero_()
        vec[0, 0] = 1.0  # background is defined whenever anything is annotated
        for name in annotated:
            if name not in NAMES:
                raise ValueError(f"annotated: unknown class {name!r}; valid classes: {', '.join(NAMES)}")
        for name in fold_names(annotated, num_classes, drawing=True):  # as an older model draws newer classes
            vec[0, NAMES.index(name)] = 1.0
    return vec


def _text_embedding(prompt: str | None, embedding: Tensor | None, n: int, dim: int) -> Tensor | None:
    if prompt is not None and embedding is not None:
        raise ValueError("give prompt or text_embedding, not both")
    if prompt is not None:
        from guidegen.text.encoder import TextEncoder  # loads transformers only when a prompt is given

        embedding = TextEncoder().encode([prompt]).pooled
    if embedding is None:
        return None
    embedding = torch.as_tensor(embedding, dtype=torch.float32)
    if embedding.ndim == 1:
        embedding = embedding.unsqueeze(0)
    if embedding.shape[-1] != dim or embedding.shape[0] not in (1, n):
        raise ValueError(
            f"text_embedding must have shape ({dim},), (1, {dim}) or ({n}, {dim}), got {tuple(embedding.shape)}"
        )
    return embedding.expand(n, -1)


def _check_model_grid(labels: Volume, config: ImageGeneratorConfig) -> None:
    if labels.kind != "labels":
        raise ValueError(f"labels must be label Volumes, got kind {labels.kind!r}")
    x, y, _ = labels.shape
    if (x, y) != (config.image_size, config.image_size) or not np.allclose(labels.spacing, config.spacing, rtol=0.02):
        raise ValueError(
            f"labels must be on the model grid ({config.image_size}×{config.image_size} in-plane, "
            f"{config.spacing} mm), got shape {labels.shape} at {labels.spacing} mm; use generate_ct()"
        )


def checked_ids(labels: Volume, num_classes: int) -> np.ndarray:
    """The map's ids as int64 for a model of ``num_classes`` classes: GuideGen ids and 255 only; ids
    of classes newer than the model are folded to the class the model draws them as (`fold_for_drawing`)."""
    arr = np.asarray(labels.array)
    bad = (arr != UNKNOWN) & ((arr < 0) | (arr >= NUM_CLASSES))
    if bad.any():
        raise InputError(
            labels.meta.get("source"),
            f"label ids must be 0..{NUM_CLASSES - 1} (GuideGen vocabulary) "
            f"or {UNKNOWN}; found {sorted(np.unique(arr[bad]).tolist())[:5]}",
        )
    return fold_for_drawing(arr, num_classes).astype(np.int64)


class SliceVelocity:
    """The flow's velocity for one slice of a batch of ``n``, with classifier-free guidance: at scale
    1 the conditional call alone, at 0 the unconditional one, otherwise both as one batch of 2n.
    Built once per volume (the paired conditioning is concatenated once); `at` binds a slice's
    conditioning. Shared by `sample_volume` and the inpainting sampler (`guidegen.images.inpaint`).
    """

    def __init__(
        self,
        network: Callable[..., Tensor],
        guidance: float,
        phase: Tensor,
        annotated: Tensor,
        text: Tensor | None,
        n: int,
        device: torch.device,
    ):
        self.network, self.guidance, self.n, self.device = network, guidance, n, device
        self.phase, self.annotated, self.text = phase, annotated, text
        self.uncond = torch.ones(n, dtype=torch.bool, device=device)
        self.pair = torch.cat([torch.zeros(n, dtype=torch.bool, device=device), self.uncond])
        self.phase2, self.annotated2 = torch.cat([phase, phase]), torch.cat([annotated, annotated])
        self.text2 = None if text is None else torch.cat([text, text])

    def at(self, masks: Tensor, prev: Tensor, has_prev: Tensor, zpos: Tensor) -> Callable[[Tensor, float], Tensor]:
        """``velocity(x_t, t)`` of the slice whose conditioning is given."""
        n = self.n

        def velocity(x_t: Tensor, t: float) -> Tensor:
            inputs = assemble_inputs(x_t, masks, prev, has_prev, zpos)
            tt = torch.full((n,), t, device=self.device)
            if self.guidance == 1.0:
                return self.network(inputs, tt, self.phase, self.annotated, self.text, None)
            if self.guidance == 0.0:
                return self.network(inputs, tt, self.phase, self.annotated, self.text, self.uncond)
            both = self.network(
                torch.cat([inputs, inputs]), torch.cat([tt, tt]), self.phase2, self.annotated2, self.text2, self.pair
            )
            return guided_velocity(both[:n], both[n:], self.guidance)

        return velocity


def correlated_noise(previous: Tensor | None, fresh: Tensor, correlation: float) -> Tensor:
    """A slice's starting noise ``ε_k = ρ·ε_{k−1} + √(1 − ρ²)·fresh``, or ``fresh`` where there is no
    previous slice's noise; ε_k stays standard normal: ρ²·1 + (1 − ρ²)·1 = 1."""
    if previous is None or correlation == 0.0:
        return fresh
    return correlation * previous + math.sqrt(1.0 - correlation**2) * fresh


@torch.no_grad()
def sample_volume(
    model: nn.Module,
    labels: Tensor,
    *,
    flow: FlowConfig,
    steps: int,
    guidance: float,
    phase: Tensor,
    annotated: Tensor,
    text: Tensor | None,
    generators: Sequence[torch.Generator],
    precision: str = "auto",
    callback: SliceCallback | None = None,
    noise_correlation: float = 0.0,
    network: VelocityNetwork | None = None,
) -> Tensor:
    """Generate N volumes slice by slice along z, each slice conditioned on the generated previous one.

    For k = 0 … Z−1, all volumes together: draw ``ε_k`` (N, 1, X, Y) (volume i from ``generators[i]``),
    integrate the rectified-flow ODE from t = 1 to 0 with ``steps`` Euler steps, the velocity being
    ``v = v_u + s·(v_c − v_u)`` (classifier-free guidance; only ``v_c`` when s = 1, only ``v_u`` when
    s = 0, both in one batched call otherwise), and feed the result (clipped to [−1, 1]) as the
    previous slice of k + 1. Slice 0 has has-prev = 0.

    Args:
        model: callable ``(inputs, t, phase, annotated, text, uncond) → velocity`` (a
            `ConditionalImageGenerator`); it must have ``config.context_radius`` / ``num_classes``.
        labels: (N, X, Y, Z) int64 label volumes (255 = unknown).
        flow: rectified-flow settings (the schedule's shift, unless ``model.config.sample_shift`` is set).
        steps: Euler steps per slice.
        guidance: classifier-free guidance scale s.
        phase: (N,) phase ids.
        annotated: (N, K) annotated-class indicators.
        text: (N, D) pooled prompt embeddings or ``None``.
        generators: N generators, one per volume.
        precision: autocast precision of ``model`` ("auto", "fp32", "bf16", "fp16"); unused with ``network``.
        callback: ``callback(k, slices)`` after each slice.
        noise_correlation: ρ in [0, 1); the starting noise of slice k is ρ·ε_{k−1} + √(1−ρ²)·ξ_k
            (`ImageGeneratorConfig.noise_correlation`); 0 = independent noise per slice.
        network: the velocity network to call instead of ``model`` (`ConditionalImageGenerator.network`:
            another backend or precision); ``model`` then only gives the config.

    Returns:
        (N, X, Y, Z) float32 volumes in model units (`guidegen.images.hu`).
    """
    cfg = model.config
    n, x, y, z = labels.shape
    if not 0.0 <= noise_correlation < 1.0:
        raise ValueError(f"noise_correlation must be in [0, 1), got {noise_correlation!r}")
    if len(generators) != n:
        raise ValueError(f"generators must hold one generator per volume ({n}), got {len(generators)}")
    device = labels.device
    if network is None:
        precision = resolve_precision(precision, device)

        def network(*args: Tensor | None) -> Tensor:
            with autocast(device, precision):
                return model(*args).float()

    shift = getattr(cfg, "sample_shift", None)
    schedule = sampling_schedule(steps, flow.shift if shift is None else shift)
    slice_velocity = SliceVelocity(network, guidance, phase, annotated, text, n, device)
    out = torch.empty(n, x, y, z, dtype=torch.float32, device=device)
    prev = torch.zeros(n, 1, x, y, device=device)
    has_prev = torch.zeros(n, device=device)
    noise = torch.zeros(n, 1, x, y, device=device)  # ε_{k−1}; slice 0 starts from fresh noise alone
    with torch_threads_for(network):
        for k in range(z):
            masks = mask_channels(context_labels(labels, k, cfg.context_radius), cfg.num_classes)
            zpos = torch.full((n,), k / max(z - 1, 1) if cfg.slice_position else 0.0, device=device)
            fresh = torch.stack([torch.randn(1, x, y, generator=g, device=device) for g in generators])
            noise = correlated_noise(None if k == 0 else noise, fresh, noise_correlation)
            velocity = slice_velocity.at(masks, prev, has_prev, zpos)
            slice_k = euler_sample(velocity, noise, schedule).clamp(-1.0, 1.0)
            out[..., k] = slice_k[:, 0]
            prev, has_prev = slice_k, torch.ones(n, device=device)
            if callback is not None:
                callback(k, slice_k[:, 0])
    return out
