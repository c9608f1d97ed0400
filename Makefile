# The README's two commands:  `make run` (the embedded default, end to end) and `make test`.
# Both create .venv on first use: the CPU torch pin first (an unpinned torch pulls CUDA builds),
# then emtrait with its SLURM extra; `make test` adds the dev and SAELens (`sae`) extras.
# Python: the first of python3.11 / 3.12 / 3.13 / python3 found (tested: 3.11); override with
# `make run PYTHON=/path/to/python3.12`.
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	command -v $$p >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: install install-test run test test-fast slurm-up slurm-down clean

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "no python3 found; pass PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "$(PYTHON) is older than 3.11 (snakemake 9 needs >= 3.11); pass PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[slurm]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev,slurm,sae]"
	touch $@

# Rules call `emtrait` by name: the venv's bin/ goes first on PATH.
run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: install-test
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

# The fast tier for the edit loop (under 90 s on 2 cores): everything not marked slow.
test-fast: install-test
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -m "not slow"

# The one-node SLURM cluster the SLURM tests run on (root; Debian packages). Without it those
# tests skip and say why.
slurm-up:
	bash tests/slurm/install.sh
	bash tests/slurm/cluster.sh start

slurm-down:
	bash tests/slurm/cluster.sh stop

clean:
	rm -rf results resources logs .snakemake
