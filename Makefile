# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv with the interpreter in $(PYTHON) and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mcp-sidecar demo

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests
	$(BIN)/ruff format --check sidecar tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict sidecar

unit: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
