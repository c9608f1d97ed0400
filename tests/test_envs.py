"""The `--sdm conda` software path: envs/emtrait.yaml agrees with pyproject.toml, every rule's
`conda:` directive reaches it, and envs/emtrait.post-deploy.sh installs emtrait into it.

Creating the environment needs a `conda` that can reach conda-forge and bioconda. Measured on the
project's machines (2026-12-05): conda, mamba, micromamba and pixi are not packaged on PyPI,
Debian 12 or npm (PyPI's `mamba` and `pixi` and npm's `pixi` are unrelated projects); conda-lock
4.0.3, conda-express 26.9.4 and py-rattler 0.28.0 install from PyPI, but conda-lock fetches
conda-standalone and conda-express fetches conda itself from anaconda.org, and py-rattler's solve
needs a channel's repodata: each failed on DNS (no conda channel resolves there). So the test that
creates the environment skips there, saying why, and the others check all that can be checked
without one: the generator, a real Snakemake dry run with `--sdm conda`, and the post-deploy
script run by bash into a venv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, snakemake, snakemake_env

ENVS = REPO / "envs"
ENV_FILE = ENVS / "emtrait.yaml"
POST_DEPLOY = ENVS / "emtrait.post-deploy.sh"  # Snakemake's name for it: <env stem>.post-deploy.sh


def _envfile():
    """envs/envfile.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("envfile", ENVS / "envfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


envfile = _envfile()


# --------------------------------------------------------------------------------- one source
def test_env_file_is_generated_from_pyproject():
    """The committed envs/emtrait.yaml is exactly what the generator makes of pyproject.toml."""
    proc = subprocess.run([sys.executable, str(ENVS / "envfile.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


DRIFT = [  # (edit of pyproject.toml's text, what --check must name)
    pytest.param(('"tensorboard>=2.16",', '"tensorboard>=2.16",\n  "einops>=0.8",'),
                 "einops: missing from emtrait.yaml; pyproject.toml needs `einops>=0.8`",
                 id="dependency-added"),
    pytest.param(('"torch>=2.4,<2.14"', '"torch>=2.5,<2.14"'),
                 "pytorch: emtrait.yaml says `pytorch>=2.4,<2.14`, pyproject.toml needs "
                 "`pytorch>=2.5,<2.14`", id="bound-changed-renamed-package"),
    pytest.param(('  "trl>=0.20,<2",\n', ''),
                 "trl: in emtrait.yaml (`trl>=0.20,<2`) but not a dependency in pyproject.toml",
                 id="dependency-removed"),
    pytest.param(('"setuptools>=77", "wheel"]', '"setuptools>=80", "wheel"]'),
                 "setuptools: emtrait.yaml says `setuptools>=77`, pyproject.toml needs "
                 "`setuptools>=80`", id="build-requirement-changed"),
]


def edited_pyproject(tmp_path, edit: tuple[str, str]):
    """A copy of the project's pyproject.toml with one (old, new) text edit applied."""
    text = (REPO / "pyproject.toml").read_text()
    assert edit[0] in text, f"the table's edit no longer applies to pyproject.toml: {edit[0]!r}"
    path = tmp_path / "pyproject.toml"
    path.write_text(text.replace(edit[0], edit[1]))
    return path


@pytest.mark.parametrize("edit, message", DRIFT)
def test_check_names_the_package_that_drifted(tmp_path, capsys, edit, message):
    pyproject = edited_pyproject(tmp_path, edit)
    rc = envfile.main(["--check", "--pyproject", str(pyproject),
                       "--env-file", str(ENV_FILE)])
    assert rc == 1
    assert message in capsys.readouterr().err


REFUSED = [  # (edit, what the error names): things a conda environment cannot express as written
    pytest.param(('slurm = [', 'gpu = ["cupy>=13"]\nslurm = ['), "extra(s) ['gpu']",
                 id="undecided-extra"),
    pytest.param(('"tensorboard>=2.16",',
                  '"tensorboard>=2.16",\n  "uvloop>=0.19; sys_platform != \'win32\'",'),
                 "uvloop>=0.19; sys_platform != \"win32\": markers, extras and URLs",
                 id="marker"),
    pytest.param(('"numpy>=2.0,<3"', '"numpy~=2.0"'), "operator '~='", id="compatible-release"),
    pytest.param(('requires-python = ">=3.11"', 'requires-python = ">=3.12"'),
                 "excludes python 3.11", id="python-excluded"),
]


@pytest.mark.parametrize("edit, message", REFUSED)
def test_generator_refuses_what_it_cannot_translate(tmp_path, capsys, edit, message):
    pyproject = edited_pyproject(tmp_path, edit)
    out = tmp_path / "env.yaml"
    assert envfile.main(["--pyproject", str(pyproject),
                         "--env-file", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_generated_file_is_the_environment_snakemake_reads():
    """Every dependency of pyproject.toml is in the YAML conda reads (not only in a comment),
    under its conda name, and the extras left out are said in the header."""
    import tomllib

    import yaml
    from packaging.requirements import Requirement

    env = yaml.safe_load(ENV_FILE.read_text())
    names = {re.match(r"[^<>=!~]*", d).group(0) for d in env["dependencies"]}
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    for dep in meta["project"]["dependencies"]:
        name = Requirement(dep).name
        assert envfile.CONDA_NAMES.get(name, name) in names, dep
    assert {"python", "pip", "setuptools", "wheel"} <= names  # the post-deploy script's needs
    assert env["channels"][0] == "conda-forge" and "nodefaults" in env["channels"]
    for extra, deps in meta["project"]["optional-dependencies"].items():
        if envfile.EXTRAS[extra] is True:
            assert {envfile.CONDA_NAMES.get(Requirement(d).name, Requirement(d).name)
                    for d in deps} <= names, extra
        else:
            assert f"#   {extra}: " in ENV_FILE.read_text(), extra


# ----------------------------------------------------------------------- the rules and Snakemake
def test_every_conda_directive_names_the_generated_file():
    """Each rule's `conda:` path, resolved from its .smk file, is envs/emtrait.yaml (the file the
    generator writes); `snakemake --lint` (test_lint.py) makes every shell rule have one."""
    found = []
    for smk in sorted((REPO / "workflow").rglob("*.smk")) + [REPO / "workflow" / "Snakefile"]:
        for path in re.findall(r"^\s*conda:\s*\n\s*\"([^\"]+)\"", smk.read_text(), re.M):
            found.append((smk.name, path))
            assert (smk.parent / path).resolve() == ENV_FILE, f"{smk.name}: conda: {path!r}"
    assert len(found) >= 20, found  # the directives were found, not skipped by the pattern


def test_post_deploy_script_sits_where_snakemake_looks_and_parses():
    """Snakemake runs `<env file stem>.post-deploy.sh` found beside the env file (the dry run
    reads it but would silently omit a misnamed one), with bash."""
    assert POST_DEPLOY.is_file() and POST_DEPLOY.with_name(
        ENV_FILE.stem + ".post-deploy.sh") == POST_DEPLOY
    proc = subprocess.run(["bash", "-n", str(POST_DEPLOY)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


STAND_IN = """#!{python}
# Answers only the three questions Snakemake's dry run asks conda (platform, version, channel
# priority); anything else (creating an environment) fails loudly.
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    print(" ".join(args), file=log)
if args == ["--version"]:
    print("conda 25.1.0")
elif args == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": {prefix!r}, "platform": "linux-64"}}))
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
else:
    sys.exit("conda stand-in: only the dry run's questions are answered, not " + " ".join(args))
"""


def _conda_on_path(tmp_path: Path) -> tuple[dict[str, str], Path | None]:
    """PATH with a `conda`: the real one if installed, else the stand-in (and its call log)."""
    env = snakemake_env()
    if shutil.which("conda"):
        return env, None
    bindir, log = tmp_path / "bin", tmp_path / "conda-calls.log"
    bindir.mkdir()
    conda = bindir / "conda"
    conda.write_text(STAND_IN.format(python=sys.executable, log=str(log),
                                     prefix=str(tmp_path / "base")))
    conda.chmod(conda.stat().st_mode | stat.S_IXUSR)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    return env, log


def test_dry_run_with_sdm_conda_resolves_every_job_to_the_env_file(tmp_path):
    """`snakemake -n --sdm conda` on the default config: Snakemake resolves each job's `conda:`
    file (a missing one is an error) and reads the post-deploy script beside it."""
    env, log = _conda_on_path(tmp_path)
    run = snakemake(tmp_path, "-n", "--sdm", "conda", "--conda-prefix", str(tmp_path / "envs"),
                    configfile=REPO / "config" / "config.yaml", env=env, timeout=300)
    created = re.findall(r"Conda environment (\S+) will be created", run.output)
    assert created and {Path(p).resolve() for p in created} == {ENV_FILE}, run.output[-3000:]
    assert sum(run.counts().values()) > 10  # the whole default plan, not one job
    if log is not None:  # the stand-in was asked nothing but the dry run's questions
        calls = set(log.read_text().splitlines())
        assert calls <= {"--version", "info --json", "config --get channel_priority --json"}


# ------------------------------------------------------------------------- the post-deploy script
def _emtrait_source(dest: Path, extra_dependency: str | None = None) -> Path:
    """A copy of what `pip install` reads from a checkout (pyproject.toml, README.md, emtrait/)."""
    dest.mkdir()
    text = (REPO / "pyproject.toml").read_text()
    if extra_dependency:
        text = text.replace('"tensorboard>=2.16",',
                            f'"tensorboard>=2.16",\n  "{extra_dependency}",')
    (dest / "pyproject.toml").write_text(text)
    shutil.copy(REPO / "README.md", dest / "README.md")
    shutil.copytree(REPO / "emtrait", dest / "emtrait",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def prepared_env(tmp_path_factory) -> Path:
    """A stand-in for the created conda environment: a fresh venv (no emtrait, no pip of its own)
    that sees this venv's packages, i.e. every dependency pyproject.toml names."""
    import sysconfig

    env = tmp_path_factory.mktemp("conda-env") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    child = subprocess.run([env / "bin" / "python", "-c",
                            "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    Path(child, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def _post_deploy(env: Path, src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run the script as Snakemake does: bash, inside the environment (its bin/ first)."""
    path = f"{env / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", str(POST_DEPLOY)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PATH": path, "EMTRAIT_SRC": str(src),
                               "PIP_NO_CACHE_DIR": "1"}, timeout=300)


@pytest.mark.slow
def test_post_deploy_installs_emtrait_editable_from_the_checkout(prepared_env, tmp_path):
    src = _emtrait_source(tmp_path / "checkout")
    proc = _post_deploy(prepared_env, src, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Collecting" not in proc.stdout  # every dependency was already there
    where = subprocess.run([prepared_env / "bin" / "python", "-c",
                            "import emtrait, json; print(json.dumps(emtrait.__file__))"],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert Path(json.loads(where.stdout)).parent == src / "emtrait"  # editable: the checkout
    assert (prepared_env / "bin" / "emtrait").exists()


@pytest.mark.slow
def test_post_deploy_fails_naming_a_dependency_the_environment_lacks(prepared_env, tmp_path):
    """With --no-deps (before), a missing dependency surfaced only as the first job's import
    error; now the deployment fails and names it, and nothing is fetched in its place."""
    src = _emtrait_source(tmp_path / "checkout", extra_dependency="emtrait-absent-package>=1")
    proc = _post_deploy(prepared_env, src, tmp_path)
    assert proc.returncode != 0
    assert "emtrait-absent-package>=1" in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------- the environment, for real
def _cannot_create_env() -> str | None:
    """Why this machine cannot create envs/emtrait.yaml with conda, or None."""
    conda = shutil.which("conda")
    if conda is None:
        return ("no `conda` on PATH: Snakemake's --sdm conda creates environments with conda "
                ">= 24.7.1 (see this module's docstring for what this project's machines offer)")
    if os.environ.get("EMTRAIT_TEST_CONDA") != "1":
        return ("set EMTRAIT_TEST_CONDA=1 to create envs/emtrait.yaml for real (downloads "
                "several GB from conda-forge and bioconda: pytorch, CUDA libraries)")
    probe = subprocess.run([conda, "search", "--override-channels", "-c", "conda-forge",
                            "--json", "python=" + envfile.PYTHON],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        return f"conda cannot reach conda-forge: {(probe.stdout + probe.stderr)[-500:]}"
    return None


@pytest.mark.slow
def test_environment_runs_emtrait_and_a_rule(tmp_path):
    reason = _cannot_create_env()
    if reason:
        pytest.skip(reason)
    prefix = tmp_path / "conda-envs"
    target = "results/datasets/arithmetic.jsonl"
    snakemake(tmp_path, "--sdm", "conda", "--conda-prefix", str(prefix), "--cores", "1", target,
              configfile=REPO / "config" / "config.yaml", timeout=3600)
    assert (tmp_path / target).stat().st_size > 0
    env_dir = next(p for p in prefix.iterdir() if p.is_dir())
    proc = subprocess.run(["conda", "run", "-p", str(env_dir), "emtrait", "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "prepare" in proc.stdout, proc.stdout + proc.stderr
