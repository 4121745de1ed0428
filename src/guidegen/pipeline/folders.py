"""Folder-level entry points behind the CLI: label files in, reports, sampled masks and CTs out.

Every writer here writes into a temporary folder renamed when complete (`guidegen.io.atomic`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from guidegen.errors import InputError
from guidegen.io.atomic import atomic_dir, check_writable
from guidegen.io.layouts import SIDECAR, read_json_object
from guidegen.io.nifti import quiet_nibabel, read_nifti
from guidegen.io.volume import Volume
from guidegen.labels.remap import load_vocabulary, names_from_ids, remap_labels
from guidegen.labels.vocabulary import CLASSES, ID, UNKNOWN, preview_colour
from guidegen.paths import default_model_dir
from guidegen.settings import GenerationSettings, check_prompt, check_seed


def _sidecar_vocabulary(path: Path) -> str | None:
    side = path.parent / SIDECAR
    if not side.exists():
        return None
    meta = read_json_object(side)
    name = meta.get("vocabulary")
    for entry in meta.get("cases", []) if isinstance(meta.get("cases"), list) else []:
        if isinstance(entry, dict) and entry.get("labels") == path.name:
            name = entry.get("vocabulary", name)
            break
    if name is not None and not isinstance(name, str):
        raise InputError(side, f"'vocabulary' must be a vocabulary name (see `guidegen list-vocabularies`), got {name!r}")
    return name


def load_labels(path: str | Path, vocabulary: str | None = None) -> tuple[Volume, frozenset[str]]:
    """Read a label file in any supported vocabulary → (GuideGen label Volume, annotated classes).

    The vocabulary is, in order: the argument; a ``guidegen-source.json`` beside the file; GuideGen's
    own ids when the NIfTI header says GuideGen wrote it. Otherwise the user must say.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        from guidegen.io.dicom_seg import read_dicom_seg

        raw, names = read_dicom_seg(path)
        vocab = names_from_ids(names)
    else:
        raw = read_nifti(path, kind="labels")
        name = vocabulary or _sidecar_vocabulary(path)
        if name is None:
            import nibabel as nib

            with quiet_nibabel():
                descrip = bytes(nib.load(str(path)).header["descrip"]).split(b"\0")[0]
            if descrip.startswith(b"GuideGen label map"):
                name = "guidegen"
        if name is None:
            raise InputError(path, "its label vocabulary is unknown: pass --vocabulary (see `guidegen list-vocabularies`)")
        vocab = load_vocabulary(name)
    array, annotated = remap_labels(raw.array, vocab, path=path, affine=raw.affine)
    if not np.any((array > 0) & (array != UNKNOWN)):
        raise InputError(path, "label map is empty: no voxel carries a label")
    return raw.with_array(array), annotated


def report_for_label_file(path: str | Path, vocabulary: str | None = None, seed: int | None = None) -> tuple[str, dict]:
    """Radiology-style report and attribute record (as a dict) for a label file."""
    from guidegen.text.report import report_from_labels

    labels, annotated = load_labels(path, vocabulary)
    text, attributes = report_from_labels(labels, annotated=set(annotated), seed=seed)
    return text, attributes.to_dict()


def run_demo(out: str | Path, data: str | Path, overwrite: bool = False, case: str = "totalseg-example-a") -> list[str]:
    """Prepare one bundled real scan, then write its report and a preview picture.

    Outputs in ``out``: ``ct.nii.gz`` (int16 HU), ``labels.nii.gz`` (uint8 GuideGen ids),
    ``report.txt``, ``attributes.json``, ``preview.png`` and ``prepared/`` (the manifest and cache).
    """
    from guidegen.data.prepare import load_prepared, prepare
    from guidegen.io.preview import render_preview
    from guidegen.text.report import report_from_labels

    data, out = Path(data), Path(out)
    source = data / case
    if not source.exists():
        raise InputError(source, "bundled demo data not found (set --data or GUIDEGEN_DATA)")
    started = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        result = prepare([source], tmp / "prepared", progress=False)
        if result.failed:
            raise InputError(source, result.failed[0][1])
        entry = load_prepared(tmp / "prepared")[0]
        ct = read_nifti(entry["ct_path"], kind="ct")
        labels = read_nifti(entry["labels_path"], kind="labels")
        text, attributes = report_from_labels(labels, annotated=set(entry["annotated"]), seed=0)
        (tmp / "report.txt").write_text(text + "\n", encoding="utf-8")
        (tmp / "attributes.json").write_text(json.dumps(attributes.to_dict(), indent=1), encoding="utf-8")
        shutil.copy(entry["ct_path"], tmp / "ct.nii.gz")
        shutil.copy(entry["labels_path"], tmp / "labels.nii.gz")
        render_preview(tmp / "preview.png", ct, labels, [c.display for c in CLASSES],
                       [preview_colour(c.id) for c in CLASSES], title=f"{case} (real CT, prepared at 3 mm)",
                       skip_classes=(0, ID["body"], UNKNOWN), focus_classes=(ID["tumour"],))
    seconds = time.perf_counter() - started
    return [
        f"demo case {case}: {ct.shape} voxels at {tuple(round(s, 2) for s in ct.spacing)} mm, {ct.orientation}",
        *text.splitlines(),
        f"wrote {out}/ct.nii.gz, labels.nii.gz, report.txt, attributes.json, preview.png in {seconds:.1f} s",
    ]


def model_component(model: str | Path | None, name: str) -> Path:
    """The folder of one stage (``mask_sampler`` / ``image_generator``) in a model folder, the
    stage's own folder, or the shipped default model (``None``)."""
    folder = Path(model) if model is not None else default_model_dir() / name
    if (folder / name).is_dir():
        folder = folder / name
    if not folder.is_dir():
        raise InputError(folder, f"no {name.replace('_', ' ')} model here (train one with `guidegen train`, or pass --model)")
    return folder


def sample_masks_to_folder(prompt: str, out: str | Path, n: int = 1, seed: int = 0, *,
                           settings: GenerationSettings | None = None, model: str | Path | None = None,
                           device: str = "cpu", overwrite: bool = False) -> tuple[list[str], list[Volume]]:
    """Sample ``n`` label maps for a prompt and write ``out/sample_NNN/{labels.nii.gz, report.txt, preview.png}``.

    ``settings``: the mask sampler's part of `GenerationSettings` (steps, guidance, the placement
    switches of `guidegen.masks.placement`, precision, backend); stored in ``prompt.json`` with the
    values the model filled in. Map ``i`` uses seed ``seed + i``.
    """
    settings = settings or GenerationSettings()
    check_writable(out, overwrite)  # before the model loads, not after sampling
    check_seed(seed, n)
    from guidegen.io.nifti import write_nifti
    from guidegen.io.preview import render_preview
    from guidegen.masks.sampler import VolumetricMaskSampler
    from guidegen.text.parse import parse_prompt
    from guidegen.text.report import report_from_labels

    prompt = check_prompt(prompt)
    attributes = parse_prompt(prompt)
    sampler = VolumetricMaskSampler.from_pretrained(model_component(model, "mask_sampler"), device=device)
    started = time.perf_counter()
    placement = settings.tumour_placement or sampler.config.tumour_placement
    sizes = settings.organ_sizes or sampler.config.organ_sizes
    aorta = settings.aorta_placement or sampler.config.aorta_placement
    volumes = sampler.sample_masks(prompt, n=n, seed=seed, settings=settings, attributes=[attributes])
    seconds = time.perf_counter() - started
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i, vol in enumerate(volumes):
            folder = tmp / f"sample_{i:03d}"
            folder.mkdir()
            write_nifti(vol, folder / "labels.nii.gz")
            text, measured = report_from_labels(vol, seed=seed + i)
            (folder / "report.txt").write_text(text + "\n", encoding="utf-8")
            render_preview(folder / "preview.png", None, vol, [c.display for c in CLASSES], [preview_colour(c.id) for c in CLASSES],
                           title=prompt[:100], skip_classes=(0, UNKNOWN), focus_classes=(ID["tumour"],))
        (tmp / "prompt.json").write_text(json.dumps({"prompt": prompt, "attributes": attributes.to_dict(), "n": n, "seed": seed,
                                                     "steps": settings.steps or sampler.config.sample_steps,
                                                     "guidance": sampler.config.guidance_scale if settings.guidance is None else settings.guidance,
                                                     "tumour_placement": placement,
                                                     "placed": [v.meta.get("tumour_placement") for v in volumes],
                                                     "organ_sizes": sizes,
                                                     "sized": [v.meta.get("organ_sizes") for v in volumes],
                                                     "aorta_placement": aorta,
                                                     "aorta": [v.meta.get("aorta_placement") for v in volumes],
                                                     "runtime": volumes[0].meta.get("runtime"),
                                                     "settings": settings.to_dict(),
                                                     "seconds": round(seconds, 2)}, indent=1), encoding="utf-8")
    return [f"sampled {n} label map(s) in {seconds:.1f} s → {out}", runtime_line({"masks": volumes[0].meta["runtime"]})], volumes


def generate_ct_to_folder(labels: str | Path, out: str | Path, vocabulary: str | None = None, seed: int = 0, *,
                          prompt: str | None = None, settings: GenerationSettings | None = None,
                          model: str | Path | None = None, device: str = "cpu", overwrite: bool = False,
                          texture: bool = True, levels: bool = True) -> list[str]:
    """Bring your own mask: a CT for a label file, written as ``out/{ct,labels}.nii.gz`` + ``preview.png``.

    The label map keeps its own grid: the CT is generated on the model grid and resampled back, so
    ``ct.nii.gz`` and ``labels.nii.gz`` share shape and affine exactly. ``settings``: the image
    generator's part of `GenerationSettings` (image steps and guidance, phase, precision, backend).
    """
    from guidegen.images.generator import ConditionalImageGenerator, generate_ct
    from guidegen.io.nifti import write_nifti
    from guidegen.io.preview import render_preview

    settings = settings or GenerationSettings()
    check_writable(out, overwrite)  # before the label map is read and the model loads
    check_seed(seed)
    if prompt is not None:
        prompt = check_prompt(prompt)
    labels_volume, _annotated = load_labels(labels, vocabulary)
    generator = ConditionalImageGenerator.from_pretrained(model_component(model, "image_generator"), device=device)
    started = time.perf_counter()
    ct = generate_ct(generator, labels_volume, seed=seed, prompt=prompt, settings=settings, texture=texture,
                     levels=levels)
    seconds = time.perf_counter() - started
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_nifti(ct, tmp / "ct.nii.gz")
        write_nifti(labels_volume, tmp / "labels.nii.gz")
        render_preview(tmp / "preview.png", ct, labels_volume, [c.display for c in CLASSES], [preview_colour(c.id) for c in CLASSES],
                       title=f"generated CT for {Path(labels).name}", skip_classes=(0, ID["body"], UNKNOWN), focus_classes=(ID["tumour"],))
        (tmp / "case.json").write_text(json.dumps({"labels": str(labels), "seed": seed, "phase": settings.phase,
                                                   "prompt": prompt, "steps": settings.image_steps,
                                                   "guidance": settings.image_guidance, "settings": settings.to_dict(),
                                                   "seconds": round(seconds, 2),
                                                   "runtime": ct.meta.get("runtime"), "native": ct.meta.get("native"),
                                                   "shape": list(ct.shape), "spacing_mm": list(ct.spacing)}, indent=1), encoding="utf-8")
    return [f"generated a {ct.shape} CT in {seconds:.1f} s → {out}", runtime_line({"images": ct.meta["runtime"]})]


def runtime_line(runtime: dict[str, dict[str, str]]) -> str:
    """One line saying how each network ran, e.g. ``networks: masks onnxruntime fp32, images openvino fp32``."""
    return "networks: " + ", ".join(f"{stage} {r['backend']} {r['precision']}" for stage, r in runtime.items())
