"""The workflow used the way Snakemake users adopt one: deployed as a `module` into a project
folder of their own, outside the clone, with their own small config, run to the report.

Every path must resolve from the workflow's own files (schema, conda envs, report captions) or
from the user's working directory (config, results, logs, resources), never from the clone's
root: the project folder and the models live under tmp_path, the clone is only the module's
source, and nothing may appear in the clone.
"""

from __future__ import annotations

import pytest
import yaml
from helpers import REPO, SNAKEFILE, snakemake
from slurm.tinyrun import TINY_CONFIG
from tiny import build_tiny_model

pytestmark = pytest.mark.slow

# What `snakedeploy deploy-workflow` writes, with a local path where it writes github(...)
PROJECT_SNAKEFILE = """\
configfile: "config/config.yaml"


module emtrait:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from emtrait
"""


def clone_state() -> set[str]:
    """Files the workflow could write into the clone by mistake."""
    return {str(p.relative_to(REPO)) for name in ("results", "resources", "logs", ".snakemake")
            for p in (REPO / name).rglob("*")}


def test_module_deployment_runs_to_the_report(tmp_path):
    project = tmp_path / "my-study"
    (project / "workflow").mkdir(parents=True)
    (project / "config").mkdir()
    (project / "workflow" / "Snakefile").write_text(PROJECT_SNAKEFILE.format(snakefile=SNAKEFILE))
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["models"] = {"tiny_a": config["models"]["tiny_a"]}
    config["models"]["tiny_a"]["source"] = str(build_tiny_model(tmp_path / "models" / "tiny_a"))
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = clone_state()

    def run(*args: str):
        return snakemake(project, *args, snakefile=project / "workflow" / "Snakefile",
                         timeout=1500)

    plan = run("-n").jobs()
    assert ("report", {}) in plan and ("all", {}) in plan, plan
    run("--cores", "2")
    summary = (project / "results" / "report" / "summary.md").read_text()
    assert "tiny_a" in summary
    assert (project / "results" / "monitor" / "tiny_a" / "monitor.skops").is_file()
    assert list((project / "logs").rglob("*.log"))
    assert run("-n").jobs() == []  # nothing left to do: every output is where the plan put it
    assert clone_state() == before, sorted(clone_state() - before)
