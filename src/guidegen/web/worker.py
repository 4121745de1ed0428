"""The web app's worker process: runs jobs through the Python API, one at a time, and reports back.

It is spawned by `guidegen.web.jobs.JobStore`, loads the model once (on its first prompt job) and
keeps it. Every message it sends is a tuple ``(kind, job_id, value)`` on the events queue:
``("progress", id, {...})``, ``("case", id, index)``, ``("done", id, None)``,
``("failed", id, one-line message)``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

from guidegen.errors import GuideGenError
from guidegen.io.atomic import atomic_file
from guidegen.settings import DatasetRequest, GenerationSettings

#: Share of a case's time spent in each stage, for the progress bar (the images dominate on a CPU).
STAGE_WEIGHTS = {"masks": 0.25, "images": 0.75}
#: What a job's ``params`` may carry into `GenerationSettings`.
SETTING_NAMES = ("steps", "guidance", "image_steps", "image_guidance", "phase")


def settings_from_params(params: dict[str, Any]) -> GenerationSettings:
    """The job's sampling settings; precision and backend come from the environment like the CLI's."""
    return GenerationSettings(
        **{k: params.get(k) for k in SETTING_NAMES},
        precision=os.environ.get("GUIDEGEN_PRECISION", "auto"),
        backend=os.environ.get("GUIDEGEN_BACKEND", "auto"),
    )


def zip_dicom(case_folder: Path) -> None:
    """``dicom.zip`` beside ``dicom/``: the CT series and the DICOM-SEG in one download."""
    source = case_folder / "dicom"
    if not source.is_dir():
        return
    with atomic_file(case_folder / "dicom.zip", overwrite=True) as temporary:  # never a half-written zip
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    archive.write(path, Path("dicom") / path.relative_to(source))


class _Progress:
    """Turns the pipeline's stage callbacks into one fraction for the whole job."""

    def __init__(self, events: Any, job_id: str, total_cases: int):
        self.events, self.job_id, self.total = events, job_id, max(total_cases, 1)
        self.cases_done = 0
        self.last_sent = 0.0

    def stage(self, stage: str, done: int, total: int) -> None:
        within = STAGE_WEIGHTS.get(stage, 0.0) * done / max(total, 1)
        if stage == "images":
            within += STAGE_WEIGHTS["masks"]
        now = time.monotonic()
        if now - self.last_sent < 0.2 and done < total:
            return  # a fast tiny model would flood the queue
        self.last_sent = now
        self.send(stage, done, total, within)

    def send(self, stage: str, done: int, total: int, within: float) -> None:
        fraction = min((self.cases_done + within) / self.total, 0.999)
        self.events.put(
            (
                "progress",
                self.job_id,
                {
                    "stage": stage,
                    "done": done,
                    "total": total,
                    "cases_done": self.cases_done,
                    "cases": self.total,
                    "fraction": round(fraction, 4),
                },
            )
        )


def _generate(task: dict, model_cache: dict, events: Any) -> None:
    from guidegen.pipeline import GuideGen
    from guidegen.pipeline.dataset import generate_dataset

    params, folder = task["params"], Path(task["folder"])
    key = model_cache.get("folder")
    if "model" not in model_cache:
        model_cache["model"] = GuideGen.from_pretrained(key)
    request = DatasetRequest(
        prompts=((params["prompt"], int(params["n"])),),
        seed=int(params["seed"]),
        settings=settings_from_params(params),
        format="dicom" if params.get("dicom") else "nifti",
    )
    progress = _Progress(events, task["id"], int(params["n"]))
    progress.send("masks", 0, 1, 0.0)
    result = folder / "result"

    def on_case(case_request, case) -> None:
        case_folder = result / case_request.folder
        if params.get("dicom") and not (case_folder / "dicom.zip").exists():
            zip_dicom(case_folder)
        progress.cases_done += 1
        events.put(("case", task["id"], case_request.index))

    # batch_size 1: progress per case, and a cancel loses at most the case being made.
    generate_dataset(model_cache["model"], request, result, batch_size=1, on_case=on_case, progress=progress.stage)


def _bring_your_own_mask(task: dict, model_cache: dict, events: Any) -> None:
    from guidegen.pipeline import generate_ct_to_folder, report_for_label_file

    params, folder = task["params"], Path(task["folder"])
    progress = _Progress(events, task["id"], 1)
    progress.send("images", 0, 1, STAGE_WEIGHTS["masks"])
    upload = folder / "input" / params["upload"]
    # Written beside the result and renamed into place whole, as generate_dataset's case folders are.
    work = folder / ".byom.tmp"
    generate_ct_to_folder(
        upload,
        work,
        vocabulary=params.get("vocabulary"),
        seed=int(params["seed"]),
        prompt=params.get("prompt"),
        settings=settings_from_params(params),
        model=model_cache.get("folder"),
        overwrite=True,  # a resumed job replaces its own unfinished work only
    )
    report, _ = report_for_label_file(work / "labels.nii.gz", seed=int(params["seed"]))
    (work / "report.txt").write_text(report + "\n", encoding="utf-8")
    meta = json.loads((work / "case.json").read_text(encoding="utf-8"))
    meta.update({"index": 0, "upload": params.get("filename")})
    (work / "case.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    case_folder = folder / "result" / "case_000000"
    case_folder.parent.mkdir(parents=True, exist_ok=True)
    if case_folder.exists():
        shutil.rmtree(case_folder)
    work.rename(case_folder)
    events.put(("case", task["id"], 0))


def _exit_with_parent(parent: int) -> None:
    """A server killed outright cannot end its worker: the worker notices and ends itself."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def worker_main(model_folder: str | None, tasks: Any, events: Any) -> None:
    """The worker process's loop: one task at a time until the server ends it."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    model_cache: dict[str, Any] = {"folder": model_folder}
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            if task["kind"] == "generate":
                _generate(task, model_cache, events)
            else:
                _bring_your_own_mask(task, model_cache, events)
            events.put(("done", task["id"], None))
        except GuideGenError as exc:
            events.put(("failed", task["id"], str(exc)))
        except Exception as exc:  # reported as one line; the server log gets the traceback
            traceback.print_exc()
            events.put(("failed", task["id"], f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"))
