# Everything a fresh machine needs: `make demo` runs the demo, `make test` runs the tests
# (`make test-slow` the ones marked slow); `make cluster-demo` runs the demo split over
# three node processes on a local NATS server; `make docs` builds the documentation into
# docs/_build/html (warnings are errors).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo cluster-demo test test-slow lint bench docs install

$(BIN)/troupe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,bench,docs]"
	touch $(BIN)/troupe

install: $(BIN)/troupe

demo: install
	$(BIN)/troupe run examples/pipeline.py

cluster-demo: install
	$(BIN)/python examples/cluster/run.py

# pytest exits 5 when it collects nothing: that is a failure, said plainly.
test: install
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

# The tests marked slow (long stretches of real time: the cluster chaos suite), which
# `make test` leaves out; one at a time (-n 0), as they load the machine themselves.
test-slow: install
	@$(BIN)/python -m pytest -m slow -n 0; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no slow tests" >&2; fi; exit $$rc

lint: install
	$(BIN)/ruff check runtime actors tests examples benchmarks
	$(BIN)/ruff format --check runtime actors tests examples benchmarks
	$(BIN)/mypy runtime actors
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m benchmarks

docs: install
	$(BIN)/python -m sphinx -b html -E -W --keep-going -q docs docs/_build/html
