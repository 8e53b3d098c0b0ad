# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates and fills .venv on first use (Python 3.11+ is all it needs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime

.PHONY: demo serve test lint bench clean

# The demo and the relay need the package alone; the tests add their tools.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/blindrelay demo

serve: $(RUNTIME)
	$(BIN)/blindrelay serve

test: $(STAMP)
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python .ci/typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
