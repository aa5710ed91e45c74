# The two commands a new user needs: `make up` and `make test`. Both build .venv on first use.
PYTHON ?= python3
ARGS   ?=         # e.g. make up ARGS="--host 192.168.1.20 --port 8080"
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: up test bench clean

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
	scripts/conformance

bench: $(STAMP)
	benchmarks/setup-peers
	$(BIN)/python benchmarks/hub_fanout.py
	$(BIN)/python benchmarks/gateway_bench.py

# Not part of `make test`: 10,000 kiosks through the gateway for 10 minutes, pings and a publish a second;
# RSS and fds must stay flat, nothing missed (benchmarks/soak.py; e.g. make soak ARGS="--minutes 2").
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py $(ARGS)

# All 517 Autobahn|Testsuite cases against the hub's echo endpoint and through the gateway (docs/reliability.md);
# `make test` runs the quick subset. Builds .venv-autobahn (Python 2.7) on first use.
.PHONY: conformance
conformance: $(STAMP)
	scripts/conformance --full

# Coverage-guided fuzzing (atheris/libFuzzer) of the parsers of untrusted bytes (tests/fuzz/fuzz_wsgate.py); not
# part of `make test`. FUZZ_TIME seconds per target; corpora and any crash-* inputs land in build/fuzz/TARGET/.
FUZZ_TIME    ?= 30
FUZZ_TARGETS ?= hub_message upgrade credential token origin response_head framing static_path interpolation
.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet atheris
	for target in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/$$target/corpus && cd build/fuzz/$$target && \
	  $(CURDIR)/$(BIN)/python $(CURDIR)/tests/fuzz/fuzz_wsgate.py $$target -max_total_time=$(FUZZ_TIME) corpus \
	    || exit 1; \
	  cd $(CURDIR); \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
