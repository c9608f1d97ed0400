#!/usr/bin/env bash
# Download, HERE (where PyPI is reachable), the wheels bench/gpu/run.sh installs on the GPU
# machine (which has no network): the packages emtrait needs beyond the device image, pinned to
# this venv's versions (bench/gpu/wheels.py), as Python 3.12 manylinux x86-64 wheels.
# .whl/ is git-ignored; pass it in the device run's `carry` (64 MiB at most travels).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
"$PY" bench/gpu/wheels.py > .whl/requirements.txt
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl -r .whl/requirements.txt
du -sh .whl
