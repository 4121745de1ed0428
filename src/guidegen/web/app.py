"""The web app: a FastAPI application over the Python API and the job queue (`guidegen.web.jobs`).

Every error a client can cause comes back as JSON ``{"error": "<one line>"}`` with a 4xx status;
nothing from a request reaches the filesystem unchecked: job ids match `JOB_ID`, file names come
from `CASE_FILES`, uploads are size- and type-checked, written under temporary names and read with
the same validators as ``guidegen generate-ct`` before they become a job. The status routes touch
only memory, so polls never wait on generation, which runs in the worker process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.exceptions import HTTPException

from guidegen.errors import InputError
from guidegen.settings import MAX_IMAGE_STEPS, check_prompt, check_seed
from guidegen.terms import PHASES
from guidegen.web.jobs import JobStore, QueueFull
from guidegen.web.views import AXES, WINDOWS, case_volumes, comparison, label_table, render_slice, understood
from guidegen.web.worker import settings_from_params

STATIC = Path(__file__).parent / "static"
#: Most cases one web request may ask for: the queue serves one person's exploring, not datasets
#: (``guidegen generate`` makes those).
MAX_WEB_CASES = 8
#: Largest JSON body accepted; prompts are at most 2000 characters.
MAX_JSON_BYTES = 64 * 1024
#: Largest uploaded label map (a 512×512×1000 uint8 map is 260 MB raw, far less gzipped).
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
#: Upload types and the bytes they start with (NIfTI-1/2 header sizes 348/540, gzip, DICOM preamble).
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".dcm")
VOCABULARY_PATTERN = r"[a-z0-9_\-]{1,40}"

log = logging.getLogger("guidegen.web")


class JobRequest(BaseModel):
    """``POST /api/jobs``: the options of ``guidegen generate`` that a web user sets."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=4000)
    n: StrictInt = Field(1, ge=1, le=MAX_WEB_CASES)
    seed: StrictInt = 0
    phase: Optional[str] = None
    steps: Optional[StrictInt] = Field(None, ge=1, le=1000)
    guidance: Optional[float] = None
    image_steps: Optional[StrictInt] = Field(None, ge=1, le=MAX_IMAGE_STEPS)
    image_guidance: Optional[float] = None
    dicom: StrictBool = True


class ParseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(max_length=4000)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class BodyLimit:
    """Refuse request bodies over their route's limit (413), counted as they arrive, so neither a
    false Content-Length nor a chunked upload can make the server hold more."""

    def __init__(self, app: Any, upload_limit: int):
        self.app, self.upload_limit = app, upload_limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit + 64 * 1024 if scope["path"] == "/api/uploads" else MAX_JSON_BYTES
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _error(413, f"request body over {limit:,} bytes")(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge(413, f"request body over {limit:,} bytes")
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _error(413, f"request body over {limit:,} bytes")(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while a body is read; FastAPI passes HTTP errors through its body parsing."""


def create_app(
    out: str | Path,
    model: str | Path | None = None,
    *,
    start_worker: bool = True,
    max_queued: int = 20,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The app serving ``out`` (jobs persist there) with ``model`` (``None``: the shipped default).

    ``start_worker=False`` queues jobs without running them (tests of the API alone).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; --out must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    store = JobStore(out, None if model is None else Path(model), max_queued=max_queued, start_worker=start_worker)
    for line in store.skipped:
        log.warning("skipped an unreadable job: %s", line)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()  # a running job is interrupted and stays queued for the next server

    app = FastAPI(title="GuideGen", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return _error(exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(KeyError)
    async def not_found(_: Request, exc: KeyError) -> JSONResponse:
        return _error(404, f"not found: {exc.args[0] if exc.args else ''}")

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, str(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__} (see the server log)")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/labels")
    async def labels() -> dict:
        return {"classes": label_table(), "windows": {k: {"level": v[0], "width": v[1]} for k, v in WINDOWS.items()}}

    @app.post("/api/parse")
    def parse(request: ParseRequest) -> dict:
        return understood(request.prompt)

    # Routes that write job.json are plain functions (run in a thread pool), the rest never wait on disk.
    @app.post("/api/jobs")
    def submit(request: JobRequest) -> dict:
        params = request.model_dump()
        params["prompt"] = check_prompt(params["prompt"], "prompt")
        check_seed(params["seed"], params["n"], "seed")
        if params["phase"] is not None and params["phase"] not in PHASES:
            raise InputError("phase", f"must be one of {', '.join(PHASES)}, got {params['phase']!r}")
        settings_from_params(params)  # the same checks as the command line's, before anything queues
        job = store.submit("generate", params)
        return {"id": job.id, "state": job.state}

    @app.post("/api/uploads")
    def upload(
        labels: UploadFile = File(...),
        vocabulary: str = Form("guidegen", pattern=VOCABULARY_PATTERN),
        seed: int = Form(0),
        phase: Optional[str] = Form(None),
        image_steps: Optional[int] = Form(None, ge=1, le=MAX_IMAGE_STEPS),
        prompt: Optional[str] = Form(None, max_length=4000),
    ) -> dict:
        """Bring your own mask: a label map (NIfTI, or a DICOM-SEG) → a CT, through the same queue."""
        name = Path(labels.filename or "").name
        suffix = next((s for s in UPLOAD_SUFFIXES if name.lower().endswith(s)), None)
        if suffix is None:
            raise InputError("labels", f"must be a {', '.join(UPLOAD_SUFFIXES)} file, got {name or 'no name'!r}")
        check_seed(seed, 1, "seed")
        params = {"seed": seed, "phase": phase or None, "image_steps": image_steps, "vocabulary": vocabulary}
        params["prompt"] = None if not prompt or not prompt.strip() else check_prompt(prompt, "prompt")
        if params["phase"] is not None and params["phase"] not in PHASES:
            raise InputError("phase", f"must be one of {', '.join(PHASES)}, got {params['phase']!r}")
        settings_from_params(params)
        job_id = store.new_id()
        folder = store.folder(job_id)
        temporary = out / "jobs" / f".upload-{secrets.token_hex(8)}.tmp"
        try:
            temporary.mkdir(parents=True)
            stored = temporary / ("labels" + suffix)
            _save_upload(labels, stored, max_upload_bytes)
            _check_magic(stored, suffix)
            from guidegen.pipeline import load_labels

            load_labels(stored, None if suffix == ".dcm" else vocabulary)  # the generate-ct validators
            folder.mkdir()
            temporary.rename(folder / "input")
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        params.update({"upload": stored.name, "filename": name[:200], "n": 1})
        job = store.submit("byom", params, job_id=job_id)
        return {"id": job.id, "state": job.state}

    @app.get("/api/jobs")
    async def gallery() -> dict:
        return {"jobs": store.listing()}

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str) -> dict:
        return store.status(job_id)

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict:
        return store.cancel(job_id)

    @app.get("/api/jobs/{job_id}/files/{name}")
    def download(job_id: str, name: str, case: int = 0) -> FileResponse:
        path = store.case_file(job_id, case, name)
        media = {".json": "application/json", ".txt": "text/plain; charset=utf-8", ".png": "image/png"}
        return FileResponse(
            path,
            media_type=media.get(path.suffix, "application/octet-stream"),
            filename=f"{job_id}_case{case}_{name}",
        )

    @app.get("/api/jobs/{job_id}/compare")
    def compare(job_id: str, case: int = 0) -> dict:
        meta = json.loads(store.case_file(job_id, case, "case.json").read_text(encoding="utf-8"))
        ct, labels_array = case_volumes(store.case_file(job_id, case, "ct.nii.gz").parent)
        return comparison(meta, ct, labels_array)

    @app.get("/api/jobs/{job_id}/slice")
    def slice_png(
        job_id: str,
        case: int = 0,
        axis: str = "axial",
        index: Optional[int] = None,
        fraction: Optional[float] = Query(None, ge=0.0, le=1.0),
        window: str = "abdomen",
        hidden: str = Query("", max_length=2000),
        opacity: float = 0.5,
    ) -> Response:
        """A server-rendered slice, for browsers without WebGL2."""
        if axis not in AXES:
            raise InputError("axis", f"must be one of {', '.join(AXES)}")
        if window not in WINDOWS:
            raise InputError("window", f"must be one of {', '.join(WINDOWS)}")
        if not 0.0 <= opacity <= 1.0:
            raise InputError("opacity", "must be between 0 and 1")
        try:
            hidden_ids = {int(v) for v in hidden.split(",") if v.strip()}
        except ValueError:
            raise InputError("hidden", "must be class ids separated by commas") from None
        ct, labels_array = case_volumes(store.case_file(job_id, case, "ct.nii.gz").parent)
        png = render_slice(ct, labels_array, axis, index, fraction, window, hidden_ids, opacity)
        return Response(png, media_type="image/png")

    app.add_middleware(BodyLimit, upload_limit=max_upload_bytes)
    return app


def _save_upload(upload: UploadFile, path: Path, limit: int) -> None:
    size = 0
    with path.open("wb") as handle:
        while chunk := upload.file.read(1024 * 1024):
            size += len(chunk)
            if size > limit:
                raise InputError("labels", f"upload is over {limit:,} bytes")
            handle.write(chunk)
    if size == 0:
        raise InputError("labels", "upload is empty")


def _check_magic(path: Path, suffix: str) -> None:
    head = path.read_bytes()[:132] if path.stat().st_size < 1024 else path.open("rb").read(132)
    if suffix == ".nii.gz":
        ok = head[:2] == b"\x1f\x8b"
    elif suffix == ".nii":
        ok = (
            len(head) >= 4
            and int.from_bytes(head[:4], "little") in (348, 540)
            or (len(head) >= 4 and int.from_bytes(head[:4], "big") in (348, 540))
        )
    else:
        ok = head[128:132] == b"DICM"
    if not ok:
        raise InputError("labels", f"is not a {suffix} file (its first bytes say otherwise)")
