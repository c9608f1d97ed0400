#!/usr/bin/env bash
# Snakemake runs this inside the freshly created envs/emtrait.yaml environment: install emtrait
# (no dependencies: the environment has them) from the checkout the workflow runs from.
# EMTRAIT_SRC is set by workflow/rules/common.smk to the repository root.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation "${EMTRAIT_SRC:?EMTRAIT_SRC must name the emtrait checkout (workflow/rules/common.smk sets it)}"
