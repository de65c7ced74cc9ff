# harvest-async developer tasks. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
DEMO_VENV ?= .venv-demo
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet
BENCH_SCRIPTS := $(sort $(filter-out bench/harness.py,$(wildcard bench/*.py)))

.DEFAULT_GOAL := help
.PHONY: help venv test test-matrix check fmt bench demo clean distclean lock wheelhouse images deploy-test

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: PYTHON=$(PYTHON) (creates the venv), DURATION=<s> (demo)"

venv: $(STAMP) ## create .venv and install the package with its test extra

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# reinstall whenever pyproject.toml changes; the stamp records the last good install
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[test,plot]'
	@touch $@

# TEST_JOBS pytest-xdist workers, each taking whole files (the container tiers share one
# container per file and run in file order); TEST_JOBS=0 runs in this process
TEST_JOBS ?= 3
test: venv check ## lint + type-check, then the whole test suite
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

# the support matrix beyond `make test`: the unit and component tiers on the other Pythons,
# and the lowest allowed dependency versions (noxfile.py; plain `nox` runs the whole matrix)
test-matrix: $(VENV)/.matrix-stamp ## the rest of the matrix: Python 3.12 + 3.13, minimum versions
	$(BIN)/nox -t matrix

$(VENV)/.matrix-stamp: pyproject.toml | $(STAMP)
	$(PIP) install -e '.[matrix]'
	@touch $@

check: venv ## ruff lint, ruff format check, mypy --strict, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict harvest_async
	$(BIN)/lint-imports

fmt: venv ## format the code and apply safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv ## run every bench/*.py script
ifeq ($(BENCH_SCRIPTS),)
	@echo "no bench/*.py scripts yet"
else
	@set -e; for script in $(BENCH_SCRIPTS); do \
		echo "== $$script"; \
		$(BIN)/python $$script; \
	done
endif

# the demo has a venv of its own with only what it needs (runtime, plot, a server binary):
# no test tooling to download and install before the first run
demo: $(DEMO_VENV)/.stamp ## run the demo against a private server (DURATION=seconds to stop early)
	$(DEMO_VENV)/bin/harvest-async demo $(if $(DURATION),--duration $(DURATION))

$(DEMO_VENV)/bin/python:
	$(PYTHON) -m venv $(DEMO_VENV)

$(DEMO_VENV)/.stamp: pyproject.toml | $(DEMO_VENV)/bin/python
	$(DEMO_VENV)/bin/python -m pip --disable-pip-version-check --quiet install -e '.[demo]'
	@touch $@

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
	find . \( -path ./$(VENV) -o -path ./$(DEMO_VENV) \) -prune -o -type d -name __pycache__ -exec rm -rf {} +

# -- deployment: lock, wheelhouse, local images, the container tiers ---------------------------
# The lock pins the runtime dependencies to the versions this venv tests with, with every
# file's hash; the Dockerfile and the systemd install instructions install from it.
lock: venv ## refresh requirements/lock.txt from pyproject.toml (the venv's tested versions)
	$(PIP) install uv
	$(BIN)/python -m pip freeze --exclude-editable > $(VENV)/tested-versions.txt
	$(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
		--generate-hashes --no-annotate --custom-compile-command 'make lock' \
		-c $(VENV)/tested-versions.txt -o requirements/lock.txt

wheelhouse: venv ## the lock's wheels + this project's wheel in ./wheelhouse (the image installs only those)
	PYTHON=$(BIN)/python deploy/wheelhouse.sh

images: ## local base/Redis/Prometheus images from Debian's archive (no registry needed; root)
	deploy/local-images.sh

deploy-test: venv ## only the container tiers: compose stack + the unit under a real systemd
	$(BIN)/python -m pytest -v -p no:cacheprovider tests/deploy

distclean: clean ## clean, and remove .venv, .venv-demo and .nox too
	rm -rf $(VENV) $(DEMO_VENV) .nox
