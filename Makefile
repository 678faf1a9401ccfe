# Set-up on a fresh machine: `make train` and `make test` install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

FLOORS_VENV ?= .venv-floors
# pytest-xdist processes for the suite, one torch thread each (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: install browser train test test-fast test-floors lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

browser:  ## Debian's chromium + chromium-driver for the served page's browser test (root; CI runs it)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null)

train: install  ## train lite0 on the bundled sample; extra overrides: make train ARGS="aug=randaug"
	$(PY) -m bloodcells.train trainer.enable_progress_bar=false $(ARGS)

test: install  ## the whole suite, slow tests included
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

test-fast: install  ## inner loop: skips the tests that train for several epochs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-floors:  ## the fast tests on the lowest versions pyproject.toml declares (.ci/floors.txt)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c .ci/floors.txt -e '.[dev]'
	$(FLOORS_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" -p no:cacheprovider

lint: install
	$(PY) -m ruff check bloodcells hydra_plugins tests bench
	$(PY) -m ruff format --check bloodcells hydra_plugins tests bench

clean:
	rm -rf outputs/*/ .pytest_cache
