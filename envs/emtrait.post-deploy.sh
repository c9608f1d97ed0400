#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created envs/emtrait.yaml environment (--sdm conda).
#
# It installs emtrait, editable, from the checkout whose Snakefile schedules the jobs (EMTRAIT_SRC,
# set by workflow/rules/common.smk), so rules run that checkout's code, as on the venv path (make
# installs with -e too): a `git pull` reaches the jobs without rebuilding the environment, and a
# dependency change rebuilds it (it changes envs/emtrait.yaml, and with it the environment's hash).
#
# No package index: every dependency must already be in the environment (envs/emtrait.yaml is
# generated from pyproject.toml by envs/envfile.py), so pip only checks that they are there, with
# the bounds pyproject.toml gives. A missing or out-of-range one fails here, naming it, not at the
# first job's import; and no PyPI wheel replaces a conda package (conda-forge's CUDA pytorch).
# No build isolation: the environment has the build requirements (setuptools, wheel).
set -euo pipefail
src="${EMTRAIT_SRC:?EMTRAIT_SRC must name the emtrait checkout (workflow/rules/common.smk sets it)}"
python -m pip install --no-index --no-build-isolation --disable-pip-version-check --editable "$src"
emtrait --help > /dev/null  # the entry point imports (typer, rich, the package) in this environment
