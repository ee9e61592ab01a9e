# The two front doors: `make run` and `make test`. Both set up everything from nothing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# The machine's pip config lists local index folders that may be absent; their
# warnings drown real errors, so we drop exactly those lines.
PIPQ := grep -v 'is ignored: it is neither a file nor a directory' || true
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup data browser run test lint lab bench gpu-data clean help
help:
	@echo "make run   - set up (.venv, deps, data) and run the main job"
	@echo "make test  - set up and run the whole test suite"
	@echo "make lint  - ruff: lint rules and format check (pyproject.toml)"
	@echo "make lab   - set up and start JupyterLab with the project's kernel"
	@echo "make bench - run the benchmarks in benchmarks/"
	@echo "make gpu-data - stage Fashion-MNIST in .gpu-data for benchmarks/gpu_checks.sh on a GPU machine without network"

setup: $(STAMP) data

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || { echo "setup: creating $(VENV)"; python3 -m venv $(VENV); }
	@# torch's CPU wheel first: a bare 'torch' requirement would pull a multi-GB CUDA build.
	@$(PY) -c 'import torch' 2>/dev/null || { echo "setup: installing $(TORCH_CPU) (the CPU wheel)"; $(PY) -m pip install -q $(TORCH_CPU) 2>&1 | $(PIPQ); }
	@echo "setup: installing qatlab and its dependencies into $(VENV) (a minute or two)"
	@$(PY) -m pip install -q -e '.[test]' 2>&1 | $(PIPQ)
	@# The project's kernel, inside the venv: papermill and JupyterLab both run notebooks on it.
	@$(PY) -m ipykernel install --sys-prefix --name qatlab --display-name "qatlab (.venv)" >/dev/null
	@$(PY) -c 'import torch, qatlab, workbook' && touch $(STAMP)

# Fashion-MNIST from Debian where apt is available; otherwise the loader uses
# $$QATLAB_DATA or a checksum-verified download into the user's cache.
data:
	@if [ -z "$$QATLAB_DATA" ] && [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	    || echo "warning: apt could not install dataset-fashion-mnist; the loader will download it"; \
	fi

# Headless Chromium for the report rendering test (skipped with a reason where absent).
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package chromium (for the HTML report test)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "warning: apt could not install chromium; the browser test will skip"; \
	fi

run: setup
	$(VENV)/bin/workbook run $(ARGS)

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Jupyter refuses to start as root without --allow-root (containers often run as root).
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

bench: setup
	$(VENV)/bin/workbook bench fakequant

# What benchmarks/gpu_checks.sh needs on a GPU machine that has no network.
gpu-data: data
	@mkdir -p .gpu-data/fashion-mnist
	@cp $${QATLAB_DATA:-$(FMNIST)}/*-ubyte.gz .gpu-data/fashion-mnist/
	@echo "staged .gpu-data/fashion-mnist (copy .gpu-data along with the tree to the GPU machine)"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info lib/*.egg-info
