"""The web app's JSON API without generation (no worker): labels, parsing, validation, uploads,
restarts, the ``serve`` command, and a fuzz of bad requests that must all end in one-line 4xx."""

from __future__ import annotations

import json
import os
import time

import nibabel as nib
import numpy as np
import pytest

from guidegen.labels.vocabulary import CLASSES, ID, preview_colour
from tests.test_cli import _one_line_error

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from guidegen.web.app import MAX_WEB_CASES, create_app  # noqa: E402
from guidegen.web.jobs import CASE_FILES  # noqa: E402


@pytest.fixture()
def out(tmp_path):
    return tmp_path / "out"


@pytest.fixture()
def client(out, web_model):
    with TestClient(create_app(out, web_model, start_worker=False, max_queued=5, max_upload_bytes=200_000)) as c:
        yield c


def _label_map(path, vocabulary_descrip=True):
    array = np.zeros((24, 20, 12), dtype=np.uint8)
    array[4:20, 4:16, 2:10] = ID["body"]
    array[6:12, 6:12, 3:8] = ID["liver"]
    image = nib.Nifti1Image(array, np.diag([4.0, 4.0, 8.0, 1.0]))
    if vocabulary_descrip:
        image.header["descrip"] = b"GuideGen label map"
    nib.save(image, str(path))
    return path


def _files_outside(root, out):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if out not in p.parents and p != out)


def test_labels_are_the_vocabulary_with_its_preview_colours(client):
    table = client.get("/api/labels").json()
    assert [c["name"] for c in table["classes"]] == [c.name for c in CLASSES if c.id != 0]
    assert all(tuple(c["colour"]) == preview_colour(c["id"]) for c in table["classes"])
    assert table["windows"]["abdomen"] == {"level": 40.0, "width": 400.0}


def test_parse_says_what_was_understood_ignored_and_missing(client):
    parsed = client.post("/api/parse", json={"prompt": "68-year-old man, 4 cm sigmoid colon cancer, zebra"}).json()
    assert parsed["attributes"]["age"] == 68 and parsed["attributes"]["sex"] == "male"
    assert parsed["attributes"]["tumours"][0]["diameter_mm"] == 40.0
    assert "zebra" in parsed["ignored"] and "68-year-old" not in parsed["ignored"] and "4" not in parsed["ignored"]
    assert any("phase" in w for w in parsed["warnings"])
    nothing = client.post("/api/parse", json={"prompt": "hello there"}).json()
    assert any("nothing in the prompt" in w for w in nothing["warnings"])


def test_jobs_queue_persist_and_survive_a_restart(client, out, web_model):
    made = client.post("/api/jobs", json={"prompt": "enlarged spleen", "n": 2, "seed": 3}).json()
    assert made["state"] == "queued"
    status = client.get(f"/api/jobs/{made['id']}").json()
    assert status["queue_position"] == 1 and status["cases_requested"] == 2
    waiting = [client.post("/api/jobs", json={"prompt": "enlarged spleen"}).json()["id"] for _ in range(4)]
    full = client.post("/api/jobs", json={"prompt": "enlarged spleen"})
    assert full.status_code == 429 and "waiting" in full.json()["error"]
    cancelled = client.post(f"/api/jobs/{made['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    queued = waiting[0]

    # A job a killed server left running, a finished one, and a folder that is not a job.
    running = out / "jobs" / "00000000000000aa"
    running.mkdir()
    (running / "job.json").write_text(
        json.dumps({"id": running.name, "kind": "generate", "state": "running", "params": {"prompt": "x", "n": 1}})
    )
    done = out / "jobs" / "00000000000000bb"
    (done / "result" / "case_000000").mkdir(parents=True)
    (done / "result" / "case_000000" / "report.txt").write_text("a report\n")
    (done / "job.json").write_text(
        json.dumps({"id": done.name, "kind": "generate", "state": "done", "params": {"prompt": "y"}, "cases": [0]})
    )
    (out / "jobs" / "00000000000000cc").mkdir()
    (out / "jobs" / "00000000000000cc" / "job.json").write_text("{not json")
    # What the killed server was writing: a case under its temporary name, a zip in a finished case
    # folder, an upload still arriving, and an upload moved into place before its job was recorded.
    (running / "result" / ".case_000000.x1y2.tmp").mkdir(parents=True)
    (running / "result" / ".case_000000.x1y2.tmp" / "ct.nii.gz").write_bytes(b"\x1f\x8b half")
    (running / "result" / "case_000001").mkdir()
    (running / "result" / "case_000001" / ".dicom.a1b2.tmp.zip").write_bytes(b"PK half")
    (out / "jobs" / ".upload-0123456789abcdef.tmp").mkdir()
    (out / "jobs" / ".upload-0123456789abcdef.tmp" / "labels.nii.gz").write_bytes(b"\x1f\x8b")
    (out / "jobs" / "00000000000000dd" / "input").mkdir(parents=True)
    with TestClient(create_app(out, web_model, start_worker=False)) as again:
        jobs = {j["id"]: j for j in again.get("/api/jobs").json()["jobs"]}
        assert jobs[made["id"]]["state"] == "cancelled"
        assert jobs[running.name]["state"] == "queued" and "resumed" in jobs[running.name]["note"]
        assert jobs[queued]["state"] == "queued" and "queued again" in jobs[queued]["note"]
        assert not list(out.rglob(".*")), list(out.rglob(".*"))
        assert not (out / "jobs" / "00000000000000dd").exists() and "00000000000000dd" not in jobs
        assert jobs[done.name]["state"] == "done"
        assert "00000000000000cc" not in jobs
        assert again.get(f"/api/jobs/{done.name}/files/report.txt").text == "a report\n"
        assert json.loads((running / "job.json").read_text())["state"] == "queued"  # on disk too


def test_a_job_whose_worker_cannot_start_fails_with_the_reason_and_the_queue_goes_on(out, monkeypatch):
    from guidegen.web.jobs import JobStore

    def no_worker(self):
        raise OSError("[Errno 24] Too many open files")

    monkeypatch.setattr(JobStore, "_start_worker", no_worker)
    store = JobStore(out, None)
    try:
        jobs = [store.submit("generate", {"prompt": "enlarged spleen", "n": 1, "seed": 0}) for _ in range(2)]
        deadline = time.monotonic() + 30
        while any(j.state not in ("failed", "done", "cancelled") for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        store.close()  # the dispatcher has written what it knows
        for job in jobs:  # neither is left "running" or "queued"
            assert job.state == "failed" and job.error == "internal error: OSError: [Errno 24] Too many open files"
            assert json.loads((out / "jobs" / job.id / "job.json").read_text())["state"] == "failed"
    finally:
        store.close()


def test_eta_is_the_elapsed_time_scaled_by_the_fraction_left(out):
    from guidegen.web.jobs import JobStore

    store = JobStore(out, None, start_worker=False)
    job = store.submit("generate", {"prompt": "enlarged spleen", "n": 2, "seed": 0})
    assert store.status(job.id)["queue_position"] == 1 and "eta_s" not in store.status(job.id)["progress"]
    store.queue.clear()
    job.state, job.started_clock = "running", time.monotonic() - 30.0
    job.progress = {"stage": "images", "fraction": 0.25}
    progress = store.status(job.id)["progress"]
    assert progress["elapsed_s"] == pytest.approx(30.0, abs=1.0)
    assert progress["eta_s"] == pytest.approx(90.0, abs=3.0)  # a quarter took 30 s: three quarters left
    job.progress = {"stage": "masks", "fraction": 0.01}
    assert store.status(job.id)["progress"]["eta_s"] is None  # too early to say
    store.close()


def test_uploads_are_checked_before_they_become_jobs(client, out, tmp_path):
    good = _label_map(tmp_path / "mine.nii.gz")
    made = client.post(
        "/api/uploads", files={"labels": ("mine.nii.gz", good.read_bytes())}, data={"vocabulary": "guidegen"}
    )
    assert made.status_code == 200, made.text
    job = client.get(f"/api/jobs/{made.json()['id']}").json()
    assert job["kind"] == "byom" and job["params"]["filename"] == "mine.nii.gz"
    assert (out / "jobs" / job["id"] / "input" / "labels.nii.gz").read_bytes() == good.read_bytes()
    unlabelled = _label_map(tmp_path / "plain.nii.gz", vocabulary_descrip=False)
    refusals = [
        ({"labels": ("x.nii.gz", b"\x1f\x8bnot really gzip")}, {}, "labels"),
        ({"labels": ("x.nii.gz", unlabelled.read_bytes())}, {"vocabulary": "no-such-vocabulary"}, "vocabular"),
        ({"labels": ("x.png", good.read_bytes())}, {}, ".nii.gz"),
        ({"labels": ("x.nii", good.read_bytes())}, {}, "is not a .nii file"),
        ({"labels": ("x.dcm", b"\0" * 200)}, {}, "is not a .dcm file"),
        ({"labels": ("x.nii.gz", b"")}, {}, "empty"),
        ({"labels": ("big.nii.gz", b"\x1f\x8b" + b"\0" * 300_000)}, {}, "bytes"),
    ]
    before = set((out / "jobs").iterdir())
    for files, data, needle in refusals:
        answer = client.post("/api/uploads", files=files, data=data)
        assert 400 <= answer.status_code < 500, (files["labels"][0], answer.status_code, answer.text)
        assert needle in answer.json()["error"], answer.json()
    assert set((out / "jobs").iterdir()) == before  # nothing half-written


def test_fuzz_bad_requests_get_one_line_4xx_and_write_nothing_outside_out(client, out, tmp_path):
    outside_before = _files_outside(tmp_path, out)
    job = client.post("/api/jobs", json={"prompt": "enlarged spleen"}).json()["id"]
    bad_json = ["", "{", "[]", "null", '"text"', "1e999", '{"prompt": 5}', '{"prompt": null}', "{'prompt': 'x'}"]
    bad_jobs = [
        {},
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": "\x00\x01"},
        {"prompt": "x" * 2001},
        {"prompt": "x" * 5000},
        {"prompt": "ok", "n": 0},
        {"prompt": "ok", "n": -1},
        {"prompt": "ok", "n": MAX_WEB_CASES + 1},
        {"prompt": "ok", "n": 10**30},
        {"prompt": "ok", "n": "2"},
        {"prompt": "ok", "n": 1.5},
        {"prompt": "ok", "n": True},
        {"prompt": "ok", "seed": 2**64},
        {"prompt": "ok", "seed": -(2**63) - 1},
        {"prompt": "ok", "seed": "0"},
        {"prompt": "ok", "phase": "venous"},
        {"prompt": "ok", "phase": 3},
        {"prompt": "ok", "steps": 0},
        {"prompt": "ok", "image_steps": 10**6},
        {"prompt": "ok", "guidance": -1},
        {"prompt": "ok", "guidance": 1e9},
        {"prompt": "ok", "image_guidance": "NaN"},
        {"prompt": "ok", "dicom": "yes"},
        {"prompt": "ok", "model": "../../etc"},
        {"prompt": ["a", "b"]},
    ]
    # (Literal "../" is resolved by the client before it is sent; encoded forms reach the server.)
    ids = ["...", ".%2e", "%2e%2e", "..%2F..%2Fetc", "0" * 15, "0" * 17, "G" * 16, "ABCDEF0123456789", "x", "%00"]
    names = [
        "../job.json",
        "..%2Fjob.json",
        "%2e%2e%2fjob.json",
        "job.json",
        "run.json",
        "ct.nii",
        "CT.NII.GZ",
        "ct.nii.gz%00",
        "dicom",
        "preview.png%2f%2e%2e",
        "%2e%2e",
        "%2F",
        "input",
        "..%5c..%5cjob.json",
    ]
    as_json = {"content-type": "application/json"}
    requests = [("POST", "/api/jobs", {"content": b, "headers": as_json}) for b in bad_json]
    requests += [("POST", "/api/jobs", {"json": b}) for b in bad_jobs]
    requests += [("POST", "/api/parse", {"json": b}) for b in ({}, {"prompt": ""}, {"prompt": "x" * 5000}, {"p": 1})]
    requests += [("GET", f"/api/jobs/{i}", {}) for i in ids]
    requests += [("POST", f"/api/jobs/{i}/cancel", {}) for i in ids]
    requests += [("GET", f"/api/jobs/{i}/files/ct.nii.gz", {}) for i in ids]
    requests += [("GET", f"/api/jobs/{job}/files/{n}", {}) for n in names]
    requests += [("GET", f"/api/jobs/{job}/files/ct.nii.gz?case={c}", {}) for c in ("-1", "1", "x", "1e9", "0")]
    slice_queries = ["axis=oblique", "window=brain", "opacity=2", "hidden=a,b", "fraction=7", "index=x", "case=-5"]
    requests += [("GET", f"/api/jobs/{job}/slice?{q}", {}) for q in slice_queries]
    requests += [("GET", f"/api/jobs/{job}/compare?case={c}", {}) for c in ("0", "3", "z")]
    requests += [
        ("POST", "/api/jobs", {"content": b"{" + b" " * 70_000 + b"}", "headers": as_json}),
        ("POST", "/api/uploads", {"data": {"seed": "1"}}),
        ("POST", "/api/uploads", {"files": {"labels": ("../../evil.nii.gz", b"\x1f\x8b")}}),
        ("POST", "/api/uploads", {"files": {"labels": ("a.nii.gz", b"x")}, "data": {"vocabulary": "../etc"}}),
        ("POST", "/api/uploads", {"files": {"labels": ("a.exe", b"MZ")}}),
        ("POST", "/api/uploads", {"files": {"labels": ("a.nii.gz", b"\x1f\x8b")}, "data": {"seed": "x"}}),
        ("POST", "/api/uploads", {"files": {"labels": ("a.nii.gz", b"\x1f\x8b")}, "data": {"phase": "late"}}),
        ("POST", "/api/uploads", {"files": {"labels": ("a.nii.gz", b"\x1f\x8b" * 200_000)}}),
        ("PUT", "/api/jobs", {}),
        ("DELETE", f"/api/jobs/{job}", {}),
        ("GET", "/api/nothing", {}),
        ("GET", "/static/../../pyproject.toml", {}),
        ("GET", "/static/%2e%2e/app.py", {}),
        ("POST", "/api/parse", {"content": b"\xff\xfe", "headers": as_json}),
    ]
    assert len(requests) >= 100
    for method, path, options in requests:
        answer = client.request(method, path, **options)
        assert 400 <= answer.status_code < 500, (method, path, answer.status_code, answer.text[:300])
        body = answer.json()
        assert isinstance(body.get("error"), str) and body["error"], (path, body)
        assert "\n" not in body["error"] and "Traceback" not in answer.text, (path, body)
    assert _files_outside(tmp_path, out) == outside_before
    assert sorted(p.name for p in (out / "jobs").iterdir()) == [job]  # only the one good job
    assert set(CASE_FILES) >= {"ct.nii.gz", "labels.nii.gz", "report.txt", "case.json", "dicom.zip"}


def test_serve_refuses_bad_hosts_and_warns_about_open_ones(tmp_path, capsys, monkeypatch, web_model):
    import uvicorn

    from guidegen.__main__ import main

    with pytest.raises(SystemExit) as code:
        main(["serve", "--host", "my host", "--out", str(tmp_path / "o")])
    assert code.value.code == 2
    _one_line_error(capsys.readouterr().err, "--host")
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: started.append((host, port)))
    main(["serve", "--host", "0.0.0.0", "--port", "8123", "--model", str(web_model), "--out", str(tmp_path / "o")])
    assert started == [("0.0.0.0", 8123)]
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    main(["serve", "--model", str(web_model), "--out", str(tmp_path / "o")])
    assert started[-1] == ("127.0.0.1", 8000) and "warning" not in capsys.readouterr().err
    assert os.path.isdir(tmp_path / "o" / "jobs")
