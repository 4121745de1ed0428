"""Text-guided editing of a real scan: `guidegen edit` and `GuideGen.edit` (issue 25).

A real CT with its label map and a prompt ("add a 3 cm tumour in the sigmoid colon") in; the same
scan with the stated change out, CT and labels on the input's own grid:

1. the prompt is parsed (`guidegen.text.parse`): stated tumours (host, colon segment, diameter,
   count), stated organ sizes, or "no tumour" (the scan's tumours removed);
2. the label map is changed by the placement stage (`guidegen.masks.placement`): real tumour shapes
   at the stated size in the stated host of *this* patient (added to the tumours already there; the
   real organs are never grown to make room), organs scaled to the stated grade;
3. the CT is regenerated only inside the changed voxels plus a margin (`guidegen.images.inpaint`);
   every other voxel of CT and labels is the input's;
4. what was made is measured on the new map as every GuideGen case is (`guidegen.text.measure`,
   `guidegen.text.agreement`) and written to ``case.json`` next to what was asked.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guidegen.errors import InputError
from guidegen.io.volume import Volume, canonical, reorient_like
from guidegen.labels.vocabulary import ID, NAMES, TUMOUR_HOSTS, UNKNOWN
from guidegen.settings import GenerationSettings, check_prompt, check_seed
from guidegen.text.attributes import KIDNEY_UNSPECIFIED, Attributes

__all__ = ["EDIT_DIAMETER_TOLERANCE", "EditedCase", "edit_scan", "edit_to_folder", "read_ct"]

_TUMOUR = ID["tumour"]
#: Relative tolerance on a placed tumour's longest diameter (issue 25: ±25 %).
EDIT_DIAMETER_TOLERANCE = 0.25
#: A new lesion must lie at least this share inside its host organ as the scan had it; else it does
#: not fit (the placement stage writes into fat and bowel too, so a 15 cm "pancreatic" tumour would
#: otherwise be a mass 97 % outside the pancreas; every 3-12 cm lesion of the suite is 63-100 % inside).
MIN_HOST_SHARE = 0.5


@dataclass
class EditedCase:
    """One edit of a real scan.

    Attributes:
        index: the edit's number in its request (its seed is the request's seed + index).
        prompt: the prompt as cleaned by `check_prompt`.
        seed: seed of the placement and of the CT's noise.
        ct: the edited CT (the input's grid, array order and dtype).
        labels: the edited label map (GuideGen ids) on the same grid.
        requested: the attributes parsed from the prompt.
        measured: what the new map holds: ``tumours`` (the tumours the edit added, measured),
            ``agreement`` (tumour field → holds), ``organs`` (stated organ sizes before/after and
            whether they hold); `requested_fields_held` joins the two.
        record: placement and inpainting records (JSON-able).
        report: radiology-style report of the edited map.
        region: the regenerated voxels (`guidegen.images.inpaint.EditRegion`), in the canonical
            (RAS+) array order of ``canonical(ct)``.
    """

    index: int
    prompt: str
    seed: int
    ct: Volume
    labels: Volume
    requested: Attributes
    measured: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)
    report: str = ""
    region: Any = None


def read_ct(path: str | Path) -> Volume:
    """A CT from a NIfTI file (its on-disk affine kept in ``meta["affine_on_disk"]``) or a DICOM
    series folder, canonical RAS+."""
    path = Path(path)
    if path.is_dir():
        from guidegen.io.dicom import read_dicom_series

        return read_dicom_series(path)
    import nibabel as nib

    from guidegen.io.nifti import quiet_nibabel, read_nifti

    stored = read_nifti(path, kind="ct", reorient=False)
    ct = canonical(stored)
    ct.meta["affine_on_disk"] = stored.affine.copy()
    with quiet_nibabel():
        header = nib.load(str(path)).header
    slope, inter = header.get_slope_inter()
    if slope in (None, 1.0) and inter in (None, 0.0):  # stored values are the HU: write them back alike
        ct.meta["dtype_on_disk"] = str(header.get_data_dtype())
    return ct


def _stated_edit(attributes: Attributes, where: str) -> None:
    if attributes.tumours is None and not any(f.state is not None for f in attributes.organs.values()):
        raise InputError(
            where,
            'states no edit: name tumours to add ("add a 3 cm tumour in the sigmoid colon"), '
            '"no tumour" to remove the scan\'s tumours, or an organ size ("enlarged spleen")',
        )


def _check_hosts(attributes: Attributes, labels: Volume, where: object) -> None:
    """Every stated tumour host and resized organ must be in the label map."""
    counts = np.bincount(labels.array.ravel(), minlength=256)
    present = {NAMES[i] for i in range(len(NAMES)) if counts[i] > 0}

    def missing(name: str) -> InputError:
        listed = ", ".join(sorted(present - {"background", "body"})) or "none"
        return InputError(where, f"has no {name.replace('_', ' ')} to edit (classes present: {listed})")

    for group in attributes.tumours or ():
        if group.organ is None:
            if not present & set(TUMOUR_HOSTS):
                raise missing("tumour host (" + ", ".join(TUMOUR_HOSTS) + ")")
        elif group.organ == KIDNEY_UNSPECIFIED:
            if not present & {"kidney_left", "kidney_right"}:
                raise missing("kidney")
        elif group.organ not in TUMOUR_HOSTS:
            raise InputError(
                "--prompt", f"tumours of the {group.organ} cannot be placed (hosts: {', '.join(TUMOUR_HOSTS)})"
            )
        elif group.organ not in present:
            raise missing(group.organ)
    for organ, finding in attributes.organs.items():
        if finding.state is not None and organ not in present:
            raise missing(organ)
    if attributes.tumours == () and _TUMOUR not in np.flatnonzero(counts):
        raise InputError("--prompt", 'says "no tumour" but the label map has no tumour to remove')


def _fit_problem(record: dict[str, Any]) -> str | None:
    """Why the stated tumours were not placed as stated (``None`` when they were)."""
    for group in record.get("groups", []):
        if "error" in group:
            return group["error"]
    failed = [name for name, holds in record.get("agreement", {}).items() if not holds]
    return ", ".join(failed) + " not as stated after " + str(record.get("attempts")) + " draws" if failed else None


def _check_inside_hosts(edited: np.ndarray, before: np.ndarray) -> None:
    """Each new lesion (a connected component) must lie `MIN_HOST_SHARE` inside one host organ."""
    from scipy import ndimage

    new = (edited == _TUMOUR) & (before != _TUMOUR)
    components, count = ndimage.label(new, structure=np.ones((3, 3, 3), bool))
    hosts = np.array([ID[h] for h in TUMOUR_HOSTS])
    for index in range(1, count + 1):
        was = before[components == index]
        if was.size < 8:  # a few voxels of a wrapped border, not a lesion
            continue
        shares = (was[:, None] == hosts[None, :]).mean(axis=0)
        if shares.max() < MIN_HOST_SHARE:
            host = TUMOUR_HOSTS[int(np.argmax(shares))]
            raise InputError(
                "--prompt",
                f"the stated tumours do not fit this scan: a lesion of {was.size} voxels would lie only "
                f"{shares.max():.0%} inside the {host.replace('_', ' ')} (at least {MIN_HOST_SHARE:.0%} needed)",
            )


def edit_scan(
    generator,
    ct: Volume,
    labels: Volume,
    prompt: str,
    *,
    n: int = 1,
    seed: int = 0,
    annotated: frozenset[str] | None = None,
    margin_mm: float | None = None,
    settings: GenerationSettings | None = None,
    texture: bool = True,
    levels: bool = True,
    where: tuple[object, object] = ("--ct", "--labels"),
) -> list[EditedCase]:
    """Edit a real scan as a prompt says (module docstring); ``n`` edits, edit i with seed ``seed + i``.

    Args:
        generator: the image generator (`guidegen.images.generator.ConditionalImageGenerator`).
        ct: the real CT (any orientation; HU).
        labels: its label map in GuideGen ids (any orientation), on the CT's grid.
        prompt: what to change.
        annotated: classes the map annotates; ``None``: every class.
        margin_mm: regenerated margin (default `guidegen.images.inpaint.DEFAULT_MARGIN_MM`).
        settings: image settings (steps, guidance, phase, precision, backend).
        texture, levels: see `guidegen.images.inpaint.inpaint_ct`.
        where: the names of the CT and label inputs in error messages.

    Returns:
        The edits, CT and labels in the input CT's array order and affine.

    Raises:
        InputError: CT and labels on different grids, a prompt with no edit, a host absent from the
            labels, a tumour that cannot fit, an edit outside the generator's field of view.
    """
    from guidegen.images.inpaint import DEFAULT_MARGIN_MM, inpaint_ct
    from guidegen.io.validate import check_same_grid
    from guidegen.masks.placement import apply_stated_organs, place_stated_tumours
    from guidegen.text.agreement import tumour_agreement
    from guidegen.text.measure import measure_labels
    from guidegen.text.parse import parse_prompt
    from guidegen.text.report import report_from_labels

    prompt = check_prompt(prompt)
    check_seed(seed, n)
    settings = settings or GenerationSettings()
    requested = parse_prompt(prompt)
    _stated_edit(requested, "--prompt")
    disk_affine = ct.meta.get("affine_on_disk")
    if disk_affine is None:  # a DICOM CT: the label file's order, if it has one
        disk_affine = labels.meta.get("affine_on_disk")
    ct_c, labels_c = canonical(ct), canonical(labels)
    check_same_grid(ct_c, labels_c, where[0], where[1])
    _check_hosts(requested, labels_c, where[1])
    margin = DEFAULT_MARGIN_MM if margin_mm is None else float(margin_mm)
    if annotated is not None and requested.tumours is not None:
        annotated = frozenset(annotated) | {"tumour"}  # the edit states where tumour is and is not
    cases = []
    for index in range(n):
        case_seed = seed + index
        rng = np.random.default_rng(case_seed)
        started = time.perf_counter()
        edited, organ_record = labels_c, {}
        if any(f.state is not None for f in requested.organs.values()):
            edited, organ_record = apply_stated_organs(edited, requested.organs, rng)
            for organ, entry in organ_record.items():
                if "error" in entry:
                    raise InputError("--prompt", f"{organ}: {entry['error']}")
        placement: dict[str, Any] = {"stated": False}
        if requested.tumours is not None:
            edited, placement = place_stated_tumours(
                edited,
                requested.tumours,
                rng,
                keep_size=TUMOUR_HOSTS,
                keep_existing=True,
                tolerance=EDIT_DIAMETER_TOLERANCE,
            )
            problem = _fit_problem(placement)
            if problem is not None:
                raise InputError("--prompt", f"the stated tumours do not fit this scan ({problem})")
        _check_inside_hosts(edited.array, labels_c.array)
        changed = edited.array != labels_c.array
        if not changed.any():
            raise InputError("--prompt", "asks for nothing this scan does not already show: no voxel would change")
        new_tumour = (edited.array == _TUMOUR) & (labels_c.array != _TUMOUR)
        out_ct, region, inpaint = inpaint_ct(
            generator,
            ct_c,
            edited,
            changed,
            new_tumour=new_tumour,
            margin_mm=margin,
            seed=case_seed,
            annotated=None if annotated is None else sorted(annotated),
            settings=settings,
            texture=texture,
            levels=levels,
        )
        # Measured: the tumours the edit added (the scan's own kept out of the count).
        only_new = edited.array.copy()
        old = (labels_c.array == _TUMOUR) & (edited.array == _TUMOUR)
        if old.any():
            from guidegen.masks.placement import fill_from_nearest

            only_new = fill_from_nearest(only_new, old)
        added = measure_labels(edited.with_array(only_new), annotated=annotated).attributes.tumours
        measured: dict[str, Any] = {
            "tumours": [dataclasses.asdict(t) for t in added or ()],
            "agreement": {}
            if requested.tumours is None
            else tumour_agreement(requested.tumours, added, EDIT_DIAMETER_TOLERANCE),
            "organs": organ_record,
        }
        text, _ = report_from_labels(edited, annotated=annotated, seed=case_seed)
        record = {
            "placement": placement,
            "inpaint": inpaint,
            "region": {
                "changed_voxels": int(region.changed.sum()),
                "region_voxels": int(region.region.sum()),
                "margin_mm": margin,
            },
            "annotated": None if annotated is None else sorted(annotated, key=NAMES.index),
            "seconds": round(time.perf_counter() - started, 2),
        }
        if disk_affine is not None:  # the input file's own array order
            out_ct, out_labels = reorient_like(out_ct, disk_affine), reorient_like(edited, disk_affine)
        else:
            out_labels = edited
        cases.append(
            EditedCase(index, prompt, case_seed, out_ct, out_labels, requested, measured, record, text, region)
        )
    return cases


def edit_to_folder(
    ct: str | Path,
    labels: str | Path,
    prompt: str,
    out: str | Path,
    *,
    vocabulary: str | None = None,
    label_set: str | Path | None = None,
    n: int = 1,
    seed: int = 0,
    margin_mm: float | None = None,
    settings: GenerationSettings | None = None,
    model: str | Path | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    texture: bool = True,
    levels: bool = True,
) -> list[str]:
    """`guidegen edit`: ``out/edit_NNN/{ct,labels}.nii.gz, case.json, report.txt, preview.png``.

    Everything is checked before the model loads where it can be; nothing is written unless every
    edit succeeded (`guidegen.io.atomic.atomic_dir`).
    """
    from guidegen.images.generator import ConditionalImageGenerator
    from guidegen.io.atomic import atomic_dir, check_writable
    from guidegen.io.layouts import SIDECAR
    from guidegen.io.nifti import write_nifti
    from guidegen.io.preview import render_preview
    from guidegen.labels.vocabulary import CLASSES, preview_colour
    from guidegen.pipeline.folders import load_labels, model_component
    from guidegen.text.parse import parse_prompt

    settings = settings or GenerationSettings()
    check_writable(out, overwrite)
    prompt = check_prompt(prompt)
    check_seed(seed, n)
    _stated_edit(parse_prompt(prompt), "--prompt")  # before any file is read
    ct_volume = read_ct(ct)
    labels_volume, annotated = load_labels(labels, vocabulary, label_set, reference=ct_volume)
    labels_volume.meta["source"] = str(labels)
    generator = ConditionalImageGenerator.from_pretrained(model_component(model, "image_generator"), device=device)
    started = time.perf_counter()
    cases = edit_scan(
        generator,
        ct_volume,
        labels_volume,
        prompt,
        n=n,
        seed=seed,
        annotated=annotated,
        margin_mm=margin_mm,
        settings=settings,
        texture=texture,
        levels=levels,
        where=(ct, labels),
    )
    seconds = time.perf_counter() - started
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for case in cases:
            folder = tmp / f"edit_{case.index:03d}"
            folder.mkdir()
            # The input's own dtype, unclipped: outside the edit the file equals the input voxel for voxel.
            write_nifti(case.ct, folder / "ct.nii.gz", ct_dtype=ct_volume.meta.get("dtype_on_disk"))
            write_nifti(case.labels, folder / "labels.nii.gz")
            (folder / "report.txt").write_text(case.report + "\n", encoding="utf-8")
            render_preview(
                folder / "preview.png",
                canonical(case.ct),
                canonical(case.labels),
                [c.display for c in CLASSES],
                [preview_colour(c.id) for c in CLASSES],
                title=f"edit of {Path(ct).name}: {prompt[:80]}",
                skip_classes=(0, ID["body"], UNKNOWN),
                focus_classes=(ID["tumour"],),
            )
            (folder / "case.json").write_text(
                json.dumps(
                    {
                        "ct": str(ct),
                        "labels": str(labels),
                        "prompt": prompt,
                        "seed": case.seed,
                        "requested": case.requested.to_dict(),
                        "measured": case.measured,
                        **case.record,
                        "settings": settings.to_dict(),
                        "shape": list(case.ct.shape),
                        "spacing_mm": list(case.ct.spacing),
                        "orientation": case.ct.orientation,
                    },
                    indent=1,
                    default=_json_default,
                ),
                encoding="utf-8",
            )
            (folder / SIDECAR).write_text(
                json.dumps(
                    {"vocabulary": "guidegen", "annotated": case.record["annotated"], "notes": "guidegen edit output"}
                ),
                encoding="utf-8",
            )
    lines = [f"edited {Path(ct).name} {n} time(s) in {seconds:.1f} s → {out}"]
    for case in cases:
        held = requested_fields_held(case.measured)
        lines.append(
            f"edit_{case.index:03d}: {case.record['region']['changed_voxels']} voxels changed, "
            f"{case.record['region']['region_voxels']} regenerated; requested fields held "
            f"{sum(held.values())}/{len(held)}"
        )
    return lines


def requested_fields_held(measured: dict[str, Any]) -> dict[str, bool]:
    """Each requested field of an edit and whether the edited labels show it: the tumours' fields
    (``measured["agreement"]``) and each stated organ size with a size criterion (``organ.size``)."""
    organs = {
        f"{organ}.size": bool(e["holds"]) for organ, e in measured["organs"].items() if e.get("holds") is not None
    }
    return {**measured["agreement"], **organs}


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
