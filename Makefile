# Two commands set up a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint checks bench bench-multi bench-cloud clean

PIP := $(BIN)/pip install --disable-pip-version-check --progress-bar on

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs the agent and a Prefect server only; the tests need every cloud SDK too.
# Separate stamps: `make demo` on a fresh machine never waits for the test extras.
$(BIN)/.installed-server: pyproject.toml | $(BIN)/python
	@echo "Installing flow-agent[server] (prefect==3.8.8) into $(VENV): first run only, about a minute"
	$(PIP) -e '.[server]'
	touch $@

$(BIN)/.installed: pyproject.toml | $(BIN)/python
	@echo "Installing flow-agent[test] (Prefect, every cloud SDK, test tools) into $(VENV): first run only"
	$(PIP) -e '.[test]'
	touch $@

demo: $(BIN)/.installed-server   ## local Prefect server + agent + example flows
	$(BIN)/flow-agent demo

lint: $(BIN)/.installed
	$(BIN)/ruff check agent tests bench

checks: $(BIN)/.installed        ## systemd units, Kubernetes manifests, Dockerfile
	BIN=$(BIN) .ci/checks.sh

test: lint checks                ## + unit and integration tests against a real Prefect server
	$(BIN)/python -m pytest

bench: $(BIN)/.installed         ## flow-agent vs `prefect worker` on one local server
	$(BIN)/python bench/run.py

bench-multi: $(BIN)/.installed   ## 1 vs 4 agents on one pool, SQLite and PostgreSQL, against the server's ceiling
	$(BIN)/python bench/multi_agent.py

bench-cloud: $(BIN)/.installed   ## 1,000 runs on ECS (moto, 20% throttled), Kubernetes and Cloud Run (the test fakes)
	$(BIN)/python bench/cloud_scale.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
