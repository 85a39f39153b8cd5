"""``atelier worker``: one Celery process per GPU, each seeing only its GPU; CPU concurrency."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import uuid

import psutil
import pytest

from tests.conftest import ROOT, settings_env, wait_for
from worker.cli import build_parser, worker_plan


def plan(*argv: str, environ: dict[str, str] | None = None):
    args = build_parser().parse_args(["worker", *argv])
    return worker_plan(args, environ or {})


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_gpus_list_starts_one_single_slot_process_per_gpu():
    planned = plan("--gpus", "0,1", "--queues", "gpu")
    assert [extra["CUDA_VISIBLE_DEVICES"] for extra, _ in planned] == ["0", "1"]
    for gpu, (extra, command) in zip("01", planned, strict=True):
        assert extra["ATELIER_DEVICE"] == "cuda"
        assert _option(command, "--queues") == "gpu"
        assert _option(command, "--concurrency") == "1"
        assert _option(command, "--hostname") == f"atelier-gpu{gpu}@%h"


def test_gpus_all_keeps_the_ids_it_was_given():
    planned = plan("--gpus", "all", environ={"CUDA_VISIBLE_DEVICES": "3,5"})
    assert [extra["CUDA_VISIBLE_DEVICES"] for extra, _ in planned] == ["3", "5"]


def test_gpus_all_without_a_gpu_says_so(capsys, monkeypatch):
    import torch

    from worker.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main(["worker", "--gpus", "all", "--print"]) == 2
    assert "none are visible" in capsys.readouterr().err


def test_cpu_concurrency_shares_the_cores_between_children():
    ((extra, command),) = plan("--queues", "cpu", "--concurrency", "4")
    assert _option(command, "--concurrency") == "4" and _option(command, "--queues") == "cpu"
    assert extra == {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 4))}
    ((extra, _),) = plan("--concurrency", "4", environ={"OMP_NUM_THREADS": "3"})
    assert extra == {}  # the operator's own choice wins
    ((extra, command),) = plan()
    assert extra == {} and _option(command, "--concurrency") == "1"


@pytest.mark.parametrize(
    "argv", [["--queues", "gpu,bogus"], ["--queues", ""], ["--concurrency", "0"]]
)
def test_bad_worker_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["worker", *argv])
    assert info.value.code == 2
    assert "queue" in capsys.readouterr().err or "--concurrency" in " ".join(argv)


def test_print_shows_each_command_with_its_environment(capsys):
    from worker.cli import main

    assert main(["worker", "--gpus", "0,1", "--queues", "gpu", "--print"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for gpu, line in zip("01", lines, strict=True):
        words = shlex.split(line)
        assert words[:2] == [f"CUDA_VISIBLE_DEVICES={gpu}", "ATELIER_DEVICE=cuda"]
        assert "celery" in words and "worker.celery_app" in words


@pytest.mark.slow
@pytest.mark.parametrize("fresh_db_url", ["sqlite"], indirect=True)  # the DB plays no part
def test_gpus_0_1_really_runs_two_workers_with_their_own_gpu(settings, tmp_path):
    """The real command: two Celery workers answer on the broker, each child env pinned."""
    from web.queue import make_client

    name = f"cli-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    log = open(tmp_path / "workers.log", "wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--gpus", "0,1", "--name", name],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    expected = {f"{name}-gpu{gpu}@{socket.gethostname()}" for gpu in "01"}
    try:
        client = make_client(settings)

        def both_answer():
            if parent.poll() is not None:
                raise AssertionError((tmp_path / "workers.log").read_text()[-3000:])
            replies = client.control.ping(destination=sorted(expected), timeout=0.5) or []
            return {host for reply in replies for host in reply} == expected

        wait_for(both_answer, timeout=120, interval=0.5)
        mains = psutil.Process(parent.pid).children()
        pinned = sorted(child.environ().get("CUDA_VISIBLE_DEVICES") for child in mains)
        assert pinned == ["0", "1"]
        assert {child.environ().get("ATELIER_DEVICE") for child in mains} == {"cuda"}
        everyone = [p for child in mains for p in [child, *child.children(recursive=True)]]
        parent.send_signal(signal.SIGTERM)  # docker stop: forwarded, warm shutdown
        assert parent.wait(60) == 0
        gone, alive = psutil.wait_procs(everyone, timeout=30)
        assert not alive, f"left behind: {alive}"
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        log.close()
