# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv with the interpreter in $(PYTHON) and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mcp-sidecar demo

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests bench
	$(BIN)/ruff format --check sidecar tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict sidecar bench

unit: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck unit

# Our sidecar pair vs an Envoy pair, side by side (bench/README.md). Needs wrk and curl (Debian):
# installed here when missing and running as root. Options: make bench BENCH_ARGS="--label x".
BENCH_ARGS ?=
bench: $(STAMP)
	@missing=""; for tool in wrk curl; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bench: installing$$missing (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
	  else \
	    echo "bench: missing$$missing; install (Debian/Ubuntu: sudo apt-get install -y$$missing) and retry" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
