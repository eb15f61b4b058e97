# One command each, on a fresh clone, offline: `make test` and `make demo` (and `make docs`, the
# documentation site).
# Both create .venv and install what is missing (torch and torchvision first, then the package
# with every extra), at the exact versions of constraints.txt. System packages (Fashion-MNIST,
# Chromium) are installed with apt-get when we are root and they are missing; without them the
# targets carry on.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV ?= .venv
# make demo DEMO_ARGS="--fast" (CI size) or DEMO_ARGS="--data fashion-mnist --embedder conse"
DEMO_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.discover-installed
DOCS_STAMP := $(VENV)/.discover-docs-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# this machine's pip config lists local package folders that may be absent: hide that noise
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv test test-fast demo system-deps bench lint docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch torchvision $(QUIET)
	$(PIP) install -c constraints.txt -e ".[dev]" $(QUIET)
	@touch $@

# Best effort: Debian's Fashion-MNIST (real-image data) and Chromium (report browser tests).
system-deps:
	@./scripts/system-deps.sh

test: venv system-deps
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

# the main job: train, dissect and explain a CVN and its dense twin, write runs/demo/report
demo: venv system-deps
	$(BIN)/discover demo $(DEMO_ARGS)

bench: venv
	$(BIN)/python benchmarks/lwta_speed.py

lint: venv
	$(BIN)/ruff check src tests benchmarks

# The documentation site (docs/, mkdocs.yml) into site/: MkDocs with the Material theme and an
# API reference from the docstrings (mkdocstrings). Offline: no web fonts, no external
# inventories, no plugin that fetches; --strict fails the build on any warning. The docs extra
# is installed into .venv when missing (not part of [dev], which make test installs).
$(DOCS_STAMP): $(STAMP)
	$(PIP) install -c constraints.txt -e ".[docs]" $(QUIET)
	@touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache build site src/*.egg-info
