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
from guidegen.io.layouts import SIDECAR, is_label_table, read_json_object, sidecar_vocabulary
from guidegen.io.nifti import quiet_nibabel, read_nifti
from guidegen.io.volume import Volume, canonical, reorient_like
from guidegen.labels.label_set import read_label_set, vocabulary_for
from guidegen.labels.remap import names_from_ids, remap_labels
from guidegen.labels.vocabulary import BY_NAME, CLASSES, ID, NAMES, UNKNOWN, preview_colour
from guidegen.paths import default_model_dir
from guidegen.settings import GenerationSettings, check_prompt, check_seed


def _sidecar(path: Path) -> tuple[str | dict | None, frozenset[str] | None]:
    """The vocabulary (a name or a label set) and the annotated classes a ``guidegen-source.json``
    beside ``path`` declares for it (``None`` where it says nothing)."""
    side = path.parent / SIDECAR
    if not side.exists():
        return None, None
    meta = read_json_object(side)
    spec = sidecar_vocabulary(meta)
    annotated = meta.get("annotated")
    for entry in meta.get("cases", []) if isinstance(meta.get("cases"), list) else []:
        if isinstance(entry, dict) and entry.get("labels") == path.name:
            spec, annotated = entry.get("vocabulary", spec), entry.get("annotated", annotated)
            break
    if spec is not None and not isinstance(spec, str) and not is_label_table(spec):
        raise InputError(
            side,
            f"'vocabulary' must be a vocabulary name (see `guidegen list-vocabularies`) or a label set "
            f'({{"1": "liver", ...}}, see `guidegen list-classes`), got {spec!r}',
        )
    if annotated is not None:
        if not isinstance(annotated, list) or any(a not in NAMES for a in annotated):
            raise InputError(
                side,
                f"'annotated' must be a list of GuideGen class names (see `guidegen list-classes`), got {annotated!r}",
            )
        annotated = frozenset(annotated)
    return spec, annotated


def load_labels(
    path: str | Path,
    vocabulary: str | None = None,
    label_set: str | Path | None = None,
    reference: Volume | None = None,
) -> tuple[Volume, frozenset[str]]:
    """Read a label file in any supported vocabulary → (GuideGen label Volume, annotated classes).

    The vocabulary is, in order: ``label_set`` (a JSON file mapping the map's ids to GuideGen class
    names, `guidegen.labels.label_set`) or ``vocabulary`` (a shipped vocabulary's name); a
    ``guidegen-source.json`` beside the file (a name, or a label set); GuideGen's own ids when the
    NIfTI header says GuideGen wrote it. Otherwise the user must say. A DICOM-SEG's segment names
    serve unless a label set is given. Id 255 is "not annotated" in every vocabulary.

    The volume is canonical (RAS+); for a NIfTI file ``meta["affine_on_disk"]`` keeps the file's
    own affine (`guidegen.io.volume.reorient_like` gives back the file's array order).
    ``reference``: the CT a DICOM-SEG was drawn on; the map is then read onto its grid.
    """
    path = Path(path)
    if vocabulary is not None and label_set is not None:
        raise InputError("--vocabulary/--labels-json", "give one of them, not both")
    user_set = read_label_set(label_set) if label_set is not None else None
    annotated_override = None
    if path.suffix.lower() == ".dcm":
        from guidegen.io.dicom_seg import read_dicom_seg

        raw, names = read_dicom_seg(path, reference=reference)
        vocab = user_set or names_from_ids(names)
    else:
        stored = read_nifti(path, kind="labels", reorient=False)
        raw = canonical(stored)
        raw.meta["affine_on_disk"] = stored.affine.copy()
        spec: str | dict | None = vocabulary
        if user_set is None and vocabulary is None:
            spec, annotated_override = _sidecar(path)
        if user_set is None and spec is None:
            import nibabel as nib

            with quiet_nibabel():
                descrip = bytes(nib.load(str(path)).header["descrip"]).split(b"\0")[0]
            if descrip.startswith(b"GuideGen label map"):
                spec = "guidegen"
        if user_set is None and spec is None:
            raise InputError(
                path,
                "its label vocabulary is unknown: pass --vocabulary (see `guidegen list-vocabularies`) "
                "or --labels-json (your ids → GuideGen classes, see `guidegen list-classes`)",
            )
        vocab = user_set or vocabulary_for(spec, path.parent / SIDECAR)
    array, annotated = remap_labels(raw.array, vocab, path=path, affine=raw.affine)
    if annotated_override is not None:
        annotated = annotated & annotated_override
    if not np.any((array > 0) & (array != UNKNOWN)):
        raise InputError(path, "label map is empty: no voxel carries a label")
    return raw.with_array(array), annotated


def report_for_label_file(
    path: str | Path, vocabulary: str | None = None, seed: int | None = None, label_set: str | Path | None = None
) -> tuple[str, dict]:
    """Radiology-style report and attribute record (as a dict) for a label file (``label_set``: see `load_labels`)."""
    from guidegen.text.report import report_from_labels

    labels, annotated = load_labels(path, vocabulary, label_set)
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
        render_preview(
            tmp / "preview.png",
            ct,
            labels,
            [c.display for c in CLASSES],
            [preview_colour(c.id) for c in CLASSES],
            title=f"{case} (real CT, prepared at 3 mm)",
            skip_classes=(0, ID["body"], UNKNOWN),
            focus_classes=(ID["tumour"],),
        )
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
        raise InputError(
            folder, f"no {name.replace('_', ' ')} model here (train one with `guidegen train`, or pass --model)"
        )
    return folder


def sample_masks_to_folder(
    prompt: str,
    out: str | Path,
    n: int = 1,
    seed: int = 0,
    *,
    settings: GenerationSettings | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> tuple[list[str], list[Volume]]:
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
            render_preview(
                folder / "preview.png",
                None,
                vol,
                [c.display for c in CLASSES],
                [preview_colour(c.id) for c in CLASSES],
                title=prompt[:100],
                skip_classes=(0, UNKNOWN),
                focus_classes=(ID["tumour"],),
            )
        (tmp / "prompt.json").write_text(
            json.dumps(
                {
                    "prompt": prompt,
                    "attributes": attributes.to_dict(),
                    "n": n,
                    "seed": seed,
                    "steps": volumes[0].meta["start"]["steps"]
                    if isinstance(volumes[0].meta.get("start"), dict)
                    else settings.steps or sampler.config.sample_steps,
                    "guidance": sampler.config.guidance_scale if settings.guidance is None else settings.guidance,
                    "tumour_placement": placement,
                    "placed": [v.meta.get("tumour_placement") for v in volumes],
                    "organ_sizes": sizes,
                    "sized": [v.meta.get("organ_sizes") for v in volumes],
                    "aorta_placement": aorta,
                    "aorta": [v.meta.get("aorta_placement") for v in volumes],
                    # "noise", or the bank map, strength and steps of a real start (--real-start)
                    "start": [v.meta.get("start") for v in volumes],
                    "runtime": volumes[0].meta.get("runtime"),
                    "settings": settings.to_dict(),
                    "seconds": round(seconds, 2),
                },
                indent=1,
            ),
            encoding="utf-8",
        )
    return [
        f"sampled {n} label map(s) in {seconds:.1f} s → {out}",
        runtime_line({"masks": volumes[0].meta["runtime"]}),
    ], volumes


def generate_ct_to_folder(
    labels: str | Path,
    out: str | Path,
    vocabulary: str | None = None,
    seed: int = 0,
    *,
    label_set: str | Path | None = None,
    prompt: str | None = None,
    settings: GenerationSettings | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    texture: bool = True,
    levels: bool = True,
) -> list[str]:
    """Bring your own mask: a CT for a label file, written as ``out/{ct,labels}.nii.gz`` + ``preview.png``.

    The label map keeps its own grid and array order: the CT is generated on the model grid and
    resampled back, and both files are written with the input file's shape, axis order and affine,
    so ``ct.nii.gz``, ``labels.nii.gz`` and the input line up voxel for voxel. ``labels.nii.gz`` holds
    GuideGen ids, with class "body" where the map had none inside the body outline (derived from the
    structures when the map has no body class: said in the returned lines); unknown voxels stay 255.
    ``case.json`` and ``guidegen-source.json`` record the classes the map annotates, which were the
    generator's annotated-class flags, so a report of the output does not call the others absent.
    ``label_set``: a JSON file mapping the map's ids to GuideGen classes (`load_labels`).
    ``settings``: the image generator's part of `GenerationSettings` (image steps and guidance,
    phase, precision, backend); ``texture``, ``levels``: see `guidegen.images.any_grid.generate_ct`.
    """
    from guidegen.data.body import DERIVED_BODY_MARGIN_MM, complete_body, unknown_as_body
    from guidegen.images.any_grid import generate_ct
    from guidegen.images.generator import ConditionalImageGenerator
    from guidegen.io.nifti import write_nifti
    from guidegen.io.preview import render_preview

    settings = settings or GenerationSettings()
    check_writable(out, overwrite)  # before the label map is read and the model loads
    check_seed(seed)
    if prompt is not None:
        prompt = check_prompt(prompt)
    labels_volume, annotated = load_labels(labels, vocabulary, label_set)
    generator = ConditionalImageGenerator.from_pretrained(model_component(model, "image_generator"), device=device)
    completion = complete_body(labels_volume, annotated)
    labels_volume, annotated = completion.labels, completion.annotated
    started = time.perf_counter()
    ct = generate_ct(
        generator,
        labels_volume,
        seed=seed,
        prompt=prompt,
        annotated=sorted(annotated),
        settings=settings,
        add_body=False,
        texture=texture,
        levels=levels,
    )
    seconds = time.perf_counter() - started
    disk_affine = labels_volume.meta.get("affine_on_disk")
    if disk_affine is not None:  # the input file's own array order (load_labels made it RAS+)
        ct, labels_volume = reorient_like(ct, disk_affine), reorient_like(labels_volume, disk_affine)
    unknown = int(np.count_nonzero(labels_volume.array == UNKNOWN))
    unknown_in_body = int(
        np.count_nonzero(unknown_as_body(labels_volume).array == ID["body"])
        - np.count_nonzero(labels_volume.array == ID["body"])
    )
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_nifti(ct, tmp / "ct.nii.gz")
        write_nifti(labels_volume, tmp / "labels.nii.gz")
        render_preview(
            tmp / "preview.png",
            canonical(ct),
            canonical(labels_volume),
            [c.display for c in CLASSES],
            [preview_colour(c.id) for c in CLASSES],
            title=f"generated CT for {Path(labels).name}",
            skip_classes=(0, ID["body"], UNKNOWN),
            focus_classes=(ID["tumour"],),
        )
        annotated_names = sorted(annotated, key=NAMES.index)
        (tmp / "case.json").write_text(
            json.dumps(
                {
                    "labels": str(labels),
                    "label_set": None if label_set is None else str(label_set),
                    "seed": seed,
                    "phase": settings.phase,
                    "prompt": prompt,
                    "steps": settings.image_steps,
                    "guidance": settings.image_guidance,
                    "settings": settings.to_dict(),
                    "seconds": round(seconds, 2),
                    "runtime": ct.meta.get("runtime"),
                    "native": ct.meta.get("native"),
                    "drawn_as": ct.meta.get("drawn_as", {}),
                    "annotated": annotated_names,
                    "body": "derived" if completion.derived else "from the map",
                    "unknown_voxels": unknown,
                    "unknown_voxels_in_body": unknown_in_body,
                    "shape": list(ct.shape),
                    "spacing_mm": list(ct.spacing),
                    "orientation": ct.orientation,
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        (tmp / SIDECAR).write_text(
            json.dumps(
                {
                    "vocabulary": "guidegen",
                    "annotated": annotated_names,
                    "notes": f"generate-ct output for {Path(labels).name}",
                },
                indent=1,
            ),
            encoding="utf-8",
        )
    lines = [f"generated a {ct.shape} CT in {seconds:.1f} s → {out}"]
    if completion.derived:
        lines.append(
            f"the map has no body outline: derived one from its structures (their outline per axial slice + "
            f"{DERIVED_BODY_MARGIN_MM:g} mm of soft tissue), written as class body in labels.nii.gz"
        )
    if ct.meta.get("drawn_as"):
        lines.append(
            "this model has no class of its own for: "
            + "; ".join(
                f"{BY_NAME[name].display} (drawn as {'air' if alike == 'background' else BY_NAME[alike].display})"
                for name, alike in ct.meta["drawn_as"].items()
            )
            + " (labels.nii.gz keeps them as they are)"
        )
    if unknown:
        lines.append(
            f"{unknown} unknown voxels (id 255, kept in labels.nii.gz): {unknown_in_body} inside the body drawn as "
            f"unannotated body tissue, {unknown - unknown_in_body} outside it as air"
        )
    return [*lines, runtime_line({"images": ct.meta["runtime"]})]


def runtime_line(runtime: dict[str, dict[str, str]]) -> str:
    """One line saying how each network ran, e.g. ``networks: masks onnxruntime fp32, images openvino fp32``."""
    return "networks: " + ", ".join(f"{stage} {r['backend']} {r['precision']}" for stage, r in runtime.items())
