# The two commands of the README:
#   make run   - the service on http://127.0.0.1:8080 with the Firestore and storage emulators
#                (and the offline demo model when no OPENAI_API_KEY/OPENAI_BASE_URL)
#   make test  - installs what the tests need and runs them all
#   make eval  - the eval cases (evals/cases/) over the HTTP API: the local stack with the demo
#                model (or OPENAI_BASE_URL...), or EVAL_URL; exits 1 when the gate fails
#   make bench - the performance benchmark (docs/performance.md); not part of make test
#   make lock  - recompile the hashed locks (requirements*.txt) from the requirements*.in files
# Every install is from a lock with --require-hashes: no package, direct or transitive, is
# installed unless its exact file is the one the lock names.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test eval lint bench clean load-faults lock

PIP_INSTALL := $(BIN)/python -m pip install -q --require-hashes --no-deps

# The venv's own pip installs: upgrading it from the index would run unlocked code.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements.txt
	touch $@

# The local run also needs the storage emulator, which is never deployed.
$(VENV)/.local: requirements.txt requirements-local.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements-local.txt
	touch $@ $(VENV)/.runtime

$(VENV)/.dev: requirements.txt requirements-local.txt requirements-dev.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $@ $(VENV)/.runtime $(VENV)/.local

run: $(VENV)/.local
	$(BIN)/python -m local.run

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The same lock as make run (the local stack and jsonschema); docs/testing.md, "The eval gate".
eval: $(VENV)/.local
	$(BIN)/python -m evals $(EVAL_ARGS)

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

# The locks: every transitive dependency pinned with its hashes, for any platform and
# Python 3.11+ (--universal). uv keeps the versions already in a lock unless a .in file
# asks for others; to move everything to the newest versions, delete the .txt files first.
LOCK := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock"
lock: $(VENV)/.dev
	$(LOCK) requirements.in -o requirements.txt
	$(LOCK) requirements-local.in -o requirements-local.txt
	$(LOCK) requirements-dev.in -o requirements-dev.txt
