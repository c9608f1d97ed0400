"""Write envs/emtrait.yaml from pyproject.toml, or check that the two agree.

pyproject.toml is the one list of emtrait's dependencies. The conda environment that every rule
names (`conda:`, used with `snakemake --sdm conda`) is derived from it here, so adding or bumping
a dependency in pyproject.toml cannot leave the environment behind:

- every `[project] dependencies` entry, with the same bounds, under its conda name (CONDA_NAMES);
- the `[build-system] requires` (emtrait.post-deploy.sh builds emtrait without build isolation);
- each optional extra in or out by a written decision (EXTRAS); a new extra without one is an
  error.

    python envs/envfile.py            # rewrite envs/emtrait.yaml
    python envs/envfile.py --check    # exit 1, naming each package that differs (the test's check)
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from emtrait.atomic import write_text
from emtrait.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
ENV_FILE = ROOT / "envs" / "emtrait.yaml"

PYTHON = "3.11"  # the version the project is tested with (README); requires-python must admit it
# conda-forge first; bioconda for Snakemake and its interface packages (what Snakemake's own docs
# use); nodefaults keeps Anaconda's `defaults` channel out.
CHANNELS = ["conda-forge", "bioconda", "nodefaults"]
# PyPI name -> conda package, where they differ (names checked against the conda-forge feedstocks
# and bioconda recipes; every other dependency has a conda-forge package of the same name).
CONDA_NAMES = {
    "torch": "pytorch",  # conda-forge/pytorch-cpu-feedstock builds `pytorch` (CPU and CUDA)
    "matplotlib": "matplotlib-base",  # `matplotlib` adds the Qt GUI backends; jobs are headless
    "snakemake": "snakemake-minimal",  # bioconda; `snakemake` adds remote-storage/report extras
}
# Optional extras: True = in the environment, or the reason it is left out (written into the
# environment file's header, and the README's SLURM section says which path needs them).
EXTRAS: dict[str, bool | str] = {
    "dev": "test tools (pytest, ruff); no rule runs them",
    "slurm": "the executor plugin runs in the Snakemake that submits the jobs, not in a job",
    "sae": "SAELens is not on conda-forge and pulls a large PyPI-only tree; a config naming a "
           "pretrained SAE (models.<name>.sae) needs the prepared-venv path",
    "vllm": "CUDA-only, built against its own torch; behavior.engine: vllm needs the "
            "prepared-venv path",
}
HEADER = """\
# GENERATED from pyproject.toml by envs/envfile.py: do not edit. Change pyproject.toml (or the
# conda names / extras decisions in envs/envfile.py), then run `python envs/envfile.py`;
# tests/test_envs.py fails, naming the package, while the two disagree.
#
# The conda environment of every emtrait rule (`conda:`), used with `--sdm conda` only. It holds
# every runtime and build dependency of emtrait as conda packages and has no `pip:` section: all
# of them exist on conda-forge or bioconda, and pip beside conda could let a PyPI build replace
# conda-forge's (CUDA) pytorch. emtrait itself is installed, editable, by emtrait.post-deploy.sh
# from the checkout that schedules the jobs.
"""
_ORDER = {">=": 0, ">": 1, "<": 2, "<=": 3, "==": 4, "!=": 5}  # lower bounds first, as written


class EnvFileError(ConfigError):
    """pyproject.toml holds something this generator cannot express in a conda environment."""


def conda_spec(req: Requirement) -> str:
    """`name>=a,<b` for conda: the conda name and the same bounds (conda's own spec syntax)."""
    where = f"{PYPROJECT.name}: {req}"
    if req.marker is not None or req.extras or req.url:
        raise EnvFileError(f"{where}: markers, extras and URLs have no conda equivalent; write a "
                           "plain name with version bounds, or handle it in envs/envfile.py")
    bad = [s for s in req.specifier if s.operator not in _ORDER]
    if bad:
        raise EnvFileError(f"{where}: operator {bad[0].operator!r} is not written the same way "
                           f"for conda; use {', '.join(_ORDER)}")
    specs = sorted(req.specifier, key=lambda s: (_ORDER[s.operator], s.version))
    name = CONDA_NAMES.get(canonicalize_name(req.name), canonicalize_name(req.name))
    return name + ",".join(f"{s.operator}{s.version}" for s in specs)


def expected(pyproject: Path = PYPROJECT) -> tuple[list[str], list[str]]:
    """(dependency lines of the environment, header comment lines), from pyproject.toml."""
    meta = tomllib.loads(pyproject.read_text())
    project = meta["project"]
    if not SpecifierSet(project.get("requires-python", "")).contains(PYTHON):
        raise EnvFileError(f"{pyproject.name}: requires-python {project['requires-python']!r} "
                           f"excludes python {PYTHON}, the environment's (PYTHON in envfile.py)")
    extras = project.get("optional-dependencies", {})
    undecided = sorted(set(extras) - set(EXTRAS))
    if undecided:
        raise EnvFileError(f"{pyproject.name}: extra(s) {undecided} have no entry in EXTRAS in "
                           "envs/envfile.py: decide True (in the environment) or the reason it "
                           "is left out")
    deps = [f"python={PYTHON}", "pip"]
    deps += [conda_spec(Requirement(r)) for r in meta["build-system"]["requires"]]
    deps += [conda_spec(Requirement(r)) for r in project["dependencies"]]
    deps += [conda_spec(Requirement(r)) for name in extras if EXTRAS.get(name) is True
             for r in extras[name]]
    notes = [line for name, why in EXTRAS.items() if name in extras and why is not True
             for line in textwrap.wrap(f"{name}: {why}", 90, initial_indent="#   ",
                                       subsequent_indent="#     ")]
    return deps, notes


def render(deps: list[str], notes: list[str]) -> str:
    """The environment file's text: a header saying where it comes from, then the YAML (plain
    scalars only, so written by hand to keep a comment beside each renamed package)."""
    pypi_name = {conda: pypi for pypi, conda in CONDA_NAMES.items()}
    header = HEADER.splitlines() + ["# Optional extras left out:", *notes]
    lines = [*header, "channels:", *(f"  - {c}" for c in CHANNELS), "dependencies:"]
    for dep in deps:
        name = _name(dep)
        lines.append(f"  - {dep}" + (f"  # {pypi_name[name]} on PyPI" if name in pypi_name else ""))
    return "\n".join(lines) + "\n"


def _name(spec: str) -> str:
    """The package name of a conda spec line (`pytorch>=2.4,<2.14` -> `pytorch`)."""
    return re.match(r"[^<>=!~]*", spec.replace(" ", "")).group(0)


def drift(text: str, deps: list[str], env_name: str = ENV_FILE.name) -> list[str]:
    """One line per package on which the environment file `text` and pyproject.toml disagree."""
    def by_name(lines: list) -> dict[str, str]:
        return {_name(str(line)): str(line).replace(" ", "") for line in lines}

    have = by_name((yaml.safe_load(text) or {}).get("dependencies") or [])
    want = by_name(deps)
    lines = [f"{n}: missing from {env_name}; pyproject.toml needs `{want[n]}`"
             for n in want if n not in have]
    lines += [f"{n}: {env_name} says `{have[n]}`, pyproject.toml needs `{want[n]}`"
              for n in want if n in have and have[n] != want[n]]
    lines += [f"{n}: in {env_name} (`{have[n]}`) but not a dependency in pyproject.toml"
              for n in have if n not in want]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Write the environment file, or with --check report how it differs (exit 1)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare, write nothing")
    ap.add_argument("--pyproject", type=Path, default=PYPROJECT)
    ap.add_argument("--env-file", type=Path, default=ENV_FILE)
    args = ap.parse_args(argv)
    try:
        deps, notes = expected(args.pyproject)
    except EnvFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render(deps, notes)
    if not args.check:
        write_text(args.env_file, text)
        return 0
    current = args.env_file.read_text() if args.env_file.exists() else ""
    if current == text:
        return 0
    problems = drift(current, deps, args.env_file.name) or [
        f"{args.env_file.name}: same packages, other text (order, header or comments)"]
    print(f"{args.env_file} does not match {args.pyproject.name}:", *problems,
          "run `python envs/envfile.py` to regenerate it", sep="\n  ", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
