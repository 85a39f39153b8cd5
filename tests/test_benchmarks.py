"""The prepared GPU benchmark script runs end to end (its CPU path, on a machine without a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_throughput_script_runs_and_accounts_for_every_job(tmp_path):
    out = tmp_path / "gpu.json"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "JOBS": "2",
        "CPU_JOBS": "2",
        "SIZE": "32",
        "ITERATIONS": "2",
        "PRESET": "fast",
        "OUT_JSON": str(out),
        "LIMIT": "280",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_throughput.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    runs = {run["label"]: run for run in data["runs"]}
    cpu = runs["cpu"]
    assert cpu["jobs"] == 2 and cpu["jobs_per_min"] > 0
    assert cpu["accounting"]["ok"] and cpu["accounting"]["lost"] == 0
    assert cpu["accounting"]["statuses"] == {"succeeded": 3}  # 1 warm-up + 2 timed
    import torch

    if torch.cuda.is_available():
        assert runs["cuda"]["accounting"]["ok"] and runs["cuda"]["gpu_memory_peak_mib"]
    else:
        assert "no CUDA" in runs["cuda"]["skipped"]
