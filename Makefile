# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv with the interpreter in $(PYTHON) and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit clean bench lock

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
	$(BIN)/mypy --strict sidecar bench tests

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

# Re-pin requirements/*.lock from pyproject.toml (requirements/README.md): resolved for Python 3.11
# on Linux, with the hashes of every file of each pinned release (so the image builds on x86_64
# and aarch64). Local pip configuration (mirrors, wheel directories) is ignored on purpose.
LOCK = env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
lock: $(STAMP)
	$(LOCK) --output-file requirements/runtime.lock pyproject.toml
	$(LOCK) --extra demo --constraint requirements/runtime.lock --output-file requirements/demo.lock pyproject.toml
	$(LOCK) --extra tracing --constraint requirements/runtime.lock --output-file requirements/tracing.lock pyproject.toml
	$(LOCK) --allow-unsafe --output-file requirements/build.lock requirements/build.in

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
