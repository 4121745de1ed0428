"""A live web app (uvicorn on a free port, one worker process) over a tiny random-weight model."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi", reason='the web app needs the web extra: pip install "guidegen[web]"')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """uvicorn serving `create_app(out, model)` in a thread of the test process."""

    def __init__(self, out, model):
        import uvicorn

        from guidegen.web.app import create_app

        self.out = out
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(out, model)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the web app did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)


def wait_for(client, job_id: str, timeout: float = 120.0) -> dict:
    """Poll a job until it ends; fail the test on a timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.25)
    pytest.fail(f"job {job_id} did not finish in {timeout} s: {job}")


@pytest.fixture(scope="session")
def web_model(tmp_path_factory):
    from tests.pipeline.conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("web-model") / "tiny")


@pytest.fixture(scope="session")
def live(tmp_path_factory, web_model):
    server = LiveServer(tmp_path_factory.mktemp("web") / "out", web_model)
    yield server
    server.stop()
