"""How long `snakemake -n` takes to plan config/paper.yaml (the paper grid + its stress suite).

    python bench/bench_plan.py [--repeats 3] [--against OTHER_CHECKOUT]

Plans in a scratch work folder holding one-row stand-ins for the user-provided files (as the
plan test does), and prints the job count and wall/CPU seconds of each repeat. The goal is
under 30 s on 2 cores; the machine's load is printed beside it, since shared machines vary 2-4x.
With --against (another checkout, e.g. `git worktree add /tmp/before HEAD~1`), the two plan
alternately in the same run, each with its own Snakefile and config/paper.yaml, and the ratio
of their median wall times is printed: the number to compare across machines.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import paper_workdir, planned_jobs  # noqa: E402


def plan_once(checkout: Path, work: Path) -> tuple[int, float, float]:
    """(jobs planned, wall s, CPU s) of one `snakemake -n` of checkout's paper grid."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile",
           str(checkout / "workflow" / "Snakefile"), "--directory", str(work), "--configfile",
           str(checkout / "config" / "paper.yaml")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{checkout}: planning failed\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return sum(planned_jobs(proc.stdout).values()), wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--against", type=Path, default=None,
                    help="another checkout of emtrait to plan alternately with this one")
    args = ap.parse_args()
    if args.against is not None and not (args.against / "workflow" / "Snakefile").is_file():
        sys.exit(f"--against {args.against}: no workflow/Snakefile there; give a checkout "
                 "(e.g. `git worktree add /tmp/before HEAD~1`)")
    checkouts = {"this": REPO} if args.against is None else {"against": args.against,
                                                             "this": REPO}
    walls: dict[str, list[float]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        work = paper_workdir(Path(tmp))
        for i in range(args.repeats):
            for name, checkout in checkouts.items():
                jobs, wall, cpu = plan_once(checkout, work)
                walls[name].append(wall)
                print(f"repeat {i + 1} [{name}: {checkout}]: {jobs} jobs planned in {wall:.1f} s "
                      f"wall, {cpu:.1f} s CPU (load average {os.getloadavg()[0]:.1f})")
    if args.against is not None:
        this, against = (statistics.median(walls[n]) for n in ("this", "against"))
        print(f"median wall: this {this:.1f} s, against {against:.1f} s; "
              f"ratio this/against {this / against:.2f}")


if __name__ == "__main__":
    main()
