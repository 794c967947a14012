# `make run` and `make test` each work alone on a fresh clone: they create
# .venv and (re)install into it when pyproject.toml is newer than the install.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/cpn up nodes

lint: $(STAMP)
	$(BIN)/ruff check network tests bench
	$(BIN)/ruff format --check network tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/envelope.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/network_sim.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/faults.py --runs 300

clean:
	rm -rf $(VENV) var build *.egg-info
