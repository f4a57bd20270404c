# Two commands set up a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint checks bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(BIN)/.installed          ## local Prefect server + agent + example flows
	$(BIN)/flow-agent demo

lint: $(BIN)/.installed
	$(BIN)/ruff check agent tests bench

checks: $(BIN)/.installed        ## systemd units, Kubernetes manifests, Dockerfile
	BIN=$(BIN) .ci/checks.sh

test: lint checks                ## + unit and integration tests against a real Prefect server
	$(BIN)/python -m pytest

bench: $(BIN)/.installed         ## flow-agent vs `prefect worker` on one local server
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
