# Every target sets itself up: a fresh clone needs only Python >= 3.10 with venv and pip.
# `make demo` is the main job on the embedded default; `make test` is the test suite (CI runs it).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.memsweep-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# constraints.txt pins the versions CI tests (torch==2.13.0 above all: see README, "Torch").
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/memsweep demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/score_throughput.py

clean:
	rm -rf $(VENV) results demo-world
