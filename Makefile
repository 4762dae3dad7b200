# `make run` and `make test` create .venv if missing and install bioplaus into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bioplaus-installed
ARGS ?=

.PHONY: install run test test-slow lint bench-fmnist clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/bioplaus run learner=forward_forward $(ARGS)

# the suite runs on every core (pytest-xdist); each test and each run it starts uses one thread
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m slow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench-fmnist: $(STAMP)
	$(BIN)/python benchmarks/fmnist_mlp.py $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
