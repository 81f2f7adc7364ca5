# The two set-up commands: `make run` and `make test`. Both (re)create .venv when it is missing
# or older than pyproject.toml, install the project with its test extras, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHELL := /bin/bash
# pip on these machines warns about every package the local mirror does not hold; hide that noise.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: run test test-slow lint format bench gpu-check gpu-wheels clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(PY) -m pip install --quiet --upgrade pip $(QUIET_PIP)
	@echo "installing geoloc-study and its dependencies into $(VENV) (a few minutes the first time)"
	@set -o pipefail; PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[test]' $(QUIET_PIP)
	@touch $(STAMP)

# A second `make run` resumes (and so re-prints) the finished quickstart instead of refusing to overwrite it.
run: $(STAMP)
	$(PY) tune_main.py studies/quickstart.yaml $$(test -f results/quickstart/optuna.db && echo --resume)

# The README's test command: ruff, then every test not marked slow, on two workers. The slow ones (real Ray
# instances and clusters, killed drivers and workers, whole studies) are `make test-slow`, which CI runs after
# it (.ci/run). Two workers, each running one of the two groups of tests that start Ray one at a time
# (tests/conftest.py); three were slower here (2026-12-05, 643 tests: 664 s against 605 s of pytest with two).
test: lint
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 -m slow

# ruff's lint rules and formatting are configured in pyproject.toml; `make format` applies them.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) -m bench

# The GPU readiness check (bench/gpu_check.py). A GPU node needs only Python 3.12 and torch, no .venv:
# what it lacks installs from bench/wheels/, which `make gpu-wheels` fills here (the versions of .venv,
# for CPython 3.12 on x86_64 Linux; GPU_TORCHVISION must match the node's torch: 0.26.0 for torch 2.11).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_TORCHVISION ?= 0.26.0
GPU_WHEELS := geoclip open_clip_torch pydantic pydantic-core annotated-types typing-inspection ftfy wcwidth regex \
	typing-extensions timm huggingface-hub safetensors faiss-cpu packaging

gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check

gpu-wheels: $(STAMP)
	@rm -rf bench/wheels
	@pins="$$($(PY) -c 'import sys, importlib.metadata as m; print(" ".join(f"{d}=={m.version(d)}" for d in sys.argv[1:]))' \
		$(GPU_WHEELS)) torchvision==$(GPU_TORCHVISION)" && echo "bench/wheels: $$pins" && set -o pipefail && \
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d bench/wheels $$pins $(QUIET_PIP)
	@du -sh bench/wheels

clean:
	rm -rf $(VENV) results
