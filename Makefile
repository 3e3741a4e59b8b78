# `make run` starts the product; `make test` runs the tests. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Parallel test processes (each starts its own PostgreSQL and Temporal); 2 cores here.
TEST_WORKERS ?= 2

.PHONY: install run test test-unit test-fault lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/journeys dev

test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy .

clean:
	rm -rf $(VENV) .journeys .pytest_cache .mypy_cache .ruff_cache
