"""``atelier worker --jobs-per-gpu N``: N processes per GPU, each held to its memory share.

The card's memory is passed in (``--gpu-memory``), the one number a test cannot get from
a real device here; every estimate is the engine's own (worker/engines/planning.py).
"""

from __future__ import annotations

import re
import shlex

import pytest

from worker import gpu_admission
from worker.cli import WorkerPlanError, build_parser, main, worker_plan
from worker.engines import planning
from worker.engines.errors import OutOfMemory

GIB = 2**30


def plan(*argv: str, environ: dict[str, str] | None = None):
    args = build_parser().parse_args(["worker", *argv])
    return worker_plan(args, environ or {})


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_two_jobs_per_gpu_start_two_processes_per_gpu_each_with_its_share():
    planned = plan("--gpus", "0,1", "--jobs-per-gpu", "2", "--gpu-memory", "80")
    share = gpu_admission.plan_share(80 * GIB, 2, 2048)
    assert [extra["CUDA_VISIBLE_DEVICES"] for extra, _ in planned] == ["0", "0", "1", "1"]
    hosts = [_option(command, "--hostname") for _, command in planned]
    assert hosts == [f"atelier-gpu{g}-{s}@%h" for g in "01" for s in "01"]
    for extra, command in planned:
        assert extra["ATELIER_DEVICE"] == "cuda"
        assert extra[gpu_admission.SHARE_ENV] == str(share)
        assert _option(command, "--concurrency") == "1"
    # the processes on one card never hand out more than the card holds
    assert 2 * (share + gpu_admission.CONTEXT_BYTES) <= 80 * GIB


def test_one_job_per_gpu_is_the_plain_plan_without_a_share():
    planned = plan("--gpus", "0", "--jobs-per-gpu", "1")
    ((extra, command),) = planned
    assert extra == {"CUDA_VISIBLE_DEVICES": "0", "ATELIER_DEVICE": "cuda"}
    assert _option(command, "--hostname") == "atelier-gpu0@%h"


def test_a_plan_that_cannot_hold_the_largest_job_is_refused_with_what_fits():
    with pytest.raises(WorkerPlanError) as info:
        plan("--gpus", "0", "--jobs-per-gpu", "8", "--gpu-memory", "80")
    message = str(info.value)
    assert "GPU 0" in message and "2048x2048" in message
    fits = int(re.search(r"--jobs-per-gpu (\d+)", message).group(1))
    assert gpu_admission.share_bytes(80 * GIB, fits) >= gpu_admission.largest_job_bytes(2048)
    assert gpu_admission.share_bytes(80 * GIB, fits + 1) < gpu_admission.largest_job_bytes(2048)
    # a smaller ATELIER_MAX_SIZE makes the same plan fit
    size = int(re.search(r"ATELIER_MAX_SIZE to (\d+)", message).group(1))
    planned = plan(
        "--gpus", "0", "--jobs-per-gpu", "8", "--gpu-memory", "80",
        environ={"ATELIER_MAX_SIZE": str(size)},
    )  # fmt: skip
    assert len(planned) == 8


def test_concurrency_counts_towards_the_processes_sharing_a_card():
    share = int(plan("--gpus", "0", "--jobs-per-gpu", "2", "--concurrency", "2",
                     "--gpu-memory", "141")[0][0][gpu_admission.SHARE_ENV])  # fmt: skip
    assert share == gpu_admission.share_bytes(141 * GIB, 4)


@pytest.mark.parametrize("value", ["0", "9", "two"])
def test_jobs_per_gpu_is_bounded_and_the_error_names_the_flag(value, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["worker", "--gpus", "0", "--jobs-per-gpu", value])
    assert info.value.code == 2
    assert "--jobs-per-gpu must be a whole number from 1 to 8" in capsys.readouterr().err


def test_main_reports_a_plan_error_and_prints_a_good_plan(capsys, monkeypatch):
    monkeypatch.delenv("ATELIER_MAX_SIZE", raising=False)
    assert main(["worker", "--jobs-per-gpu", "2", "--print"]) == 2
    assert "--jobs-per-gpu needs --gpus" in capsys.readouterr().err
    argv = ["worker", "--gpus", "3", "--jobs-per-gpu", "3", "--gpu-memory", "141", "--print"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "CUDA_VISIBLE_DEVICES=3"
        assert words[2].startswith(f"{gpu_admission.SHARE_ENV}=")


def test_job_estimate_is_the_engines_estimate_plus_the_smallest_history():
    for width, height in [(512, 512), (1024, 768)]:
        engine = planning.estimate_bytes(width, height, bf16=False)
        ours = gpu_admission.job_bytes(width, height)
        history = planning.MIN_LBFGS_HISTORY * 2 * 3 * width * height * 4
        assert ours == engine + history
        # a batch shares the network weights but needs every image's activations
        batched = gpu_admission.job_bytes(width, height, batch=4)
        assert batched == planning.estimate_bytes(width, 4 * height, False) + 4 * history
        assert batched == 4 * ours - 3 * planning.estimate_bytes(0, 0, False)


def test_a_job_over_the_process_share_is_refused_and_told_what_fits():
    share = gpu_admission.share_bytes(24 * GIB, 4)
    gpu_admission.admit(1024, 1024, share)  # ~3 GiB: fits a 4.6 GiB share
    gpu_admission.admit(4096, 4096, None)  # a process with the card to itself: no share
    with pytest.raises(OutOfMemory) as info:
        gpu_admission.admit(2048, 2048, share)
    fit = int(re.search(r"size <= (\d+)", info.value.message).group(1))
    assert gpu_admission.job_bytes(fit, fit) <= share < gpu_admission.job_bytes(fit + 1, fit + 1)
    with pytest.raises(OutOfMemory):  # four 1024 px jobs batched do not fit where one does
        gpu_admission.admit(1024, 1024, share, batch=4)


def test_share_comes_from_the_environment_the_plan_sets():
    ((extra, _),) = plan("--gpus", "0", "--jobs-per-gpu", "1")
    assert gpu_admission.share_from_env(extra) is None
    extra = plan("--gpus", "0", "--jobs-per-gpu", "2", "--gpu-memory", "80")[0][0]
    assert gpu_admission.share_from_env(extra) == gpu_admission.plan_share(80 * GIB, 2, 2048)


def test_a_shared_card_counts_only_this_processs_share_as_free():
    """The engine's per-job memory check (and its L-BFGS history sizing) sees the share."""
    from worker.engines.planning import SHARE_ENV, within_share

    gib = 2**30
    assert within_share(40 * gib, 0, {}) == 40 * gib  # the card to itself
    env = {SHARE_ENV: str(10 * gib)}
    assert within_share(40 * gib, 3 * gib, env) == 7 * gib  # share minus what it holds
    assert within_share(5 * gib, 3 * gib, env) == 5 * gib  # neighbours took more: CUDA's count
    assert within_share(40 * gib, 12 * gib, env) == 0
