# The README's two commands:  `make run` (the embedded default, end to end) and `make test`.
# Both create .venv on first use: the CPU torch pin first (an unpinned torch pulls CUDA builds),
# then emtrait with its dev and SLURM extras.
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: install run test slurm-up slurm-down clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,slurm]"
	touch $@

# Rules call `emtrait` by name: the venv's bin/ goes first on PATH.
run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

# The one-node SLURM cluster the SLURM tests run on (root; Debian packages). Without it those
# tests skip and say why.
slurm-up:
	bash tests/slurm/install.sh
	bash tests/slurm/cluster.sh start

slurm-down:
	bash tests/slurm/cluster.sh stop

clean:
	rm -rf results resources logs .snakemake
