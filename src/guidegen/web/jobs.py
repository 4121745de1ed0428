"""The web app's jobs: a queue persisted under ``--out``, run one at a time by one worker process.

Layout of ``out/``::

    jobs/<id>/job.json      what was asked, state, progress, error (rewritten atomically)
    jobs/<id>/input/        a bring-your-own-mask job's uploaded label map
    jobs/<id>/result/       a `guidegen.pipeline.dataset.generate_dataset` run folder:
                            case_000000/{ct,labels}.nii.gz, report.txt, case.json, preview.png,
                            dicom.zip …

Generation never runs in the server's process: a dispatcher thread hands one job at a time to a
worker process (spawned, so the server never forks torch), which keeps the model loaded between
jobs and reports progress back over a queue. Cancelling the running job ends that worker; the
next job starts a fresh one. Case folders are written to temporary names and renamed
(`guidegen.io.atomic`), so a killed server loses no finished case, and a restarted one puts the
jobs it finds queued or running back in the queue, where `generate_dataset` resumes them from the
cases already there (a job whose request no longer fits, e.g. another model, fails with that
one-line reason).
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import queue
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guidegen.errors import InputError
from guidegen.io.atomic import write_text
from guidegen.web.worker import worker_main

#: Job ids are 16 lowercase hex digits; anything else in a URL is refused before any path is built.
JOB_ID = re.compile(r"[0-9a-f]{16}")
#: The files of a case a client may download (nothing else under ``out`` is ever served).
CASE_FILES: tuple[str, ...] = ("ct.nii.gz", "labels.nii.gz", "report.txt", "case.json", "preview.png", "dicom.zip")
STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
JOB_FILE = "job.json"

log = logging.getLogger("guidegen.web")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Job:
    """One request: ``kind`` "generate" (prompt → cases) or "byom" (label map → CT)."""

    id: str
    kind: str
    params: dict[str, Any]
    state: str = "queued"
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    note: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    cases: list[int] = field(default_factory=list)
    started_clock: float | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        record = {k: v for k, v in self.__dict__.items() if k != "started_clock"}
        record["cases_requested"] = int(self.params.get("n", 1))
        return record

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        if not isinstance(data, dict) or not JOB_ID.fullmatch(str(data.get("id", ""))):
            raise ValueError("not a job record")
        if data.get("state") not in STATES or data.get("kind") not in ("generate", "byom"):
            raise ValueError("unknown job state or kind")
        fields = {"id", "kind", "params", "state", "created", "started", "finished", "error", "note", "progress"}
        job = cls(**{k: data[k] for k in fields if k in data})
        job.cases = [int(i) for i in data.get("cases", [])]
        return job


class JobStore:
    """The jobs under ``out/jobs``, in memory for fast status reads, on disk for restarts.

    Args:
        out: the server's output folder.
        model: the model folder the worker loads (``None``: the shipped default).
        max_queued: most jobs waiting at once; more are refused (HTTP 429).
        start_worker: False keeps jobs queued without running them (tests of the API alone).
    """

    def __init__(self, out: Path, model: Path | None, max_queued: int = 20, start_worker: bool = True):
        self.out = Path(out)
        self.root = self.out / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.max_queued = max_queued
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.queue: collections.deque[str] = collections.deque()
        self.wake = threading.Condition(self.lock)
        self.cancel_running = threading.Event()
        self.stopping = threading.Event()
        self.skipped: list[str] = []  # job folders that could not be read back (logged, left alone)
        self._load()
        self._process: Any = None
        self._tasks: Any = None
        self._events: Any = None
        self._thread: threading.Thread | None = None
        if start_worker:
            self._thread = threading.Thread(target=self._dispatch, name="guidegen-jobs", daemon=True)
            self._thread.start()

    # -- persistence ---------------------------------------------------------------------------

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):  # the one gate between a URL and the filesystem
            raise InputError("job", "no such job")
        return self.root / job_id

    def _save(self, job: Job) -> None:
        write_text(self.folder(job.id) / JOB_FILE, json.dumps(job.to_dict(), indent=1), overwrite=True)

    def _load(self) -> None:
        # What a killed server left of uploads that never became jobs (no other server uses ``out``).
        for stale in self.root.glob(".upload-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        for folder in self.root.iterdir():
            if JOB_ID.fullmatch(folder.name) and folder.is_dir():
                remove_job_input(folder)
        for path in sorted(self.root.glob(f"*/{JOB_FILE}")):
            try:
                job = Job.from_dict(json.loads(path.read_text(encoding="utf-8")))
                if job.id != path.parent.name:
                    raise ValueError("job id does not match its folder")
            except (OSError, ValueError, TypeError, KeyError) as exc:
                self.skipped.append(f"{path}: {exc}")
                continue
            if job.state == "running":
                # A killed server: the job goes back in the queue and resumes from its finished cases;
                # what its worker was writing has temporary names and is removed.
                self._remove_temporaries(job)
                job.note = "resumed after a server restart"
                job.state, job.progress, job.started = "queued", {}, None
                self._save(job)
            elif job.state == "queued" and job.note is None:
                job.note = "queued again after a server restart"
                self._save(job)
            self.jobs[job.id] = job
        waiting = sorted((j for j in self.jobs.values() if j.state == "queued"), key=lambda j: j.created)
        self.queue.extend(j.id for j in waiting)

    # -- requests ------------------------------------------------------------------------------

    def new_id(self) -> str:
        return secrets.token_hex(8)

    def submit(self, kind: str, params: dict[str, Any], job_id: str | None = None) -> Job:
        """Queue a job (its folder may already hold its input, see `new_id`)."""
        with self.lock:
            if len(self.queue) >= self.max_queued:
                raise QueueFull(f"{len(self.queue)} jobs are waiting; try again when some have finished")
            job = Job(id=job_id or self.new_id(), kind=kind, params=params)
            self.folder(job.id).mkdir(parents=True, exist_ok=True)
            self._save(job)
            self.jobs[job.id] = job
            self.queue.append(job.id)
            self.wake.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        self.folder(job_id)
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        """The job as JSON, with its place in the queue and an ETA while it runs."""
        with self.lock:
            job = self.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
            if job is None:
                raise KeyError(job_id)
            record = job.to_dict()
            record["queue_position"] = list(self.queue).index(job_id) + 1 if job_id in self.queue else None
            if job.state == "running" and job.started_clock is not None:
                fraction = float(job.progress.get("fraction", 0.0))
                elapsed = time.monotonic() - job.started_clock
                record["progress"] = {
                    **job.progress,
                    "elapsed_s": round(elapsed, 1),
                    "eta_s": round(elapsed * (1 - fraction) / fraction, 1) if fraction > 0.02 else None,
                }
        return record

    def listing(self) -> list[dict[str, Any]]:
        """Every job, newest first (the gallery)."""
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)
            return [j.to_dict() for j in jobs]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, or the running one by ending its worker; finished jobs stay."""
        with self.lock:
            job = self.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
            if job is None:
                raise KeyError(job_id)
            if job.state == "queued":
                self.queue.remove(job_id)
                self._finish(job, "cancelled", None)
            elif job.state == "running":
                self.cancel_running.set()
                job.note = "cancelling"
        return self.status(job_id)

    def case_file(self, job_id: str, case: int, name: str) -> Path:
        """The path of an allowed file of a finished case; `InputError` / `KeyError` otherwise."""
        if name not in CASE_FILES:
            raise InputError(name, f"is not a file a case offers (one of {', '.join(CASE_FILES)})")
        job = self.get(job_id)
        if case not in job.cases:
            raise KeyError(f"case {case}")
        path = self.folder(job_id) / "result" / f"case_{case:06d}" / name
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()) or not resolved.is_file():
            raise KeyError(name)
        return resolved

    # -- running -------------------------------------------------------------------------------

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        """Record a final state (caller holds the lock)."""
        job.state, job.error, job.finished = state, error, _now()
        job.note = None if state == "done" else job.note
        if state == "done":
            job.progress = {**job.progress, "fraction": 1.0}
        self._save(job)

    def _start_worker(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._tasks, self._events = context.Queue(), context.Queue()
        self._process = context.Process(
            target=worker_main,
            args=(None if self.model is None else str(self.model), self._tasks, self._events),
            name="guidegen-worker",
            daemon=True,
        )
        self._process.start()

    def _stop_worker(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        self._process = None

    def _dispatch(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                while not self.queue and not self.stopping.is_set():
                    self.wake.wait(0.5)
                if self.stopping.is_set():
                    return
                job = self.jobs[self.queue.popleft()]
                job.state, job.started, job.started_clock = "running", _now(), time.monotonic()
                job.progress = {"stage": "starting", "fraction": 0.0}
                self.cancel_running.clear()
                self._save(job)
            try:
                if self._process is None or not self._process.is_alive():
                    self._start_worker()
                task = {"id": job.id, "kind": job.kind, "params": job.params, "folder": str(self.folder(job.id))}
                self._tasks.put(task)
                self._follow(job)
            except Exception as exc:  # the job fails with the reason, never stays "running"; the queue goes on
                log.exception("job %s: the dispatcher failed", job.id)
                self._stop_worker()
                reason = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
                with self.lock:
                    if job.state == "running":
                        try:
                            self._finish(job, "failed", reason)
                        except OSError:  # failed in memory all the same; a restart resumes it
                            log.exception("job %s: could not record its failure", job.id)

    def _follow(self, job: Job) -> None:
        """Apply the worker's reports on ``job`` until it ends, is cancelled or the worker dies."""
        while True:
            if self.cancel_running.is_set() or self.stopping.is_set():
                self._stop_worker()
                with self.lock:
                    if self.stopping.is_set() and not self.cancel_running.is_set():
                        job.state, job.note = "queued", "interrupted by a server shutdown"
                        self._save(job)  # resumed by the next server
                    else:
                        self._remove_temporaries(job)
                        self._finish(job, "cancelled", None)
                return
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                if not self._process.is_alive():
                    with self.lock:
                        code = self._process.exitcode
                        self._finish(job, "failed", f"the worker process ended unexpectedly (exit code {code})")
                    self._process = None
                    return
                continue
            kind, job_id = event[0], event[1]
            if job_id != job.id:
                continue
            with self.lock:
                if kind == "progress":
                    job.progress = event[2]
                elif kind == "case":
                    if event[2] not in job.cases:
                        job.cases.append(event[2])
                        job.cases.sort()
                        self._save(job)
                elif kind == "done":
                    self._finish(job, "done", None)
                    return
                elif kind == "failed":
                    self._finish(job, "failed", event[2])
                    return

    def _remove_temporaries(self, job: Job) -> None:
        """What the ended worker was writing (hidden ``.*.tmp`` names, never a listed case)."""
        folder = self.folder(job.id)
        places = [folder, folder / "result", *(folder / "result").glob("case_*")]
        for stale in [path for place in places for path in place.glob(".*.tmp*")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop dispatching; a running job is interrupted and stays queued for the next server."""
        self.stopping.set()
        with self.lock:
            self.wake.notify_all()
        if self._thread is not None:
            self._thread.join(30)
        self._stop_worker()


class QueueFull(Exception):
    """Too many jobs are waiting (HTTP 429)."""


def remove_job_input(folder: Path) -> None:
    """Remove an upload that never became a job (its folder holds no job.json)."""
    if not (folder / JOB_FILE).exists():
        shutil.rmtree(folder, ignore_errors=True)
