"""benchmarks/gpu_check.sh keeps working: its CPU fallback path runs in seconds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_fallback(tmp_path):
    env = {**os.environ, "GPU_CHECK_CPU": "1", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu (fallback)"
    impls = {(row["impl"], row["size"]) for row in report["rows"]}
    assert impls == {("ours", 48), ("pastiche", 48)}
    assert all(row["ms_per_step"] > 0 for row in report["rows"])
    assert "ms/step" in proc.stdout
    policies = [row["autotune"] for row in report["autotune_ab"]]
    assert policies == ["never", "shipped", "always"]
    assert all(row["seconds"] > 0 for row in report["autotune_ab"])
