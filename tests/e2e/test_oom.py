"""An allocation failure inside a job ends it ``out_of_memory``, and the worker carries on.

The failure is real: a real Celery worker runs a warm-up job, then its pool process gets
an address-space limit (RLIMIT_AS) a few hundred MB above what it already maps, and a
style job whose VGG activations need more than that is submitted. PyTorch's allocator
fails, the job ends ``failed`` with code ``out_of_memory``, and the same process, still
under the same limit, runs the next job to success.
"""

from __future__ import annotations

import resource

import psutil
import pytest
import torch

from tests.conftest import style_form, tiny_png, wait_for
from worker import runner

pytestmark = pytest.mark.slow

HEADROOM = 300 * 2**20  # a 640 px job needs ~1.2 GB; a 48 px one a few MB


def test_real_allocation_failures_are_recognised_and_others_are_not():
    failures = []
    for allocate in (lambda: bytearray(2**62), lambda: torch.empty(2**62, dtype=torch.uint8)):
        try:
            allocate()
        except (MemoryError, RuntimeError) as exc:
            failures.append(exc)
    assert len(failures) == 2 and all(map(runner.is_allocation_failure, failures))
    assert not runner.is_allocation_failure(
        RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    )
    message = runner.out_of_memory_message("style_transfer", failures[1])
    assert "ran out of memory" in message and "smaller size" in message


def _submit(client, **fields) -> str:
    form = style_form(tiny_png(64, 48), **fields)
    response = client.post("/api/v1/jobs", data=form, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def _finished(client, job_id: str, timeout: float = 240) -> dict:
    def done():
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        return job if job["status"] in {"succeeded", "failed", "canceled"} else None

    return wait_for(done, timeout=timeout, interval=0.3)


def _pool_process(worker) -> psutil.Process:
    """The one prefork child (concurrency 1) that runs the jobs."""
    children = wait_for(lambda: psutil.Process(worker.proc.pid).children(), timeout=60)
    assert len(children) == 1, children
    return children[0]


@pytest.fixture
def one_thread_worker(monkeypatch, start_worker):
    """A worker whose threads all exist before the limit (one OpenMP thread, two malloc
    arenas), so the limit can only bite on the job's own tensors."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    return start_worker()


def test_out_of_memory_ends_the_job_and_the_same_worker_runs_the_next(client, one_thread_worker):
    fast = {"size": 48, "iterations": 2, "multiscale": "false", "seed": 1}
    warm = _finished(client, _submit(client, **fast))
    assert warm["status"] == "succeeded", warm["error"]
    pool = _pool_process(one_thread_worker)
    _, hard = resource.prlimit(pool.pid, resource.RLIMIT_AS)
    limit = pool.memory_info().vms + HEADROOM
    resource.prlimit(pool.pid, resource.RLIMIT_AS, (limit, hard))

    big = _finished(client, _submit(client, size=640, iterations=1, multiscale="false"))
    assert big["status"] == "failed"
    assert big["error"]["code"] == "out_of_memory", big["error"]
    assert "ran out of memory" in big["error"]["message"]
    assert "choose a smaller size" in big["error"]["message"]
    assert big["outputs"] == []

    after = _finished(client, _submit(client, **fast))
    assert after["status"] == "succeeded", after["error"]
    assert pool.is_running() and _pool_process(one_thread_worker).pid == pool.pid
    assert resource.prlimit(pool.pid, resource.RLIMIT_AS)[0] == limit  # still under the cap
    assert after["attempts"] == big["attempts"] == 1
