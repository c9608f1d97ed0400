"""A tiny end-to-end workflow in a temporary folder, for the SLURM and incremental tests.

`make_workdir` builds two tiny random models (tests/tiny.py), writes tests/configs/tiny.yaml with
their folders as sources, and copies the `emtrait` package into the folder: every Snakemake run
gets PYTHONPATH pointing at that copy, so a test can edit "the plotting code" without touching
the repository (rules name code files through `emtrait_source`, resolved from the imported
package).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from helpers import TESTS, Run, snakemake, snakemake_command, snakemake_env
from tiny import build_tiny_model

TINY_CONFIG = TESTS / "configs" / "tiny.yaml"
CLUSTER = TESTS / "slurm" / "cluster.sh"
SLURM_PROFILE = TESTS / "slurm" / "profile"
ARCHS = {"tiny_a": "llama", "tiny_b": "qwen2"}


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
        return snakemake_env(extra_pythonpath=self.src)

    def command(self, *args: str, configfile: Path | None = None) -> list[str]:
        """The snakemake command line of this folder (for a run started in the background)."""
        return snakemake_command(self.root, *args, configfile=configfile or self.configfile)

    def snakemake(self, *args: str, configfile: Path | None = None, check: bool = True,
                  timeout: int = 900) -> Run:
        """`snakemake` on the repo's Snakefile in this folder (tests/helpers.py's runner)."""
        return snakemake(self.root, *args, configfile=configfile or self.configfile,
                         env=self.env(), check=check, timeout=timeout)


def make_workdir(root: Path, models: tuple[str, ...] = ("tiny_a", "tiny_b")) -> Workdir:
    """A fresh folder with the tiny config (only `models`), tiny models and an emtrait copy."""
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
