# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates and fills .venv on first use (Python 3.11+ is all it needs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime

.PHONY: demo serve test lint bench clean

LOG    := $(VENV)/install.log

# pip's own notes (setuptools' general advice on editable installs, a machine's
# unreachable extra index) go to $(LOG), not the terminal; a failed install
# shows the log's tail and says where the rest is.
define pip_install
	@echo "make: installing $(1) into $(VENV) (pip's output: $(LOG))"
	@$(BIN)/pip install --quiet $(2) >>$(LOG) 2>&1 || { tail -n 20 $(LOG); \
	  echo "make: could not install $(1) into $(VENV); read $(LOG), fix the cause, then run make again"; exit 1; }
endef

# The demo and the relay need the package alone; the tests add their tools.
$(RUNTIME): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "make: could not create $(VENV) with $(PYTHON); install Python 3.11+ with venv, or pass PYTHON=/path/to/python3"; exit 1; }
	$(call pip_install,the latest pip,--upgrade pip)
	$(call pip_install,blindrelay,-e .)
	@touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(call pip_install,the test tools,-e ".[test]")
	@touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/blindrelay demo

serve: $(RUNTIME)
	$(BIN)/blindrelay serve

# Two pytest-xdist workers, one per core of the machines this runs on: most tests wait
# on a relay's writer process starting (~0.25 s of imports each), so the suite took
# 538 s in one process and 294 s in two on the same 2-core machine (2026-12-06).
test: $(STAMP)
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python .ci/typecheck
	$(BIN)/pytest -n 2

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
