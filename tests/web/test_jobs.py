"""Jobs through a live server and its one worker process: progress, 50 concurrent status polls while
a job runs, ten queued jobs, cancelling queued and running jobs, the files of a finished case, and
bring-your-own-mask (a NIfTI label map, a DICOM-SEG) through the same queue."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile

import httpx
import nibabel as nib
import pytest

from tests.web.conftest import wait_for

pytestmark = pytest.mark.slow
#: The fewest network steps: the queue is under test here, not the model.
QUICK = {"steps": 1, "image_steps": 1}


async def _poll_many(url: str, job_id: str, count: int) -> list[tuple[int, float]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            answer = await client.get(f"/api/jobs/{job_id}")
            return answer.status_code, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(count)))


def test_queue_progress_polls_cancel_files_and_byom(live, tmp_path):
    client = live.client
    first = client.post("/api/jobs", json={"prompt": "enlarged spleen, arterial phase", "n": 2, "seed": 5, **QUICK})
    assert first.status_code == 200, first.text
    first = first.json()["id"]
    # The second job is the largest (eight cases at the model's own steps), to be cancelled while it runs.
    queued = [client.post("/api/jobs", json={"prompt": "enlarged liver", "n": 8}).json()["id"]]
    queued += [
        client.post("/api/jobs", json={"prompt": f"liver tumour {k} cm", **QUICK}).json()["id"] for k in range(8)
    ]
    # Ten jobs are in: while the first runs, 50 concurrent polls are all answered, and quickly.
    deadline = time.monotonic() + 900  # a busy machine may take minutes to start the worker (torch)
    while client.get(f"/api/jobs/{first}").json()["state"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    polls = asyncio.run(_poll_many(live.url, first, 50))
    assert all(code == 200 for code, _ in polls)
    slowest = max(seconds for _, seconds in polls)
    assert slowest < 10.0, f"a status poll waited {slowest:.1f} s: generation is blocking the server"
    states = [client.get(f"/api/jobs/{j}").json() for j in queued]
    assert [s["queue_position"] for s in states] == list(range(1, 10))

    for job_id in queued[2:]:
        assert client.post(f"/api/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    done = wait_for(client, first, timeout=600)
    assert done["state"] == "done" and done["cases"] == [0, 1], (done.get("error"), done.get("note"))
    assert done["progress"]["fraction"] == 1.0

    # The second job starts; cancelling it ends the worker, and the third runs on a fresh one.
    deadline = time.monotonic() + 300
    while client.get(f"/api/jobs/{queued[0]}").json()["state"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.post(f"/api/jobs/{queued[0]}/cancel").status_code == 200
    assert wait_for(client, queued[0], timeout=60)["state"] == "cancelled"
    cancelled = client.get(f"/api/jobs/{queued[0]}").json()
    assert len(cancelled["cases"]) < 8
    assert not list((live.out / "jobs" / queued[0]).rglob(".*.tmp"))  # nothing half-made is left
    assert wait_for(client, queued[1], timeout=600)["state"] == "done"

    # Every offered file of a finished case downloads; the DICOM zip holds the series and the SEG.
    files = {}
    for name in ("ct.nii.gz", "labels.nii.gz", "report.txt", "case.json", "preview.png", "dicom.zip"):
        answer = client.get(f"/api/jobs/{first}/files/{name}", params={"case": 1})
        assert answer.status_code == 200, (name, answer.text[:200])
        files[name] = answer.content
    assert client.get(f"/api/jobs/{first}/files/case.json", params={"case": 1}).json()["seed"] == 6
    names = zipfile.ZipFile(io.BytesIO(files["dicom.zip"])).namelist()
    assert "dicom/seg.dcm" in names and any(n.startswith("dicom/CT/") for n in names)
    compare = client.get(f"/api/jobs/{first}/compare", params={"case": 1}).json()
    assert compare["phase"]["requested"] == "arterial"
    assert any(o["organ"] == "spleen" and o["requested"]["state"] == "enlarged" for o in compare["organs"])

    # Bring your own mask: the first case's label map back in, a CT on its grid out.
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes(files["labels.nii.gz"])
    upload = client.post(
        "/api/uploads",
        files={"labels": ("labels.nii.gz", labels.read_bytes())},
        data={"vocabulary": "guidegen", "seed": "2", "image_steps": "1"},
    )
    assert upload.status_code == 200, upload.text
    byom = wait_for(client, upload.json()["id"], timeout=600)
    assert byom["state"] == "done", byom
    ct = client.get(f"/api/jobs/{byom['id']}/files/ct.nii.gz")
    (tmp_path / "ct.nii.gz").write_bytes(ct.content)
    assert nib.load(str(tmp_path / "ct.nii.gz")).shape == nib.load(str(labels)).shape
    assert client.get(f"/api/jobs/{byom['id']}/files/report.txt").text.strip()

    # ... and its DICOM-SEG alone (read on its own grid): the same label map, so a CT of the same shape.
    seg = zipfile.ZipFile(io.BytesIO(files["dicom.zip"])).read("dicom/seg.dcm")
    upload = client.post("/api/uploads", files={"labels": ("seg.dcm", seg)}, data={"seed": "2", "image_steps": "1"})
    assert upload.status_code == 200, upload.text
    from_seg = wait_for(client, upload.json()["id"], timeout=600)
    assert from_seg["state"] == "done", from_seg
    (tmp_path / "ct_seg.nii.gz").write_bytes(client.get(f"/api/jobs/{from_seg['id']}/files/ct.nii.gz").content)
    assert nib.load(str(tmp_path / "ct_seg.nii.gz")).shape == nib.load(str(labels)).shape
    gallery = [j["id"] for j in client.get("/api/jobs").json()["jobs"]]
    assert {first, byom["id"], *queued} <= set(gallery)
