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

# Not part of `make test`: the benchmark suite (docs/performance.md), loopback only, ~10 minutes and at most 15
# (the hub comparison stops starting turns at 300 s, the gateway's at 570 s). Installs the peers, runs both
# comparisons, then benchmarks/report.py writes benchmarks/results/<date>.json (git-ignored), the plots in
# docs/img/ and the generated hub block of docs/performance.md. A failed comparison still gets its report.
# HUB_ARGS: more hub_fanout.py flags, e.g. HUB_ARGS="--wsgate-src /tmp/other-checkout/src".
bench: $(STAMP)
	benchmarks/setup-peers
	@run=$$(date +%Y%m%d-%H%M%S); start=$$(date +%s); status=0; \
	hub=benchmarks/results/hub_fanout-$$run.json; gateway=benchmarks/results/gateway_bench-$$run.json; \
	$(BIN)/python benchmarks/hub_fanout.py --time-limit 300 --wait-quiet 10 --retries 1 --extra-generator wsgate \
	  --json $$hub $(HUB_ARGS) || status=1; \
	$(BIN)/python benchmarks/gateway_bench.py --json $$gateway || status=1; \
	$(BIN)/python benchmarks/report.py --hub $$hub --gateway $$gateway || status=1; \
	echo "make bench: $$(( $$(date +%s) - start )) s"; exit $$status

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
FUZZ_TARGETS ?= hub_message upgrade credential token origin response_head framing static_path interpolation \
                client_frames request_head
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
