"""A real ``guidegen serve`` process killed outright (SIGKILL) while a job runs and another waits,
then started again on the same ``--out``: nothing finished is lost or changed, nothing half-written
sits under a final name, and every unfinished job ends (resumed to completion here) instead of
staying "running"."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import pydicom
import pytest

from tests.web.conftest import free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc for processes")]
QUICK = {"steps": 1, "image_steps": 1}


class ServeProcess:
    """``python -m guidegen serve`` on a free port, its output in a log file."""

    def __init__(self, out: Path, model: Path, log: Path):
        self.port = free_port()
        self.log = log
        command = [sys.executable, "-m", "guidegen", "serve", "--port", str(self.port), "--model", str(model)]
        with log.open("ab") as sink:
            self.process = subprocess.Popen([*command, "--out", str(out)], stdout=sink, stderr=sink)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.get("/api/labels")
                return
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"guidegen serve did not start:\n{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)

    def children(self) -> list[int]:
        """The processes this server started (its worker and multiprocessing's helper)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _check_readable(path: Path) -> None:
    """Read a file the way a user's tools would: a truncated one fails here."""
    name = path.name
    if name.endswith(".json"):
        json.loads(path.read_text(encoding="utf-8"))
    elif name.endswith(".nii.gz"):
        nib.load(str(path)).get_fdata()
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None, path
    elif name.endswith(".dcm"):
        pydicom.dcmread(path)
    elif name.endswith(".png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def _final_files(out: Path) -> dict[str, str]:
    """Every file under a final name (no part of its path hidden) with its SHA-256."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }


def test_a_killed_server_loses_no_finished_result_and_resumes_unfinished_jobs(tmp_path, web_model):
    out, log = tmp_path / "out", tmp_path / "serve.log"
    server = ServeProcess(out, web_model, log)
    try:
        client = server.client
        finished = client.post("/api/jobs", json={"prompt": "enlarged spleen", "seed": 1, **QUICK}).json()["id"]
        running = client.post("/api/jobs", json={"prompt": "3 cm liver tumour", "n": 4, "seed": 2, **QUICK})
        running = running.json()["id"]
        waiting = client.post("/api/jobs", json={"prompt": "enlarged liver", "seed": 3, **QUICK}).json()["id"]
        assert wait_for(client, finished, timeout=300)["state"] == "done"
        ct_before = client.get(f"/api/jobs/{finished}/files/ct.nii.gz").content
        deadline = time.monotonic() + 300
        while True:  # killed part-way: two of the four cases made, the third in progress
            status = client.get(f"/api/jobs/{running}").json()
            if status["state"] == "running" and len(status["cases"]) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status["state"] == "running" and 2 <= len(status["cases"]) < 4, status
        children = server.children()
        assert children, "the server started no worker process"
        server.stop(signal.SIGKILL)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise

    # Its worker notices and ends too: left running it would write into a job the next server resumes.
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [pid for pid in children if _alive(pid)]
    for pid in leftover:  # not left running after this test either
        os.kill(pid, signal.SIGKILL)
    assert not leftover, "processes of the killed server are still running"
    on_disk = json.loads((out / "jobs" / running / "job.json").read_text(encoding="utf-8"))
    assert on_disk["state"] == "running" and len(on_disk["cases"]) >= 2  # as the kill left it
    kept = _final_files(out)
    for name in kept:  # nothing half-written under a final name
        _check_readable(out / name)
    made = [f"jobs/{running}/result/case_{i:06d}/ct.nii.gz" for i in on_disk["cases"]]
    assert set(made) <= set(kept)

    again = ServeProcess(out, web_model, log)
    try:
        client = again.client
        listed = {job["id"]: job for job in client.get("/api/jobs").json()["jobs"]}
        assert listed[finished]["state"] == "done" and listed[finished]["cases"] == [0]
        assert client.get(f"/api/jobs/{finished}/files/ct.nii.gz").content == ct_before
        for name in ("labels.nii.gz", "report.txt", "case.json", "preview.png", "dicom.zip"):
            assert client.get(f"/api/jobs/{finished}/files/{name}").status_code == 200, name
        assert listed[running]["state"] in ("queued", "running") and "server restart" in (listed[running]["note"] or "")
        assert set(on_disk["cases"]) <= set(listed[running]["cases"])
        for job_id in (running, waiting):
            ended = wait_for(client, job_id, timeout=300)  # never left "running"
            assert ended["state"] == "done", (ended["error"], log.read_text(errors="replace")[-2000:])
        assert client.get(f"/api/jobs/{running}").json()["cases"] == list(range(4))
        after = _final_files(out)
        # What was finished before the kill is byte for byte what it was: resumed, not redone.
        rewritten = ("job.json", "manifest.json")  # the records of the jobs' state
        changed = [name for name in kept if not name.endswith(rewritten) and after.get(name) != kept[name]]
        assert not changed, changed
        hidden = [str(p.relative_to(out)) for p in out.rglob(".*")]
        assert not hidden, f"temporary files left behind: {hidden}"
    finally:
        again.stop()
