# The two commands of the README:
#   make run   - the service on http://127.0.0.1:8080 with the Firestore and storage emulators
#                (and the offline demo model when no OPENAI_API_KEY/OPENAI_BASE_URL)
#   make test  - installs what the tests need and runs them all
#   make bench - the performance benchmark (docs/performance.md); not part of make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean load-faults

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

# The local run also needs the storage emulator, which is never deployed.
$(VENV)/.local: requirements.txt requirements-local.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-local.txt
	touch $@ $(VENV)/.runtime

$(VENV)/.dev: requirements.txt requirements-local.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime $(VENV)/.local

run: $(VENV)/.local
	$(BIN)/python -m local.run

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# The load-and-fault run (loopback only, about 90 s): docs/performance.md.
load-faults: $(VENV)/.dev
	$(BIN)/python -m bench.load_faults
