"""Static checks that are part of the test command: ruff and `snakemake --lint`."""

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
