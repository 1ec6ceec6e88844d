# Everything runs from a virtual environment under the repo, created on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: dev test lint bench screenshots compose-check clean

# (Re)install whenever pyproject.toml changes; the client package (client/) goes in too.
$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]' -e ./client
	touch $@

## The whole system in the foreground: web, worker, beat, Redis if needed. Ctrl-C stops it.
dev: $(STAMP)
	$(VENV)/bin/python -m devstack.dev

## The whole test suite.
test: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

## ruff's checks and mypy's, both configured in pyproject.toml; runs both, fails if either finds anything.
lint: $(STAMP)
	@status=0; \
	echo "ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "mypy"; $(VENV)/bin/mypy || status=1; \
	exit $$status

## The benchmarks, with a report of figures in bench/report.md (BENCH_ARGS="connect --quick" picks and shortens).
bench: $(STAMP)
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

## The browser tests, saving their screenshots of the connect pages under docs/ (needs Debian's chromium).
screenshots: $(STAMP)
	SCREENSHOT_DIR=docs $(VENV)/bin/pytest -q tests/integration/test_browser.py

## Validate docker-compose.yml (with placeholder secrets unless they are set).
## Uses docker-compose where it is installed, else the `docker compose` plugin.
compose-check:
	@if command -v docker-compose >/dev/null 2>&1; then compose="docker-compose"; else compose="docker compose"; fi; \
	echo "$$compose config -q"; \
	SECRET_KEY="$${SECRET_KEY:-compose-check-secret-key}" \
	TOKEN_ENCRYPTION_KEYS="$${TOKEN_ENCRYPTION_KEYS:-compose-check-key}" \
	FLOWER_BASIC_AUTH="$${FLOWER_BASIC_AUTH:-compose:check}" \
	$$compose config -q

## Remove generated files, including the dev database and its keys under var/ (the venv stays).
clean:
	rm -rf var build dist .pytest_cache *.egg-info bench/report-*.md
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
