# The two front-door commands: `make train` (demo run) and `make test` (the suite).
# `make train` sets up the training stack only (.venv, a few minutes); `make test` also installs the detection
# stack (mmcv 2.1.0 compiled once per machine, cached in ~/.cache/odconv/wheels), which the detection tests need.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: train test test-fast durations complexity setup setup-detection

$(VENV)/.ready: requirements.txt pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	touch $@

$(VENV)/.detection-ready: $(VENV)/.ready scripts/setup_mmdet.sh
	bash scripts/setup_mmdet.sh $(VENV)
	touch $@

setup: $(VENV)/.ready

setup-detection: $(VENV)/.detection-ready

train: $(VENV)/.ready
	$(PY) train.py $(ARGS)

# The suite runs in WORKERS processes (pytest-xdist), each taking whole test files (module fixtures such as the
# Slurm cluster and the trained detector are built once); much of it waits on subprocesses, Slurm and sleeps.
WORKERS ?= 2

test: $(VENV)/.detection-ready
	$(PY) -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

test-fast: $(VENV)/.detection-ready
	$(PY) -m pytest -n $(WORKERS) --dist loadfile -m "not slow" $(ARGS)

# The whole suite, recording each test file's seconds in tests/durations.json (files start longest first from it).
durations: $(VENV)/.detection-ready
	ODCONV_RECORD_DURATIONS=1 $(PY) -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

complexity: $(VENV)/.ready
	$(PY) scripts/complexity.py $(ARGS)
