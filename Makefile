# The two commands a new user needs: `make up` and `make test`. Both build .venv on first use.
PYTHON ?= python3
ARGS   ?=         # e.g. make up ARGS="--host 192.168.1.20 --port 8080"
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: up test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "wsgate needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/wsgate up $(ARGS)

test: $(STAMP)
	scripts/ensure-system-deps chromium:chromium node:nodejs npm:npm
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy --strict src
	$(BIN)/pytest

bench: $(STAMP)
	benchmarks/setup-peers
	$(BIN)/python benchmarks/hub_fanout.py
	$(BIN)/python benchmarks/gateway_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
