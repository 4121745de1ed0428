"""`VolumetricMaskSampler`: prompt → low-resolution 3-D label maps (GuideGen stage 2).

Multinomial diffusion (`guidegen.diffusion.categorical`) with a 3-D UNet (`MaskDenoiser`)
conditioned on the prompt's text tokens and its parsed attribute record, sampled with a strided
ancestral sampler and classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from guidegen.checkpoint import load_checkpoint, load_weights, save_checkpoint
from guidegen.diffusion.categorical import CategoricalDiffusion, CategoricalDiffusionConfig
from guidegen.diffusion.categorical_sampling import ancestral_sample
from guidegen.diffusion.guidance import guided_logits
from guidegen.errors import InputError
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, ORGANS, UNKNOWN
from guidegen.masks.conditioning import attribute_vector
from guidegen.masks.config import FINAL_DECODES, MaskSamplerConfig
from guidegen.masks.model import MaskDenoiser
from guidegen.masks.placement import (
    apply_stated_organs,
    draw_aorta_tube,
    fill_from_nearest,
    name_kidneys_by_side,
    place_stated_tumours,
    remove_tumours,
)
from guidegen.masks.start_maps import load_start_maps, start_map, start_steps
from guidegen.masks.tumour_stage import TumourStage
from guidegen.runtime import CompiledNetwork, NetworkSpec, compile_network
from guidegen.runtime.backends import cache_dirs, torch_threads_for, weights_digest
from guidegen.settings import GenerationSettings, item_seeds
from guidegen.text.attributes import CUTTING_FIELDS, SOLID_ORGANS, Attributes, OrganFinding, changed_organs
from guidegen.text.encoder import TextEncoder, TextEncoderConfig
from guidegen.text.measure import measure_labels
from guidegen.text.parse import parse_prompt

#: Seed-sequence prefix of the tumour placement's random stream ("tumr").
_PLACEMENT_STREAM = 0x74756D72
#: Seed-sequence prefix of the aorta's stream ("aort"): its own, so that redrawing the aorta does
#: not change the tumour and organ-size draws of the same seed.
_AORTA_STREAM = 0x616F7274
#: Seed-sequence prefix of the unstated organs' sizes ("unst").
_UNSTATED_STREAM = 0x756E7374
#: An unmentioned organ within this fraction of its normal range's ends is resized too: upsampled to
#: the image grid, organs measure 1-4 % smaller (docs/results/mask_unstated.txt): a right kidney of
#: 103 mL on the sampler's grid measured 99 mL there and was reported "mildly small".
UNSTATED_GUARD = 0.05
#: Seed-sequence prefix of tumours placed on a finer grid (`place_tumours_on`, "fine").
_FINE_TUMOUR_STREAM = 0x66696E65


def placement_rng(seed: int, index: int | None = None, stream: int = _PLACEMENT_STREAM) -> np.random.Generator:
    """A placement stage's random stream for a map (``stream``: the tumours' and organ sizes', or the
    aorta's): the map's own seed (and ``index``, for callers that place several maps from one
    seed), never the network's draws, so placement can be redone on saved maps."""
    # numpy seed sequences take non-negative integers only; torch seeds may be negative.
    return np.random.default_rng([stream, int(seed) % 2**64] + ([int(index)] if index is not None else []))


def apply_statements(
    volume: Volume,
    attributes: Attributes,
    seed: int,
    *,
    tumours: bool = True,
    organs: bool = True,
    unstated: bool = False,
    aorta: bool = True,
    defer_tumours: bool = False,
) -> Volume:
    """The placement stage on one sampled map, with its own streams (`placement_rng`):

    * first, kidney labels drawn on the wrong sides of the patient are exchanged
      (`guidegen.masks.placement.name_kidneys_by_side`; ``meta["kidney_labels_exchanged"]``), so
      that "right kidney" in what follows and in the written map is the kidney on the patient's right;
    * ``aorta`` (``aorta_placement="tube"``): the network's aorta redrawn as one tube of normal
      calibre along it (`guidegen.masks.placement.draw_aorta_tube`), the record in
      ``meta["aorta_placement"]``; first, so that organs and tumours are placed around it;
    * ``organs`` (``organ_sizes="scale"``): organs the prompt calls enlarged, small, normal or
      absent are given that size (`guidegen.masks.placement.apply_stated_organs`), the record in
      ``meta["organ_sizes"]``;
    * ``unstated`` (``organ_sizes="all"``): as well, every solid organ the prompt leaves unchanged
      (`unstated_normal`) is brought into its normal range when it lies outside it, recorded as
      stated "normal (not stated)";
    * ``tumours`` (``tumour_placement="insert"``): the stated tumours are placed, their hosts grown
      to hold them unless the prompt states the host's size (`place_stated_tumours`); a prompt silent
      on tumours gets none (the network's tumour voxels are removed); the record in
      ``meta["tumour_placement"]``. With ``defer_tumours`` the network's tumour voxels are only
      removed: the caller places the stated ones on its own finer grid (`place_tumours_on`).
    """
    volume, exchanged = name_kidneys_by_side(volume)
    if exchanged:
        volume.meta["kidney_labels_exchanged"] = True
    if aorta:
        volume, drawn = draw_aorta_tube(volume, placement_rng(seed, stream=_AORTA_STREAM))
        volume.meta["aorta_placement"] = drawn
    rng = placement_rng(seed)
    sized: dict = {}
    if organs:
        volume, sized = apply_stated_organs(volume, attributes.organs, rng)
        normal = unstated_normal(volume, attributes) if unstated else []
        if normal:
            # Their own stream: the tumours of a seed are drawn as without this step.
            findings = {name: OrganFinding(state="normal") for name in normal}
            rng_unstated = placement_rng(seed, stream=_UNSTATED_STREAM)
            volume, more = apply_stated_organs(volume, findings, rng_unstated, guard=UNSTATED_GUARD)
            sized.update({name: dict(entry, stated="normal (not stated)") for name, entry in more.items()})
    if tumours:
        stated_size = _stated_size(attributes)
        if attributes.tumours is None or (defer_tumours and attributes.tumours):
            # A prompt silent on tumours gets none: the network's tumour voxels are scattered specks
            # (1-23 voxels in 66 of the suite's 74 maps), which the report would list as lesions.
            removed = int(np.count_nonzero(volume.array == ID["tumour"]))
            stated = attributes.tumours is not None
            volume, record = remove_tumours(volume), {"mode": "insert", "stated": stated, "removed_voxels": removed}
            if stated:
                record["deferred"] = True  # placed on the caller's finer grid (`place_tumours_on`)
        else:
            volume, record = place_stated_tumours(volume, attributes.tumours, rng, keep_size=stated_size)
        volume.meta["tumour_placement"] = record
    if organs:
        volume.meta["organ_sizes"] = sized
    return volume


def draw_learned_tumours(volume: Volume, attributes: Attributes, seed: int, stage: TumourStage) -> Volume:
    """``tumour_placement="learned"``: the first network's tumour voxels given back to the tissue around
    them (the first stage draws the anatomy), then the stated tumour groups drawn by the learned
    tumour stage; the record in ``meta["tumour_placement"]``."""
    removed = int(np.count_nonzero(volume.array == ID["tumour"]))
    volume = remove_tumours(volume)
    record: dict = {"mode": "learned", "stated": attributes.tumours is not None, "removed_voxels": removed}
    if attributes.tumours:
        volume, drawn = stage.draw(volume, attributes.tumours, seed)
        record["groups"] = drawn["groups"]
    volume.meta["tumour_placement"] = record
    return volume


def _stated_size(attributes: Attributes) -> list[str]:
    """Organs whose size the prompt states: never grown to hold a tumour."""
    return [o for o, f in attributes.organs.items() if f.state is not None]


def place_tumours_on(volume: Volume, attributes: Attributes, seed: int) -> Volume:
    """The stated tumours placed into a finer copy of a map sampled with ``tumours_later`` (the image
    grid the map was upsampled to): `place_stated_tumours` with the map's own random stream, the
    record in ``meta["tumour_placement"]`` (with the grid's voxel size).

    Why not on the sampler's grid: a tumour is fitted to its stated diameter as measured on the grid
    it is drawn on, and on 8 mm voxels that measure (voxel centres) falls short of the tumour's extent
    by about a voxel. Drawn there and upsampled, a stated 1.5 cm tumour measured 16-24 mm on the
    3 mm map the report is written from, 2 cm 23-29 mm, 3 cm 33-35 mm (docs/results/tumour_grid.txt).
    """
    if not attributes.tumours:
        return volume
    stated_size = _stated_size(attributes)
    rng = placement_rng(seed, stream=_FINE_TUMOUR_STREAM)
    out, record = place_stated_tumours(volume, attributes.tumours, rng, keep_size=stated_size)
    record["grid_mm"] = [round(float(s), 3) for s in volume.spacing]
    out.meta["tumour_placement"] = record
    return out


def unstated_normal(volume: Volume, attributes: Attributes) -> list[str]:
    """The solid organs (`SOLID_ORGANS`) a prompt leaves unchanged (`changed_organs`, and not
    stated normal either: those are scaled as stated) that the map holds whole, so a normal size can
    be given to them. None when the prompt's field of view cuts them (`CUTTING_FIELDS`)."""
    if attributes.field_of_view in CUTTING_FIELDS:
        return []
    changed = changed_organs(attributes)
    measured = measure_labels(volume).attributes.organs
    out = []
    for name in SOLID_ORGANS:
        stated = attributes.organs.get(name)
        found = measured.get(name)
        if name in changed or (stated is not None and stated.state is not None):
            continue
        if found is not None and found.volume_ml and found.partial is False:
            out.append(name)
    return out


def sampler_grid(config: MaskSamplerConfig) -> np.ndarray:
    """The sampler's affine: RAS+, ``spacing`` mm, centred on the world origin."""
    affine = np.diag([*config.spacing, 1.0])
    affine[:3, 3] = -(np.asarray(config.shape) - 1) / 2 * np.asarray(config.spacing)
    return affine


def diffusion_from_config(config: MaskSamplerConfig) -> CategoricalDiffusion:
    """The mask sampler's categorical diffusion; voxels labelled `UNKNOWN` are the unknown ones."""
    return CategoricalDiffusion(
        CategoricalDiffusionConfig(
            num_classes=config.num_classes,
            num_timesteps=config.num_timesteps,
            schedule=config.schedule,  # type: ignore[arg-type]
            kl_weight=config.kl_weight,
            ce_weight=config.ce_weight,
            ignore_index=UNKNOWN,
        )
    )


#: A logit whose class never wins: e^-10⁴ is 0 in every float type, and it stays finite.
_IMPOSSIBLE_LOGIT = -1.0e4


def organ_free_top_mask(config: MaskSamplerConfig, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """(1, K, 1, 1, Z) bool: the organ and tumour classes in the config's ``organ_free_top`` slices."""
    if config.organ_free_top == 0:
        return None
    classes = [ID[name] for name in (*ORGANS, "tumour") if ID[name] < config.num_classes]
    mask = torch.zeros((1, config.num_classes, 1, 1, config.shape[2]), dtype=torch.bool, device=device)
    mask[:, classes, :, :, config.shape[2] - config.organ_free_top :] = True
    return mask


def keep_main_components(labels: np.ndarray, classes: Sequence[str] = ORGANS) -> np.ndarray:
    """Remove floating islands: each organ keeps its largest 26-connected component.

    The voxels removed take the most common neighbouring label, so no hole is left behind.
    """
    out = labels.copy()
    structure = np.ones((3, 3, 3), bool)
    removed = np.zeros(labels.shape, bool)
    for name in classes:
        mask = labels == ID[name]
        comps, n = ndimage.label(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        removed |= mask & (comps != int(np.argmax(sizes)))
    if removed.any():
        out = fill_from_nearest(labels, removed)
        # An island whose nearest kept voxel is its own organ (across a gap) must not stay that organ.
        out[removed & (out == labels)] = 0
    return out


class VolumetricMaskSampler:
    """Samples label maps from prompts.

    Example:
        >>> sampler = VolumetricMaskSampler.from_pretrained("models/default/mask_sampler")
        >>> masks = sampler.sample_masks("4 cm sigmoid colon cancer", n=2, seed=0)
    """

    def __init__(
        self,
        config: MaskSamplerConfig,
        model: MaskDenoiser | None = None,
        text_encoder: TextEncoder | None = None,
        device: str | torch.device = "cpu",
    ):
        self.config = config
        self.device = torch.device(device)
        self.model = (model or MaskDenoiser(config)).to(self.device).eval()
        self.text_encoder = text_encoder or TextEncoder(TextEncoderConfig(max_length=config.max_text_tokens))
        self.diffusion = diffusion_from_config(config)
        self.source: Path | None = None  # the checkpoint folder it was loaded from (caches the exports)
        self._networks: dict[tuple[str, str], CompiledNetwork] = {}
        self._start_maps: np.ndarray | None = None
        self._tumour_stage: TumourStage | None = None

    def tumour_stage(self) -> TumourStage:
        """The learned tumour stage (``tumour_placement="learned"``): the ``tumour_stage`` folder beside
        the checkpoint folder (``models/default/tumour_stage``), loaded once; or the one set with
        `use_tumour_stage`."""
        if self._tumour_stage is None:
            folder = None if self.source is None else self.source.parent / "tumour_stage"
            if folder is None or not (folder / "config.json").exists():
                raise InputError(
                    folder or "--tumour-placement", "learned: no tumour stage beside this mask sampler (tumour_stage/)"
                )
            self._tumour_stage = TumourStage.from_pretrained(folder, device=str(self.device))
            if tuple(self._tumour_stage.config.shape) != tuple(self.config.shape):
                raise InputError(folder / "config.json", f"its grid is not the mask sampler's {self.config.shape}")
        return self._tumour_stage

    def use_tumour_stage(self, stage: TumourStage) -> None:
        """Draw ``tumour_placement="learned"`` tumours with ``stage`` (same grid as this sampler)."""
        if tuple(stage.config.shape) != tuple(self.config.shape):
            raise ValueError(f"the tumour stage's grid {stage.config.shape} is not the sampler's {self.config.shape}")
        self._tumour_stage = stage

    def start_maps(self) -> np.ndarray:
        """The bank of real maps beside the checkpoint that ``real_start`` draws from (loaded once)."""
        if self._start_maps is None:
            if self.source is None:
                raise InputError("--real-start", "this sampler was not loaded from a folder, so it has no start maps")
            self._start_maps = load_start_maps(self.source, self.config)
        return self._start_maps

    # -- persistence -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "cpu", text_encoder: TextEncoder | None = None
    ) -> VolumetricMaskSampler:
        config, weights, _ = load_checkpoint(folder, MaskSamplerConfig)
        model = MaskDenoiser(config)
        load_weights(model, weights, folder)
        sampler = cls(config, model, text_encoder, device)
        sampler.source = Path(folder)
        return sampler

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        return save_checkpoint(
            folder,
            self.config,
            self.model.state_dict(),
            overwrite=overwrite,
            metadata={"component": "mask_sampler", "text_encoder": self.text_encoder.model_id},
        )

    def network(self, backend: str = "auto", precision: str | None = "auto") -> CompiledNetwork:
        """The denoiser ``(x_t, t, context) → logits`` ready for sampling in a backend and precision
        (`guidegen.runtime`); compiled once per (backend, precision) and kept, ONNX exports cached
        next to the checkpoint (``.runtime-cache/``).

        ``"auto"`` keeps this network on torch: ONNX Runtime and OpenVINO were not faster for the
        3-D UNet (masks 10.8-11.1 s against torch's 10.9 s on an AVX2-capped CPU, 4.6 against 4.3 s
        in bf16; docs/results/fast_cpu.txt), and the categorical sampler turns their ~1e-6
        differences in the logits into other voxels (0.3 % of the map with OpenVINO fp32), so a
        seed's label map would depend on which backend was timed fastest. Ask for one by name to
        use it.
        """
        if backend == "auto":
            backend = "torch"
        key = (backend, precision or "auto")
        if key not in self._networks:
            cfg = self.config
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(2, cfg.num_classes, *cfg.shape, generator=gen).softmax(1)
            with torch.no_grad():
                attr = torch.from_numpy(np.stack([attribute_vector(None)] * 2)).to(self.device)
                tokens = torch.randn(2, cfg.max_text_tokens, cfg.text_dim, generator=gen).to(self.device)
                context = self.model.context(tokens, attr)
            example = (x.to(self.device), torch.tensor([700, 300], device=self.device), context)
            spec = NetworkSpec(
                "mask_sampler",
                self.model,
                example,
                ("x_t", "t", "context"),
                weights_digest(self.model, repr(cfg)),
                cache_dirs(self.source),
                channels_last=True,
            )
            self._networks[key] = compile_network(spec, backend, precision or "auto", self.device)
        return self._networks[key]

    # -- conditioning ------------------------------------------------------------------------
    def encode(
        self,
        prompts: Sequence[str],
        attributes: Sequence[Attributes] | None = None,
        text_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text tokens (N, L, D) and attribute vectors (N, A) for prompts (parsed and encoded unless given)."""
        if attributes is None:
            attributes = [parse_prompt(p) for p in prompts]
        if text_tokens is None:
            text_tokens = self.text_encoder.encode(list(prompts)).tokens
        elif text_tokens.shape[:2] != (len(prompts), self.config.max_text_tokens):
            raise ValueError(
                f"text_tokens must be ({len(prompts)}, {self.config.max_text_tokens}, D), got "
                f"{tuple(text_tokens.shape)}"
            )
        text = text_tokens.to(self.device)
        attr = torch.from_numpy(np.stack([attribute_vector(a) for a in attributes])).to(self.device)
        return text, attr

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_masks(
        self,
        prompts: str | Sequence[str],
        n: int = 1,
        seed: int | Sequence[int] = 0,
        *,
        settings: GenerationSettings | None = None,
        attributes: Sequence[Attributes] | None = None,
        text_tokens: torch.Tensor | None = None,
        clean: bool = True,
        final_decode: str | None = None,
        callback: Callable[[int, int], None] | None = None,
        tumours_later: bool = False,
        **options: object,
    ) -> list[Volume]:
        """Sample ``n`` label maps per prompt, all in one batch.

        Args:
            prompts: one prompt or a list; each is sampled ``n`` times.
            seed: map ``i`` of the batch (prompt-major) uses ``seed + i``, or give one seed per map.
                Map i then depends only on its prompt, seed and the settings, not on what else is in
                the batch: ``sample_masks(p, n=3, seed=s)[i]`` equals ``sample_masks(p, seed=s + i)[0]``.
            settings: `guidegen.settings.GenerationSettings`; this stage reads ``steps`` (network
                evaluations, ≤ T; default the config's strided ``sample_steps``), ``guidance``
                (1 = conditional only, 0 = unconditional), the placement switches
                ``tumour_placement`` ("insert": stated tumours placed into the sampled anatomy,
                `guidegen.masks.placement`; "learned": drawn by the learned tumour stage,
                `guidegen.masks.tumour_stage`, beside the checkpoint), ``organ_sizes`` ("scale":
                stated organ sizes given to the sampled organs) and ``aorta_placement`` ("tube": the
                aorta redrawn as one tube of normal calibre), each defaulting to the config's, and
                ``precision`` / ``backend`` (`guidegen.runtime`; the config's ``precision`` is the
                training precision).
            attributes: parsed records to use instead of parsing the prompts.
            text_tokens: (len(prompts), L, D) prompt tokens from the pipeline's encoder instead of
                encoding the prompts here.
            clean: keep each organ's main connected component (removes floating islands).
                Sampling itself leaves the config's ``organ_free_top`` slices without organs.
            final_decode: "argmax" or "matched" (`MaskSamplerConfig.final_decode`); default the config's.
            callback: ``callback(step, total)`` after each step (progress bars).
            tumours_later: with "insert", only remove the network's tumour voxels: the caller
                upsamples the map and places the stated tumours on its grid (`place_tumours_on`).
            **options: any `GenerationSettings` field, applied on top of ``settings``.

        Returns:
            Label `Volume`s (uint8 GuideGen ids) on the sampler grid, prompt-major order; with
            "insert", ``meta["tumour_placement"]`` records what was placed and whether it holds; with
            "tube", ``meta["aorta_placement"]`` what was drawn; ``meta["runtime"]`` the backend and
            precision that really ran.
        """
        settings = GenerationSettings.from_options(settings, **options)
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or n < 1:
            raise InputError(None, "need at least one prompt and n ≥ 1")
        steps = settings.steps or self.config.sample_steps
        if steps > self.config.num_timesteps:
            raise InputError(
                "--steps", f"must be at most the model's {self.config.num_timesteps} diffusion steps, got {steps}"
            )
        placement = settings.tumour_placement or self.config.tumour_placement
        sizes = settings.organ_sizes or self.config.organ_sizes
        aorta = settings.aorta_placement or self.config.aorta_placement
        decode = final_decode or self.config.final_decode
        if decode not in FINAL_DECODES:
            raise InputError(None, f"final_decode must be one of {', '.join(FINAL_DECODES)}, got {decode!r}")
        if attributes is None:
            attributes = [parse_prompt(p) for p in prompts]
        stage = self.tumour_stage() if placement == "learned" else None  # refused before sampling, not after
        scale = self.config.guidance_scale if settings.guidance is None else float(settings.guidance)
        text, attr = self.encode(prompts, attributes, text_tokens)
        text = text.repeat_interleave(n, 0)
        attr = attr.repeat_interleave(n, 0)
        batch = text.shape[0]
        seeds = item_seeds(seed, batch)
        cond_ctx = self.model.context(text, attr)
        uncond_ctx = self.model.context(
            None, torch.from_numpy(np.stack([attribute_vector(None)] * batch)).to(self.device)
        )
        network = self.network(settings.backend, settings.precision)

        unguided_below = self.config.guidance_min_t * self.config.num_timesteps
        organ_free = organ_free_top_mask(self.config, self.device)

        def guided_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if scale == 1.0 or float(t.max()) < unguided_below:
                return network(x_t, t, cond_ctx)
            if scale == 0.0:
                return network(x_t, t, uncond_ctx)
            both = network(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond_ctx, uncond_ctx]))
            return guided_logits(both[:batch], both[batch:], scale)

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            logits = guided_fn(x_t, t)
            # p̂(x0 | xt) conditioned on no organ in the top slices: every step's posterior then
            # draws none there, and the network shapes the rest of the map around that.
            return logits if organ_free is None else logits.masked_fill(organ_free, _IMPOSSIBLE_LOGIT)

        generator = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        start = start_t = None
        starts: list[int | None] = [None] * batch
        if settings.real_start is not None:
            bank = self.start_maps()
            grid = sampler_grid(self.config)
            drawn = [start_map(bank, grid, s) for s in seeds]
            start = torch.from_numpy(np.stack([m for m, _ in drawn]).astype(np.int64)).to(self.device)
            starts = [i for _, i in drawn]
            start_t = max(1, round(settings.real_start * self.config.num_timesteps))
            steps = start_steps(steps, settings.real_start)
        step_cb = None if callback is None else (lambda i, s, x, p: callback(i + 1, steps))
        with torch_threads_for(network):
            labels = ancestral_sample(
                self.diffusion,
                model_fn,
                (batch, *self.config.shape),
                generator=generator,
                steps=steps,
                callback=step_cb,
                device=self.device,
                final=decode,  # type: ignore[arg-type]
                matched_classes=[c for c in range(self.config.num_classes) if c != ID["tumour"]],
                start=start,
                start_t=start_t,
                hold_classes=[ID[c] for c in self.config.hold_volumes],
            )
        affine = sampler_grid(self.config)
        out = []
        for i in range(batch):
            array = labels[i].to("cpu", torch.uint8).numpy()
            if clean:
                array = keep_main_components(array)
            volume = Volume(
                array,
                affine.copy(),
                "labels",
                {
                    "prompt": prompts[i // n],
                    "seed": seeds[i],
                    "index": i,
                    "runtime": {"backend": network.backend, "precision": network.precision},
                    "start": "noise"
                    if starts[i] is None
                    else {"real_map": starts[i], "strength": settings.real_start, "steps": steps},
                },
            )
            if placement == "insert" or sizes in ("scale", "all") or aorta == "tube":
                volume = apply_statements(
                    volume,
                    attributes[i // n],
                    seeds[i],
                    tumours=placement == "insert",
                    organs=sizes in ("scale", "all"),
                    unstated=sizes == "all",
                    aorta=aorta == "tube",
                    defer_tumours=tumours_later,
                )
            if stage is not None:
                volume = draw_learned_tumours(volume, attributes[i // n], seeds[i], stage)
            out.append(volume)
        return out
