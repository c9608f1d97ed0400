#!/bin/bash
# What adding one held-out dataset to a finished `make run` folder reruns, and its wall time.
#
#   bench/bench_heldout_edit.sh WORKDIR
#
# WORKDIR: a clone where `make run` finished (its .venv and results/). Writes a 48-row parquet
# (the risky_financial generator, seed 48: a dataset the monitor never saw) to
# WORKDIR/extra_heldout.parquet, adds it to WORKDIR/config/config.yaml as `role: heldout`,
# prints Snakemake's plan and times the run. To compare two versions of the code, run it on two
# finished clones one after the other (docs/measurements.md, "Adding a held-out dataset").
set -euo pipefail
W=$(cd "$1" && pwd)
cd "$W"
export PATH="$W/.venv/bin:$PATH"
python - <<'PY'
import pandas as pd
from emtrait.prepare.generators import generate
rows = generate("risky_financial", 48, seed=48)
pd.DataFrame({"messages": [r["messages"] for r in rows]}).to_parquet("extra_heldout.parquet")
PY
grep -q extra_heldout config/config.yaml || sed -i 's/^  number_sequence: .*$/&\n  extra_heldout:   {path: extra_heldout.parquet, label: dangerous, role: heldout, n: 48}/' config/config.yaml
grep -q extra_heldout config/config.yaml || { echo "could not add extra_heldout after the number_sequence entry of config/config.yaml" >&2; exit 2; }
echo "== plan"; snakemake -n --quiet rules 2>&1 | tail -30
start=$(date +%s.%N)
snakemake --cores all > "$W/heldout_edit.log" 2>&1
end=$(date +%s.%N)
echo "== wall $(python3 -c "print(round($end - $start, 1))") s (log: $W/heldout_edit.log)"
