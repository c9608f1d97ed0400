"""A tiny end-to-end workflow in a temporary folder, for the SLURM and incremental tests.

`make_workdir` builds two tiny random models (tests/tiny.py), writes tests/configs/tiny.yaml with
their folders as sources, and copies the `emtrait` package into the folder: every Snakemake run
gets PYTHONPATH pointing at that copy, so a test can edit "the plotting code" without touching
the repository (rules name code files through `emtrait_source`, resolved from the imported
package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
TINY_CONFIG = TESTS / "configs" / "tiny.yaml"
CLUSTER = TESTS / "slurm" / "cluster.sh"
SLURM_PROFILE = TESTS / "slurm" / "profile"
ARCHS = {"tiny_a": "llama", "tiny_b": "qwen2"}


class WorkflowFailed(RuntimeError):
    """A Snakemake run ended with an error (not an assertion of the test about its result)."""


@dataclass
class Workdir:
    """A workflow folder: config, tiny models, a private copy of the emtrait package."""

    root: Path
    config: dict = field(default_factory=dict)

    @property
    def configfile(self) -> Path:
        return self.root / "config.yaml"

    @property
    def src(self) -> Path:
        return self.root / "src"

    def write_config(self, config: dict, name: str = "config.yaml") -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def env(self) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "PYTHONPATH": str(self.src), "PYTHONUNBUFFERED": "1"}

    def command(self, *args: str, configfile: Path | None = None) -> list[str]:
        """The snakemake command line. `args` come first: an option taking several values
        (--configfile, --set-resources) would swallow a target written after it."""
        return [sys.executable, "-m", "snakemake", *args, "--snakefile", str(SNAKEFILE),
                "--directory", str(self.root), "--configfile", str(configfile or self.configfile)]

    def snakemake(self, *args: str, configfile: Path | None = None, check: bool = True,
                  timeout: int = 900) -> Run:
        """`snakemake` on the repo's Snakefile in this folder; output captured."""
        t0 = time.perf_counter()
        proc = subprocess.run(self.command(*args, configfile=configfile), capture_output=True,
                              text=True, timeout=timeout, env=self.env(), cwd=self.root)
        run = Run(proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0)
        if check and proc.returncode != 0:
            raise WorkflowFailed(f"snakemake {' '.join(args)} failed "
                                 f"(exit {proc.returncode}):\n{run.output[-6000:]}")
        return run


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    def jobs(self) -> list[tuple[str, dict[str, str]]]:
        """(rule, wildcards) of every job a (dry) run lists, in order."""
        return planned(self.output)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rule, _ in self.jobs():
            counts[rule] = counts.get(rule, 0) + 1
        return counts


_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


def planned(output: str) -> list[tuple[str, dict[str, str]]]:
    """Parse the job blocks of Snakemake's output ('rule X:' + its 'wildcards:' line).

    Group jobs print their members as ordinary blocks, so this lists every job once.
    """
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        m = _JOB.match(line.strip())
        if m:
            jobs.append((m.group(1), {}))
            continue
        m = _WILDCARDS.match(line)
        if m and jobs and not jobs[-1][1]:
            jobs[-1] = (jobs[-1][0], dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return jobs


def make_workdir(root: Path, models: tuple[str, ...] = ("tiny_a", "tiny_b")) -> Workdir:
    """A fresh folder with the tiny config (only `models`), tiny models and an emtrait copy."""
    sys.path.insert(0, str(TESTS))
    from tiny import build_tiny_model

    root.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["models"] = {name: config["models"][name] for name in models}
    for name, entry in config["models"].items():
        entry["source"] = str(build_tiny_model(root / "models" / name, ARCHS[name], 4))
    import emtrait

    shutil.copytree(Path(emtrait.__file__).parent, root / "src" / "emtrait",
                    ignore=shutil.ignore_patterns("__pycache__"))
    work = Workdir(root, config)
    work.write_config(config)
    return work


_SHARED: dict[str, Workdir] = {}


def local_cubes(tmp_path_factory) -> Workdir:
    """Both tiny models run locally up to their cubes, once per test session (the incremental
    tests continue it to the end, the SLURM test compares its cube with this one)."""
    if "local" not in _SHARED:
        work = make_workdir(tmp_path_factory.mktemp("tiny-local"))
        work.snakemake("--cores", "2", *(f"results/cube/{m}.zarr" for m in work.config["models"]))
        _SHARED["local"] = work
    return _SHARED["local"]


def cluster_status() -> tuple[bool, str]:
    """Whether the local test cluster (tests/slurm/cluster.sh) answers, and why not."""
    if shutil.which("sbatch") is None:
        return False, "SLURM is not installed (tests/slurm/install.sh)"
    proc = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True, text=True,
                          timeout=60)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
