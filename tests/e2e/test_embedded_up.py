"""`atelier up` without a Redis URL: embedded Redis, migrations, worker, web; SIGINT stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from tests.conftest import ROOT, tiny_png, wait_for
from worker.embedded import free_port


@pytest.mark.slow
def test_up_runs_a_job_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_VAR_DIR"] = str(tmp_path / "var")
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "up", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            try:
                body = requests.get(f"{base}/healthz", timeout=2).json()
            except requests.RequestException:
                return None
            return body if body.get("workers") else None

        assert wait_for(healthy, timeout=90, interval=0.5)["redis"] == "ok"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("redis-server" in " ".join(c.cmdline()) for c in children)

        response = requests.post(
            f"{base}/api/v1/jobs",
            data={"kind": "style_transfer", "size": "48", "iterations": "3"},
            files={"content": ("c.png", tiny_png(48, 48)), "style": ("s.png", tiny_png())},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        url = base + response.headers["Location"]
        job = wait_for(
            lambda: (
                (j := requests.get(url, timeout=5).json())["status"] in {"succeeded", "failed"}
                and j
            ),
            timeout=90,
        )
        assert job["status"] == "succeeded", job["error"]
        assert (tmp_path / "var" / "atelier.db").exists()
        folder = tmp_path / "var" / "storage" / "jobs" / job["id"]
        assert (folder / "attempt-1" / "result.png").exists()  # each attempt has its own
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        log.close()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    assert b"stopping" in (tmp_path / "up.log").read_bytes()
