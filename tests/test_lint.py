"""Static checks that are part of the test command: ruff, `snakemake --lint` and snakefmt."""

from __future__ import annotations

import shutil
import subprocess
import sys

from helpers import REPO, snakemake


def test_ruff_clean():
    ruff = shutil.which("ruff") or f"{sys.prefix}/bin/ruff"
    proc = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_lint_clean():
    run = snakemake(REPO, "--lint", check=False, timeout=300)
    assert run.returncode == 0, run.output


def test_snakefmt_clean():
    """The Snakefile and rules files are in snakefmt's style (pyproject [tool.snakefmt]: ruff's
    line length). Fix with `snakefmt workflow/`."""
    snakefmt = shutil.which("snakefmt") or f"{sys.prefix}/bin/snakefmt"
    proc = subprocess.run([snakefmt, "--check", "--diff", str(REPO / "workflow")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
