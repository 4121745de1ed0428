"""`GuideGen`: prompt → paired CT volume and label map, every stage in order and batched.

    >>> from guidegen.pipeline import GuideGen
    >>> gg = GuideGen.from_pretrained()                      # the shipped default model
    >>> cases = gg.generate("68-year-old man, 4 cm sigmoid colon cancer", n=2, seed=0)
    >>> cases[0].ct.array.dtype, cases[0].labels.shape, cases[0].report

Stages (GuideGen, Dai et al. 2024): the prompt is parsed into attributes and encoded; the
Volumetric Mask Sampler draws a coarse 3-D label map; the map is upsampled onto the image grid
with smooth surfaces; the Conditional Image Generator renders the CT slice by slice; the label map
is measured and a report written from what it actually contains.

Seeds: case ``i`` of a request uses seed ``seed + i`` for both of its stages, and every stage draws a
case's noise from that case's own generator. A case is therefore the same whether it is generated
alone, in a batch, or on another rank of a sharded run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from guidegen import __version__
from guidegen.errors import InputError
from guidegen.grids.upsample import upsample_labels
from guidegen.images.any_grid import model_grid
from guidegen.images.generator import ConditionalImageGenerator
from guidegen.images.hu import int16_hu
from guidegen.images.levels import calibrate_levels
from guidegen.io.layouts import read_json_object
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import NAMES
from guidegen.masks.sampler import VolumetricMaskSampler, place_tumours_on
from guidegen.paths import default_model_dir
from guidegen.settings import GenerationSettings, check_prompt
from guidegen.text.attributes import Attributes
from guidegen.text.encoder import TextEncoder
from guidegen.text.parse import parse_prompt
from guidegen.text.report import report_from_labels, write_report

__all__ = ["MODEL_INFO", "GeneratedCase", "GuideGen", "check_prompt", "model_info", "sampled_classes"]

#: File in a model folder naming the model (id, version, recipe, training data).
MODEL_INFO = "model.json"

#: ``progress(stage, done, total)`` — stage is "masks" or "images"; done/total count steps or slices.
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class GeneratedCase:
    """One generated case: CT and label map on the same grid, and what was asked and made.

    Attributes:
        index: the case's number in its request (its seed is the request's seed + index).
        prompt: the prompt, as cleaned by `check_prompt`.
        seed: the seed of both stages.
        ct: int16 HU CT `Volume`.
        labels: uint8 GuideGen label `Volume` on the CT's grid (same shape and affine).
        requested: the attributes parsed from the prompt (what was asked).
        measured: the attributes measured on ``labels`` (what was made), with the prompt's sex,
            age and contrast phase, which a label map cannot show.
        report: the radiology-style report of ``measured``.
        timings: seconds per stage (batch stages divided evenly among the batch's cases).
        runtime: per network stage ("masks", "images") the backend and precision that really ran.
    """

    index: int
    prompt: str
    seed: int
    ct: Volume
    labels: Volume
    requested: Attributes
    measured: Attributes
    report: str
    timings: dict[str, float] = field(default_factory=dict)
    runtime: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray:
        return self.labels.affine


def _calibrated(ct: Volume, labels: Volume) -> Volume:
    """The generated CT with `calibrate_levels` applied in the phase it was drawn in (tumours of
    liver and colon at the level of real tumours for that phase, an unenhanced aorta and IVC at the
    level of real unenhanced blood, the portal vein at its phase's typical level, bone as real bone by
    depth below its surface, liver, spleen, kidneys and an unenhanced pancreas inside the phase's
    published range: levels the network does not learn); what was done in ``meta["levels"]``."""
    hu, record = calibrate_levels(ct.array.astype(np.float32), labels.array, ct.affine, ct.meta.get("phase"))
    return Volume(int16_hu(hu), ct.affine.copy(), "ct", {**ct.meta, "levels": record})


def sampled_classes(sampler_classes: int, generator_classes: int) -> list[str] | None:
    """The annotated classes of a sampled map for the image generator: every class the sampler
    draws; ``None`` (all) when the generator knows no more. Why: a generator that knows more classes
    (lungs, muscles …) than the sampler, told that all its classes were annotated, reads "no muscle
    here": in training that meant the body class was fat alone (TotalSegmentator maps), while a map
    without those classes had them inside "body" with their flags off (AMOS, MSD)."""
    if generator_classes <= sampler_classes:
        return None
    return list(NAMES[:sampler_classes])


def _identity(info: dict | None) -> dict:
    """A model's identity with the defaults of an unnamed one (built in memory, no ``model.json``)."""
    return {"model_id": "custom", "version": __version__, **(info or {})}


def model_info(folder: str | Path | None = None) -> dict:
    """A model folder's identity (``model_id``, ``version``, … from ``model.json``) as `GuideGen.info`
    will hold it, read without loading the networks; ``None``: the shipped default model."""
    root = Path(folder) if folder is not None else default_model_dir()
    info: dict = {"model_id": root.name}
    if (root / MODEL_INFO).exists():
        info.update(read_json_object(root / MODEL_INFO))
    return _identity(info)


class GuideGen:
    """The two trained stages with their settings.

    Components (the diffusers pipeline idea): the text encoder belongs to the pipeline, which
    encodes each prompt once and hands the tokens to the mask sampler and the pooled embedding to
    the image generator.

    Args:
        mask_sampler: the Volumetric Mask Sampler.
        image_generator: the Conditional Image Generator.
        info: model identity (``model_id``, ``version``, …), stored in every case.json.
        text_encoder: the prompt encoder; default the one configured for the mask sampler (its
            token limit, ``MaskSamplerConfig.max_text_tokens``, is the one both stages see).
    """

    def __init__(
        self,
        mask_sampler: VolumetricMaskSampler,
        image_generator: ConditionalImageGenerator,
        info: dict | None = None,
        text_encoder: TextEncoder | None = None,
    ):
        self.mask_sampler = mask_sampler
        self.image_generator = image_generator
        self.text_encoder = text_encoder or mask_sampler.text_encoder
        self.info = _identity(info)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | torch.device = "cpu") -> GuideGen:
        """Load a model folder holding ``mask_sampler/`` and ``image_generator/`` (and ``model.json``).

        ``None`` loads the shipped default model (``models/default``, or ``$GUIDEGEN_MODEL``).
        """
        root = Path(folder) if folder is not None else default_model_dir()
        if not root.is_dir():
            raise InputError(root, "model folder not found (train one with `guidegen train demo`, or pass --model)")
        for part in ("mask_sampler", "image_generator"):
            if not (root / part).is_dir():
                raise InputError(
                    root,
                    f"is not a GuideGen model folder: it has no {part}/ (expected mask_sampler/ and image_generator/)",
                )
        sampler = VolumetricMaskSampler.from_pretrained(root / "mask_sampler", device=device)
        generator = ConditionalImageGenerator.from_pretrained(root / "image_generator", device=device)
        return cls(sampler, generator, model_info(root))

    @property
    def device(self) -> torch.device:
        return self.image_generator.device

    def generate(
        self,
        prompt: str | Sequence[str],
        n: int = 1,
        seed: int = 0,
        *,
        settings: GenerationSettings | None = None,
        first_index: int = 0,
        progress: ProgressCallback | None = None,
        **options: object,
    ) -> list[GeneratedCase]:
        """Generate ``n`` cases per prompt, all stages batched.

        Args:
            prompt: one prompt, or several (each generated ``n`` times, prompt-major order).
            n: cases per prompt.
            seed: case ``i`` (counting from ``first_index``) uses ``seed + i`` in both stages.
            settings: sampling settings (`guidegen.settings.GenerationSettings`: mask and image
                steps and guidance, contrast phase, placement switches, precision, backend);
                default the models' own.
            first_index: index of the first case (sharded runs number cases globally).
            progress: see `ProgressCallback`.
            **options: any `GenerationSettings` field, applied on top of ``settings``
                (``gg.generate(p, image_steps=4, precision="fp32")``).

        Returns:
            The cases in order.
        """
        settings = GenerationSettings.from_options(settings, **options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InputError("--prompt", "no prompt given")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError("-n", f"must be a positive number of cases, got {n!r}")
        case_prompts = [check_prompt(p) for p in prompts for _ in range(n)]
        indices = [first_index + k for k in range(len(case_prompts))]
        return self.generate_cases(
            case_prompts, [int(seed) + i for i in indices], indices, settings=settings, progress=progress
        )

    def generate_cases(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        indices: Sequence[int] | None = None,
        *,
        settings: GenerationSettings | None = None,
        progress: ProgressCallback | None = None,
        **options: object,
    ) -> list[GeneratedCase]:
        """Generate one case per (prompt, seed) pair, as one batch; see `generate` for the options.

        Each case depends only on its own prompt, seed and the settings, never on the rest of the
        batch (every stage draws a case's noise from its own generator).
        """
        settings = GenerationSettings.from_options(settings, **options)
        case_prompts = [check_prompt(p) for p in prompts]
        seeds = [int(s) for s in seeds]
        indices = list(range(len(case_prompts))) if indices is None else [int(i) for i in indices]
        if not case_prompts or len(seeds) != len(case_prompts) or len(indices) != len(case_prompts):
            raise InputError("--prompt", "need one seed and one index per prompt, and at least one prompt")
        unique = list(dict.fromkeys(case_prompts))
        for p in unique:
            # One prompt at a time fills the encoder's cache, so a prompt's embedding is bit-identical
            # whatever batch it later appears in (batched matrix products may round differently).
            self.text_encoder.encode([p])
        parsed = {p: parse_prompt(p) for p in unique}
        if settings.phase is not None:
            parsed = {p: dataclasses.replace(a, phase=settings.phase) for p, a in parsed.items()}
        case_attrs = [parsed[p] for p in case_prompts]
        count = len(case_prompts)
        text = self.text_encoder.encode(case_prompts)

        started = time.perf_counter()
        # Stated tumours are placed after upsampling, on the grid the report measures them on
        # (`guidegen.masks.sampler.place_tumours_on`): the maps whose placement record says deferred.
        coarse = self.mask_sampler.sample_masks(
            case_prompts,
            seed=seeds,
            settings=settings,
            attributes=case_attrs,
            text_tokens=text.tokens,
            callback=None if progress is None else (lambda i, total: progress("masks", i, total)),
            tumours_later=True,
        )
        t_masks = time.perf_counter() - started

        started = time.perf_counter()
        fine = [self._upsample(c) for c in coarse]
        t_upsample = time.perf_counter() - started
        started = time.perf_counter()
        fine = [
            place_tumours_on(f, a, s) if c.meta.get("tumour_placement", {}).get("deferred") else f
            for c, f, a, s in zip(coarse, fine, case_attrs, seeds)
        ]
        t_masks += time.perf_counter() - started

        started = time.perf_counter()
        image_cb = None
        if progress is not None:
            total_slices = max(v.shape[2] for v in fine)
            image_cb = lambda k, _slices: progress("images", k + 1, total_slices)  # noqa: E731
        cts = self.image_generator.generate(
            fine,
            seeds,
            phase=[a.phase for a in case_attrs],
            text_embedding=text.pooled,
            annotated=sampled_classes(self.mask_sampler.config.num_classes, self.image_generator.config.num_classes),
            settings=settings,
            callback=image_cb,
        )
        if settings.levels:
            cts = [_calibrated(ct, labels) for ct, labels in zip(cts, fine)]
        t_images = time.perf_counter() - started

        cases = []
        for k in range(count):
            started = time.perf_counter()
            _, measured = report_from_labels(fine[k], seed=seeds[k])
            asked = case_attrs[k]
            measured = dataclasses.replace(measured, sex=asked.sex, age=asked.age, phase=asked.phase)
            report = write_report(measured, seeds[k])
            t_report = time.perf_counter() - started
            labels = fine[k]
            labels.meta.update({"prompt": case_prompts[k], "seed": seeds[k]})
            # What the placement stage did, and where the sampler started.
            # (Tumours placed on this grid have their own record already: it stays.)
            for stage in ("tumour_placement", "organ_sizes", "aorta_placement", "start"):
                if stage in coarse[k].meta:
                    labels.meta.setdefault(stage, coarse[k].meta[stage])
            cases.append(
                GeneratedCase(
                    index=indices[k],
                    prompt=case_prompts[k],
                    seed=seeds[k],
                    ct=cts[k],
                    labels=labels,
                    requested=asked,
                    measured=measured,
                    report=report,
                    timings={
                        "masks": t_masks / count,
                        "upsample": t_upsample / count,
                        "images": t_images / count,
                        "report": t_report,
                    },
                    runtime={"masks": coarse[k].meta["runtime"], "images": cts[k].meta["runtime"]},
                )
            )
        return cases

    def edit(
        self,
        ct: Volume | str | Path,
        labels: Volume | str | Path,
        prompt: str,
        n: int = 1,
        seed: int = 0,
        *,
        vocabulary: str | None = None,
        annotated: Sequence[str] | None = None,
        margin_mm: float | None = None,
        settings: GenerationSettings | None = None,
        texture: bool = True,
        levels: bool = True,
    ) -> list:
        """Edit a real scan as a prompt says ("add a 3 cm tumour in the sigmoid colon"): the label map
        changed by the placement stage, the CT regenerated only inside the change plus a margin
        (`guidegen.pipeline.edit`).

        Args:
            ct: the real CT (`Volume` in HU, a NIfTI file or a DICOM series folder).
            labels: its label map (`Volume` in GuideGen ids, or a file read with ``vocabulary``
                like `guidegen.pipeline.load_labels`), on the CT's grid.
            prompt: the edit.
            n, seed: ``n`` edits, edit i with seed ``seed + i``.
            annotated: classes a `Volume` map annotates (default every class; a file says its own).
            margin_mm, settings, texture, levels: see `guidegen.pipeline.edit.edit_scan`.

        Returns:
            `guidegen.pipeline.edit.EditedCase` objects, CT and labels on the input CT's grid.
        """
        from guidegen.pipeline.edit import edit_scan, read_ct
        from guidegen.pipeline.folders import load_labels

        ct_volume = ct if isinstance(ct, Volume) else read_ct(ct)
        if isinstance(labels, Volume):
            label_volume, flags = labels, None if annotated is None else frozenset(annotated)
        else:
            label_volume, flags = load_labels(labels, vocabulary, reference=ct_volume)
        return edit_scan(
            self.image_generator,
            ct_volume,
            label_volume,
            prompt,
            n=n,
            seed=seed,
            annotated=flags,
            margin_mm=margin_mm,
            settings=settings,
            texture=texture,
            levels=levels,
        )

    def warm_up(self, settings: GenerationSettings | None = None) -> dict[str, dict[str, str]]:
        """Do the start-up work now rather than inside the first case: compile both networks (a
        first use exports, checks and times them; later uses read the cache) and load the bank of
        real tumour shapes that the placement stage draws from (~1.5 s). Returns, per stage, the
        backend and precision that will run."""
        from guidegen.data.ops import default_tumour_shapes

        settings = settings or GenerationSettings()
        default_tumour_shapes()
        masks = self.mask_sampler.network(settings.backend, settings.precision)
        images = self.image_generator.network(settings.backend, settings.precision)
        return {
            "masks": {"backend": masks.backend, "precision": masks.precision},
            "images": {"backend": images.backend, "precision": images.precision},
        }

    def _upsample(self, coarse: Volume) -> Volume:
        """The sampler's map onto the image generator's grid (its voxel size, centred on the body)."""
        affine, shape = model_grid(coarse, self.image_generator.config)
        return upsample_labels(coarse, affine=affine, shape=shape)
