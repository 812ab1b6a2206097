# The two front-door commands: `make train` (demo run) and `make test` (the suite).
# Both create the project's virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: train test test-fast complexity bench setup

$(VENV)/.ready: requirements.txt pyproject.toml scripts/setup_env.sh scripts/setup_mmdet.sh
	bash scripts/setup_env.sh $(VENV)
	touch $@

setup: $(VENV)/.ready

train: $(VENV)/.ready
	$(PY) train.py $(ARGS)

test: $(VENV)/.ready
	$(PY) -m pytest $(ARGS)

test-fast: $(VENV)/.ready
	$(PY) -m pytest -m "not slow" $(ARGS)

complexity: $(VENV)/.ready
	$(PY) scripts/complexity.py $(ARGS)
