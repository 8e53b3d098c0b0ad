# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates and fills .venv on first use (Python 3.11+ is all it needs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/blindrelay demo

serve: $(STAMP)
	$(BIN)/blindrelay serve

test: $(STAMP)
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python .ci/typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
