# The README's two commands:  `make run` (the embedded default, end to end) and `make test`.
# Both create .venv on first use: the CPU torch pin first (an unpinned torch pulls CUDA builds),
# then emtrait with its dev and SLURM extras.
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: install run test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,slurm]"
	touch $@

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

clean:
	rm -rf results resources logs .snakemake
