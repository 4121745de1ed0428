"""`guidegen generate` behind the CLI: load the model, shard under torchrun, show progress, summarise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from guidegen.errors import InputError
from guidegen.pipeline.dataset import (
    CaseRequest,
    DatasetRequest,
    Shard,
    check_resumable,
    generate_dataset,
    world_from_env,
)
from guidegen.pipeline.folders import runtime_line
from guidegen.pipeline.generate import GeneratedCase, GuideGen, model_info


@contextlib.contextmanager
def _process_group(shard: Shard, device: str) -> Iterator[object | None]:
    """A torch.distributed group when torchrun started several processes (gloo on CPU, NCCL on GPU)."""
    if shard.world_size == 1:
        yield None
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        created = True
    else:
        created = False
    try:
        yield dist
    finally:
        if created:
            dist.destroy_process_group()


def run_generate(
    request: DatasetRequest,
    out: Path,
    *,
    batch_size: int,
    model: Path | None,
    device: str,
    threads: int | None,
    dataset_id: int,
    dataset_name: str,
    overwrite: bool,
    progress: bool,
) -> list[str]:
    """Run one `guidegen generate` request; returns the summary lines (rank 0) or nothing (other ranks).

    The request is checked already (`DatasetRequest`, `guidegen.settings.GenerationSettings`);
    this loads the model, shards under torchrun and shows progress.
    """
    from guidegen.training import set_threads

    shard = world_from_env()
    set_threads(threads)
    if not overwrite:  # a run folder holding another request is refused before the model loads
        check_resumable(out, request.to_dict(model_info(model)))
    gg = GuideGen.from_pretrained(model, device=_rank_device(device, shard))
    runtime = gg.warm_up(request.settings)  # networks compiled (on first use: checked) before any case
    steps, limit = request.settings.steps, gg.mask_sampler.config.num_timesteps
    if steps is not None and steps > limit:
        raise InputError("--steps", f"must be at most the model's {limit} diffusion steps, got {steps}")
    entries = request.prompts
    format = request.format
    total = sum(c for _, c in entries)
    mine = len([i for i in range(total) if i % shard.world_size == shard.rank])
    show = progress and shard.rank == 0
    with _process_group(shard, device) as dist, _progress(show, mine) as bar:
        summary = generate_dataset(
            gg,
            request,
            out,
            batch_size=batch_size,
            overwrite=overwrite,
            shard=shard,
            dataset_id=dataset_id,
            dataset_name=dataset_name,
            on_case=bar.on_case,
            progress=bar.on_stage,
            barrier=None if dist is None else dist.barrier,
        )
    if shard.rank != 0:
        return []
    lines = [
        f"{summary['generated']} case(s) generated, {summary['skipped']} already there, "
        f"{summary['requested']} requested; {summary['seconds']:.1f} s"
        + (f" on {shard.world_size} ranks" if shard.world_size > 1 else "")
    ]
    if bar.times:
        per_case = sum(bar.times) / len(bar.times)
        lines.append(
            f"per case: {per_case:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in bar.stage_means().items()) + ")"
        )
    lines.append(
        f"cases: {out}/case_*/ (ct.nii.gz, labels.nii.gz, case.json, report.txt, preview.png"
        + (", dicom/" if format == "dicom" else "")
        + f"); manifest: {summary['manifest']}"
    )
    lines.append(runtime_line(runtime))
    if summary.get("export"):
        lines.append(f"nnU-Net dataset: {summary['export']}")
    if not summary.get("complete", True):
        lines.append("not complete yet: rerun the same command to generate the missing cases")
    return lines


def _rank_device(device: str, shard: Shard) -> str:
    if device == "cuda" and shard.world_size > 1:
        import os

        return f"cuda:{int(os.environ.get('LOCAL_RANK', shard.rank))}"
    return device


class _Bar:
    """Progress over cases and over the current batch's stages (rich), or silent."""

    def __init__(self, progress, total: int):
        self.progress = progress
        self.times: list[float] = []
        self.stages: dict[str, list[float]] = {}
        if progress is not None:
            self.cases = progress.add_task("cases", total=total)
            self.stage = progress.add_task("masks", total=1)

    def on_case(self, request: CaseRequest, case: GeneratedCase | None) -> None:
        if case is not None:
            self.times.append(sum(case.timings.values()))
            for k, v in case.timings.items():
                self.stages.setdefault(k, []).append(v)
        if self.progress is not None:
            self.progress.advance(self.cases)

    def on_stage(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            what = "mask diffusion steps" if stage == "masks" else "CT slices"
            self.progress.update(self.stage, description=what, completed=done, total=total)

    def stage_means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.stages.items()}


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[_Bar]:
    if not show:
        yield _Bar(None, total)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description:>22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        yield _Bar(progress, total)
