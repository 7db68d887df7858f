# The two commands of the README: `make dev` runs the system, `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Libraries WeasyPrint loads at run time (PDF certificates); harfbuzz-subset makes font
# subsetting about 30 times faster.
# Chromium: the real browser the browser tests drive through Playwright (tests/browser.py).
SYSTEM_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 chromium
# Node runs the reference eddsa-rdfc-2022 verifier the credential tests check our signer against.
# Checked by command, not by package: NodeSource's nodejs package ships npm and conflicts with Debian's.
# promtool (Debian's prometheus package) checks the Prometheus configuration and unit-tests the alert rules.
SYSTEM_COMMANDS := node:nodejs npm:npm promtool:prometheus

# A real learning record store (Ralph, file system backend) for the xAPI tests. Its own
# virtualenv: its `lrs` extra pins fastapi and uvicorn versions that conflict with ours.
# `requests` is listed because Ralph's server imports it without declaring it.
LRS_VENV := .venv-lrs
LRS_STAMP := $(LRS_VENV)/.installed
LRS_PACKAGES := 'ralph-malph[cli,lrs]==5.1.0' 'requests>=2.31'

# The reference verifier's npm packages, pinned by its package-lock.json.
REFERENCE_VERIFIER := tests/reference_verifier
REFERENCE_STAMP := $(REFERENCE_VERIFIER)/node_modules/.installed

.PHONY: dev test lint bench clean system-deps lrs sample-video

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

$(REFERENCE_STAMP): $(REFERENCE_VERIFIER)/package-lock.json $(REFERENCE_VERIFIER)/package.json
	@command -v npm >/dev/null || { echo "npm is missing: run make system-deps (or install Node.js 18+)"; exit 1; }
	npm ci --prefix $(REFERENCE_VERIFIER) --no-audit --no-fund
	@touch $(REFERENCE_STAMP)

$(LRS_STAMP): Makefile
	$(PYTHON) -m venv $(LRS_VENV)
	$(LRS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LRS_VENV)/bin/python -m pip install -q $(LRS_PACKAGES)
	@touch $(LRS_STAMP)

lrs: $(LRS_STAMP)

dev: $(STAMP)
	$(VENV)/bin/lessonstream dev

# Three test processes (pytest-xdist) on two cores: most suites wait on brokers, consumer
# groups and other processes as much as they compute (two processes left the cores about a
# third idle). The fault suite keeps its one stack on one of them, the end-to-end modules
# theirs on one (xdist_group).
test: $(STAMP) $(REFERENCE_STAMP) $(LRS_STAMP)
	$(VENV)/bin/python -m pytest -n 3 --dist loadgroup --durations=15 $(PYTEST_ARGS)

# The web app's sample video (web/media/sample.webm, committed: the app needs no ffmpeg to run),
# written again with the ffmpeg of the imageio-ffmpeg wheel.
sample-video: $(STAMP)
	$(VENV)/bin/lessonstream sample-video --out web/media/sample.webm

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services lessonstream tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(LRS_VENV) var .pytest_cache .mypy_cache .ruff_cache $(REFERENCE_VERIFIER)/node_modules

# Debian/Ubuntu: installs the system packages above if missing (needs root).
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done; \
		for c in $(SYSTEM_COMMANDS); do command -v $${c%%:*} >/dev/null || echo $${c#*:}; done); \
	if [ -z "$$missing" ]; then echo "system packages present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "please install: $$missing"; fi
