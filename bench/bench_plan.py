"""How long `snakemake -n` takes to plan config/paper.yaml (the paper grid + its stress suite).

    python bench/bench_plan.py [--repeats 3]

Plans in a scratch work folder holding one-row stand-ins for the user-provided files (as the
plan test does), and prints the job count and wall/CPU seconds of each repeat. The goal is
under 30 s on 2 cores; the machine's load is printed beside it, since shared machines vary 2-4x.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import paper_workdir, planned_jobs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = paper_workdir(Path(tmp))
        cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile",
               str(REPO / "workflow" / "Snakefile"), "--directory", str(work), "--configfile",
               str(REPO / "config" / "paper.yaml")]
        for i in range(args.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
            jobs = planned_jobs(proc.stdout)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"repeat {i + 1}: {sum(jobs.values())} jobs planned in {wall:.1f} s wall, "
                  f"{cpu:.1f} s CPU (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
