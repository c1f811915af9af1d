# Two commands do all set-up on a fresh machine:  `make repro` (the main job)  and  `make test`.
# Both create .venv in the checkout if absent and install from the project's own files.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Every install goes through constraints.txt, which pins the CPU build of torch.
PIP_INSTALL := $(PIP) install --quiet --constraint constraints.txt
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: pipeline status compare readme step-cost venv test test-all bench lint format repro derivative-cost perf-check perf-baseline perf-baseline-add check-env clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) --editable '.[bench,dev]'
	$(PY) -m bench.check_env
	touch $@

venv: $(VENV)/.installed

check-env: venv
	$(PY) -m bench.check_env

## Fast tests (what CI runs).
test: venv
	$(PY) -m pytest -q -m "not slow and not benchmark"

## Every test, slow ones included.
test-all: venv
	$(PY) -m pytest -q -m "not benchmark"

## Speed benchmarks (pytest-benchmark; ratios against references measured in the same process).
bench: venv
	$(PY) -m pytest -q -m benchmark --benchmark-enable tests/benchmarks

lint: venv
	$(VENV)/bin/ruff check --no-cache optimizers bench tests
	$(VENV)/bin/ruff format --no-cache --check optimizers bench tests

format: venv
	$(VENV)/bin/ruff format optimizers bench tests
	$(VENV)/bin/ruff check --fix optimizers bench tests

## The main job: `make repro` (the default profile, params.yaml → dvc.yaml), or one profile:
## `make repro PROFILE=ci` (profiles/ci.yaml → profiles/ci/dvc.yaml, its own dvc.lock).
## The pipeline is rendered first (bench/pipeline.py), so an edited grid needs nothing else.
PROFILE ?= default
PARAMS := $(if $(filter default,$(PROFILE)),params.yaml,profiles/$(PROFILE).yaml)
PIPELINE := $(if $(filter default,$(PROFILE)),dvc.yaml,profiles/$(PROFILE)/dvc.yaml)
repro: venv
	@test -f $(PARAMS) || { echo "make repro: PROFILE=$(PROFILE): no params file $(PARAMS)" >&2; exit 2; }
	$(PY) -m bench.pipeline --params $(PARAMS)
	$(PY) -m bench.lockfile guard --pipeline $(PIPELINE)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro $(PIPELINE)
	$(PY) -m bench.lockfile save --pipeline $(PIPELINE)

## Which stages of a profile are stale (`dvc status` alone lists every profile's).
status: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc status $(PIPELINE)

## Render every profile's dvc.yaml from bench/pipeline.template.yaml (make repro does it too).
pipeline: venv
	$(PY) -m bench.pipeline

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks

## Cost of the projected derivatives (README table).
derivative-cost: venv
	$(PY) -m bench.studies.derivative_cost --out results/derivative_cost.json

## Cost of one PartitionedNewton step vs SGD on the paper's MLP and LeNet-5 (README table).
step-cost: venv
	$(PY) -m bench.studies.step_cost --out results/step_cost.json

## Refresh the README's generated tables (headline, derivative cost, step cost) from their result files.
readme: venv
	$(PY) -m bench.reporting.readme

## Performance-regression gate (ratios against results/perf_baseline.json).
perf-check: venv
	$(PY) -m bench.studies.perf_check

perf-baseline: venv
	$(PY) -m bench.studies.perf_check --update-baseline

## Record a newly gated figure in the baseline without moving the recorded ones.
perf-baseline-add: venv
	$(PY) -m bench.studies.perf_check --add-missing

## Regression gate (exit 1 on a regression): make compare BASE=<git revision or summary.csv> [CURRENT=...] [ARGS=--md]
compare: venv
	@test -n "$(BASE)" || { echo "usage: make compare BASE=<revision or summary.csv> [CURRENT=...] [ARGS=--md|--json]" >&2; exit 2; }
	$(PY) -m bench.compare $(BASE) $(CURRENT) --params $(PARAMS) $(ARGS)
