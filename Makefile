# The two set-up commands: `make run` and `make test`. Both (re)create .venv when it is missing
# or older than pyproject.toml, install the project with its test extras, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHELL := /bin/bash
# pip on these machines warns about every package the local mirror does not hold; hide that noise.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: run test test-fast lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(PY) -m pip install --quiet --upgrade pip $(QUIET_PIP)
	@echo "installing geoloc-study and its dependencies into $(VENV) (a few minutes the first time)"
	@set -o pipefail; $(PY) -m pip install --quiet -e '.[test]' $(QUIET_PIP)
	@touch $(STAMP)

# A second `make run` resumes (and so re-prints) the finished quickstart instead of refusing to overwrite it.
run: $(STAMP)
	$(PY) tune_main.py studies/quickstart.yaml $$(test -f results/quickstart/optuna.db && echo --resume)

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

# ruff's lint rules and formatting are configured in pyproject.toml; `make format` applies them.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) results
