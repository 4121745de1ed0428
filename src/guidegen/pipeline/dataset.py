"""Prompts → a folder of generated cases: resumable, shardable across ranks, never half-written.

Layout of ``out/``::

    run.json            the request (prompts, counts, seed, sampling settings, model): a rerun with
                        the same request resumes, a different one is refused
    case_000000/        ct.nii.gz (int16 HU), labels.nii.gz (uint8, same grid), case.json,
                        report.txt, preview.png [, dicom/CT/IM*.dcm, dicom/seg.dcm]
    ...
    manifest.json       every finished case (written when a run completes)
    nnUNet_raw/Dataset###_Name/   with ``format="nnunet"``

Case ``i`` (prompt-major: all cases of the first prompt, then the second …) always has seed
``seed + i``. Under ``torchrun`` rank ``r`` of ``K`` generates the cases with ``i % K == r``; each
case folder is written to a temporary name and renamed when complete, so a killed run leaves no
partial case and a rerun generates only what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from guidegen import __version__
from guidegen.errors import InputError, OutputExistsError
from guidegen.io.atomic import atomic_dir, write_text
from guidegen.io.nifti import write_nifti
from guidegen.labels.vocabulary import CLASSES, ID, NAMES, UNKNOWN, preview_colour
from guidegen.masks.start_maps import start_steps
from guidegen.pipeline.generate import GeneratedCase, GuideGen
from guidegen.settings import FORMATS, DatasetRequest, GenerationSettings, read_prompts_file

__all__ = ["FORMATS", "CaseRequest", "DatasetRequest", "Shard", "generate_dataset", "plan_cases", "read_prompts_file"]

RUN_FILE = "run.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CaseRequest:
    """Case ``index`` of a request: its prompt and seed."""

    index: int
    prompt: str
    seed: int

    @property
    def folder(self) -> str:
        return f"case_{self.index:06d}"


@dataclass(frozen=True)
class Shard:
    """This process's share of the cases: ``index % world_size == rank``."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not (self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise InputError("--shard", f"rank {self.rank} of {self.world_size} is not a valid shard")


def plan_cases(prompts: Sequence[tuple[str, int]], seed: int) -> list[CaseRequest]:
    """Number the cases prompt-major; case ``i`` gets seed ``seed + i``."""
    cases = []
    for prompt, count in prompts:
        for _ in range(count):
            i = len(cases)
            cases.append(CaseRequest(i, prompt, int(seed) + i))
    return cases


def check_resumable(out: Path, request: dict) -> None:
    """Refuse, without changing anything, an ``out`` whose ``run.json`` holds a different request
    (the command line asks this before any model loads; `generate_dataset` asks again)."""
    if (out / RUN_FILE).is_file():
        _compare_run_file(out, request)


def _compare_run_file(out: Path, request: dict) -> None:
    run_file = out / RUN_FILE
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(run_file, f"is not valid JSON ({exc}); use --overwrite or another --out") from None
    if previous != request:
        changed = sorted(k for k in set(previous) | set(request) if previous.get(k) != request.get(k))
        raise InputError(
            out,
            f"holds a different request (differs in: {', '.join(changed)}); "
            "use --overwrite to replace it, or another --out",
        )


def _check_run_folder(out: Path, request: dict, overwrite: bool, shard: Shard) -> None:
    """Create ``out`` with run.json, resume a matching run, or refuse a different one."""
    run_file = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if overwrite and shard.rank == 0 and out.exists():
        shutil.rmtree(out)
    if run_file.exists():
        _compare_run_file(out, request)
        return
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        if shard.world_size > 1 and shard.rank != 0:
            return  # rank 0 writes run.json; the others follow once it exists (see _wait_for_run_file)
        raise OutputExistsError(out)
    if shard.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_text(run_file, json.dumps(request, indent=1), overwrite=True)


def _remove_stale_temporaries(out: Path, case: CaseRequest) -> None:
    """A killed run may leave ``.case_XXXXXX.*.tmp``; only this case's owner rank removes them."""
    for stale in out.glob(f".{case.folder}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _case_json(
    case: GeneratedCase, model_info: dict, settings: GenerationSettings, sampling: dict, files: list[str]
) -> dict:
    present = sorted(int(v) for v in np.unique(case.labels.array) if v != UNKNOWN)
    return {
        "format_version": 1,
        "index": case.index,
        "prompt": case.prompt,
        "seed": case.seed,
        "requested": case.requested.to_dict(),
        "measured": case.measured.to_dict(),
        "phase": case.requested.phase,
        # The values that ran (the models' defaults filled in), and the settings as requested.
        "sampling": sampling,
        "settings": settings.to_dict(),
        # Where the tumours came from ("insert": placed into the sampled anatomy) and whether they
        # hold what the prompt states; absent with tumour_placement="network".
        "tumour_placement": case.labels.meta.get("tumour_placement"),
        # Organs resized to the size the prompt states, or to a normal one when it states none
        # (organ_sizes "scale" / "all"), before and after.
        "organ_sizes": case.labels.meta.get("organ_sizes"),
        # The aorta redrawn as one tube of normal calibre (aorta_placement="tube"): diameter, length, widths.
        "aorta_placement": case.labels.meta.get("aorta_placement"),
        # The mask sampler's start: "noise", or the real bank map, strength and steps (--real-start).
        "mask_start": case.labels.meta.get("start", "noise"),
        # Levels set from real data and literature (--levels): calibrate_levels' record.
        "levels": case.ct.meta.get("levels"),
        "model": {"model_id": model_info.get("model_id"), "version": model_info.get("version")},
        "guidegen_version": __version__,
        "labels": {str(i): NAMES[i] for i in present},
        "shape": list(case.ct.shape),
        "spacing_mm": [round(float(s), 4) for s in case.ct.spacing],
        "affine": [[round(float(v), 6) for v in row] for row in case.ct.affine],
        "timings_s": {k: round(v, 3) for k, v in case.timings.items()},
        # The backend and precision each network really ran in (precision "auto" resolves per machine).
        "runtime": case.runtime,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "synthetic": True,
    }


def write_case_folder(
    case: GeneratedCase,
    folder: Path,
    model_info: dict,
    settings: GenerationSettings,
    sampling: dict,
    dicom: bool = False,
) -> None:
    """Write one case into ``folder`` (a temporary folder the caller renames)."""
    started = time.perf_counter()
    write_nifti(case.ct, folder / "ct.nii.gz")
    write_nifti(case.labels, folder / "labels.nii.gz")
    (folder / "report.txt").write_text(case.report + "\n", encoding="utf-8")
    from guidegen.io.preview import render_preview

    render_preview(
        folder / "preview.png",
        case.ct,
        case.labels,
        [c.display for c in CLASSES],
        [preview_colour(c.id) for c in CLASSES],
        title=case.prompt[:90],
        skip_classes=(0, ID["body"], UNKNOWN),
        focus_classes=(ID["tumour"],),
    )
    files = ["ct.nii.gz", "labels.nii.gz", "report.txt", "preview.png"]
    if dicom:
        from guidegen.io.dicom_write import DicomStudyInfo, write_dicom_ct_series, write_dicom_seg

        sex = {"male": "M", "female": "F"}.get(case.requested.sex or "", "O")
        info = DicomStudyInfo(
            patient_id=f"GUIDEGEN-{case.index:06d}",
            patient_sex=sex,
            study_description=("GuideGen synthetic CT: " + case.prompt)[:64],
        )
        write_dicom_ct_series(case.ct, folder / "dicom" / "CT", info)
        write_dicom_seg(
            case.labels,
            folder / "dicom" / "CT",
            folder / "dicom" / "seg.dcm",
            label_classes=CLASSES,
            colours={c.id: preview_colour(c.id) for c in CLASSES},
        )
        files += ["dicom/CT/", "dicom/seg.dcm"]
    case.timings["write"] = time.perf_counter() - started
    meta = _case_json(case, model_info, settings, sampling, files=files + ["case.json"])
    (folder / "case.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _finished(out: Path, case: CaseRequest) -> bool:
    return (out / case.folder / "case.json").is_file()


def write_manifest(out: Path, cases: Sequence[CaseRequest]) -> dict:
    """``manifest.json``: every requested case, with its folder when finished."""
    rows, done = [], 0
    for case in cases:
        finished = _finished(out, case)
        done += finished
        rows.append(
            {"index": case.index, "prompt": case.prompt, "seed": case.seed, "folder": case.folder if finished else None}
        )
    manifest = {
        "format_version": 1,
        "cases": rows,
        "finished": done,
        "requested": len(cases),
        "complete": done == len(cases),
    }
    write_text(out / MANIFEST, json.dumps(manifest, indent=1), overwrite=True)
    return manifest


def export_nnunet(out: Path, cases: Sequence[CaseRequest], dataset_id: int, name: str) -> Path:
    """Build ``out/nnUNet_raw/Dataset###_Name`` from the finished case folders (rebuilt each time)."""
    from guidegen.io.nifti import read_nifti
    from guidegen.io.nnunet import NnunetCase, dataset_folder_name, write_nnunet_dataset

    def load():
        for case in cases:
            folder = out / case.folder
            yield NnunetCase(
                f"{name}_{case.index:06d}",
                read_nifti(folder / "ct.nii.gz", kind="ct"),
                read_nifti(folder / "labels.nii.gz", kind="labels"),
            )

    raw = out / "nnUNet_raw"
    existing = raw / dataset_folder_name(dataset_id, name)
    # Derived from the case folders of this very run, so replacing it loses nothing.
    return write_nnunet_dataset(load(), raw, dataset_id, name, label_classes=CLASSES, overwrite=existing.exists())


def generate_dataset(
    model: GuideGen,
    request: DatasetRequest,
    out: str | Path,
    *,
    batch_size: int = 4,
    overwrite: bool = False,
    shard: Shard | None = None,
    dataset_id: int = 500,
    dataset_name: str = "GuideGen",
    on_case: Callable[[CaseRequest, GeneratedCase | None], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    barrier: Callable[[], None] | None = None,
) -> dict:
    """Generate every requested case that is not already in ``out`` (this shard's share).

    Args:
        model: the loaded `GuideGen`.
        request: prompts and counts, seed, `GenerationSettings` and format (``nifti``: case
            folders; ``nnunet``: plus an nnU-Net v2 raw dataset; ``dicom``: plus a DICOM CT series
            and DICOM-SEG in every case folder). Its precision and backend say how the networks
            run, recorded per case, and are not part of ``run.json`` (a run may be completed on
            another machine).
        out: output folder (see the module docstring).
        batch_size: cases generated together (same prompt or not).
        overwrite: replace an existing ``out`` (otherwise a matching run is resumed).
        shard: this process's share (default: everything).
        dataset_id, dataset_name: nnU-Net dataset id and name.
        on_case: called after each case with the request and the generated case (``None`` when
            skipped because it was already finished).
        progress: forwarded to `GuideGen.generate_cases`.
        barrier: called before the final manifest/export (all ranks' cases finished); required
            when ``shard.world_size > 1``.

    Returns:
        Summary: requested, generated, skipped, seconds, the manifest path, export path.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("--batch-size", f"must be a positive whole number, got {batch_size!r}")
    shard = shard or Shard()
    if shard.world_size > 1 and barrier is None:
        raise ValueError("a sharded run needs a barrier")
    out = Path(out)
    all_cases = plan_cases(request.prompts, request.seed)
    _check_run_folder(out, request.to_dict(model.info), overwrite, shard)
    if barrier is not None:
        barrier()  # rank 0 has created out/ and run.json (or removed the old one with --overwrite)
        if not (out / RUN_FILE).is_file():
            raise InputError(out / RUN_FILE, f"missing on rank {shard.rank}: rank 0 did not create the run folder")
        _check_run_folder(out, request.to_dict(model.info), False, shard)
    mine = [c for c in all_cases if c.index % shard.world_size == shard.rank]
    todo = [c for c in mine if not _finished(out, c)]
    skipped = len(mine) - len(todo)
    if on_case is not None:
        for c in mine:
            if c not in todo:
                on_case(c, None)
    sampler_cfg, image_cfg, settings = model.mask_sampler.config, model.image_generator.config, request.settings
    mask_steps = settings.steps or sampler_cfg.sample_steps
    sampling = {
        "mask_steps": mask_steps if settings.real_start is None else start_steps(mask_steps, settings.real_start),
        "mask_guidance": sampler_cfg.guidance_scale if settings.guidance is None else settings.guidance,
        "image_steps": settings.image_steps or image_cfg.flow_steps,
        "image_guidance": image_cfg.guidance_scale if settings.image_guidance is None else settings.image_guidance,
        "image_noise_correlation": image_cfg.noise_correlation,
    }
    started = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        generated = model.generate_cases(
            [c.prompt for c in batch],
            [c.seed for c in batch],
            [c.index for c in batch],
            settings=settings,
            progress=progress,
        )
        for req, case in zip(batch, generated):
            _remove_stale_temporaries(out, req)
            with atomic_dir(out / req.folder) as tmp:
                write_case_folder(case, tmp, model.info, settings, sampling, dicom=request.format == "dicom")
            if on_case is not None:
                on_case(req, case)
    seconds = time.perf_counter() - started
    if barrier is not None:
        barrier()
    summary = {
        "requested": len(all_cases),
        "this_shard": len(mine),
        "generated": len(todo),
        "skipped": skipped,
        "seconds": round(seconds, 2),
        "out": str(out),
        "manifest": None,
        "export": None,
    }
    if shard.rank == 0:
        manifest = write_manifest(out, all_cases)
        summary["manifest"] = str(out / MANIFEST)
        summary["complete"] = manifest["complete"]
        if request.format == "nnunet" and manifest["complete"]:
            summary["export"] = str(export_nnunet(out, all_cases, dataset_id, dataset_name))
    return summary


def world_from_env() -> Shard:
    """The shard torchrun gives this process (``RANK``/``WORLD_SIZE``), or the whole set."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError("RANK/WORLD_SIZE", "environment variables must be whole numbers") from None
    return Shard(rank, world)
