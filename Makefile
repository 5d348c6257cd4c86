# Two commands matter: `make demo` and `make test`. Both build the virtual
# environment on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-reliability lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,rocksdb,dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/funnel demo

test: $(BIN)/.installed
	TZ=UTC $(BIN)/ruff check schemas sinks streams tests
	TZ=UTC $(BIN)/mypy
	TZ=UTC $(BIN)/pytest tests/unit tests/integration

# The failure-injection tests alone (crash, outage, redelivery, ...); `make test` runs them too.
test-reliability: $(BIN)/.installed
	TZ=UTC $(BIN)/pytest tests/integration -m reliability

# A quick benchmark (about a minute): prints figures, asserts nothing about speed.
# `make bench BENCH_ARGS="--full --json bench.json"` for the full sizes; see BENCHMARKS.md.
bench: $(BIN)/.installed
	$(BIN)/python -m streams.bench $(BENCH_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check schemas sinks streams tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .funnel-data .pytest_cache .mypy_cache .ruff_cache *.egg-info
