# The README's two commands are `make run` and `make test`; each sets everything up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

export VK_ICD_FILENAMES := $(CURDIR)/.vulkan/lvp_icd.json
export MS_SKIP_ASSET_DOWNLOAD_PROMPT := 1
export PYTHONUNBUFFERED := 1
# dvc.yaml's stages call `python`: the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test test-fast lint format bench demo lock

setup:
	@infra/local/setup.sh

# The pipeline's main job: `dvc repro` on params.yaml (embedded MLflow store, local DVC remote).
run: setup
	$(VENV)/bin/dvc repro

# Lint, format check and the whole test suite (simulator and server tests included).
test: setup
	@infra/local/test-tools.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

# A developer's loop: lint and every test without the simulator, servers or the
# component image (markers derived from the fixtures a test uses; about 2 minutes here).
test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not simulator and not server and not container" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) -m par.bench

demo: setup
	$(PY) -m par.demo

# Re-resolve requirements.in into requirements.lock in a scratch venv (needs the index).
lock:
	rm -rf /tmp/par-lock-venv && python3.11 -m venv /tmp/par-lock-venv
	/tmp/par-lock-venv/bin/pip install --quiet torch==2.13.0
	/tmp/par-lock-venv/bin/pip install --quiet -r requirements.in
	/tmp/par-lock-venv/bin/pip check
	{ head -n 3 requirements.lock; /tmp/par-lock-venv/bin/pip freeze --exclude-editable \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
