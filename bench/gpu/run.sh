#!/usr/bin/env bash
# The device script of issue 16: emtrait on one GPU, measured, in under 8 minutes.
#
#   bench/gpu/run.sh [--dry-run] [more bench_gpu.py options]
#
# Installs what the GPU machine lacks from carried wheels (.whl/, made by bench/gpu/wheels.sh;
# nothing is fetched there), puts this checkout on PYTHONPATH with an `emtrait` command for
# Snakemake's rules, and runs bench/gpu/bench_gpu.py. Results (results.json, results.md and the
# log) go to $OUT (the device tool's output folder), else bench/gpu/out/.
# --dry-run runs every part on CPU with tiny models (a few minutes on a free machine; the
# Snakemake part starts ~14 jobs). Results are saved after every part, so a run stopped at the
# limit keeps what it measured; the rest can follow in a second call, e.g.
#   bench/gpu/run.sh --parts workflow,measure --models smollm2
# Device call (carry .whl, made here by bench/gpu/wheels.sh):
#   run(command="bench/gpu/run.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/bench/gpu/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=${EMTRAIT_SITE:-/tmp/emtrait-site}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || { echo "installing the carried wheels failed"; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the rules call `emtrait` by name: a shim running this checkout with this interpreter
BIN=$(mktemp -d)
printf '#!/bin/sh\nexec "%s" -c "from emtrait.cli import main; main()" "$@"\n' "$(command -v "$PY")" \
  > "$BIN/emtrait"
chmod +x "$BIN/emtrait"
export PATH="$BIN:$(dirname "$(command -v "$PY")"):$PATH"
"$PY" - <<'PY'
import importlib.util
missing = [m for m in ("torch", "transformers", "peft", "pydantic", "zarr", "xarray", "typer",
                       "snakemake", "vllm") if importlib.util.find_spec(m) is None]
print("missing python packages:", missing or "none")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# 470 s for the benchmark leaves the install and the copy-back inside 8 minutes
timeout "${BENCH_TIMEOUT:-470}" "$PY" bench/gpu/bench_gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
echo "bench_gpu.py exit $rc (124 = stopped at the time limit; results.json holds the parts done)"
exit "$rc"
