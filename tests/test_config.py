"""Config is the interface: unknown keys, dangling names and duplicate keys fail loudly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

from emtrait.config import json_schema, load_config
from emtrait.errors import ConfigError

BASE = """\
models:
  smollm2:
    source: embedded:smollm2-135m-instruct
    candidate_layers: [9, 12]
datasets:
  bad_medical: {builtin: bad_medical, label: dangerous, role: calibration, n: 10}
  good_medical: {builtin: good_medical, label: benign, role: calibration, n: 10}
"""


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# (config text, substrings the message must contain)
BAD_CONFIGS = [
    pytest.param(BASE + "trainig: {epochs: 1}\n", ["trainig", "unknown key", "training"],
                 id="unknown-top-level-key"),
    pytest.param(BASE.replace("n: 10}", "n: 10, lable: x}", 1),
                 ["datasets.bad_medical.lable", "Did you mean 'label'"], id="unknown-dataset-key"),
    pytest.param(BASE.replace("candidate_layers", "candidate_layer"),
                 ["models.smollm2.candidate_layer", "candidate_layers"], id="unknown-model-key"),
    pytest.param(BASE + "  bad_medical: {builtin: bad_medical, label: benign, role: heldout}\n",
                 ["config.yaml:8", "'bad_medical' is given twice", "first on line 6"],
                 id="duplicate-dataset-name"),
    pytest.param(BASE.replace("role: calibration, n: 10}", "role: calibration}", 1).replace(
                 "builtin: bad_medical, ", "", 1), ["exactly one of 'path'"],
                 id="dataset-without-source"),
    pytest.param(BASE + "datasets: [\n", ["config.yaml:", "not valid YAML"], id="broken-yaml"),
    pytest.param(BASE + "traits: {sets: {alignment7: [honesty]}}\n"
                 "monitor: {baselines: [pc1, semantic7]}\n",
                 ["monitor.baselines[1]", "'semantic7'", "traits.sets defines only ['alignment7']"],
                 id="baseline-names-an-undefined-trait-set"),
]


@pytest.mark.parametrize("text, expected", BAD_CONFIGS)
def test_bad_config_names_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    for part in expected:
        assert part in str(err.value), str(err.value)


def test_config_check_refuses_what_the_whole_workflow_cannot_run(tmp_path):
    """One calibration dataset: loading works (single stages may run), the check refuses it."""
    from typer.testing import CliRunner

    from emtrait.cli import app

    one = write(tmp_path, BASE.replace("role: calibration, n: 10}", "role: heldout, n: 10}", 1))
    assert load_config(one).dataset("bad_medical").role == "heldout"
    res = CliRunner().invoke(app, ["config", "check", str(one)])
    assert isinstance(res.exception, ConfigError), res.output
    assert "1 with role 'calibration' (['good_medical'])" in str(res.exception)
    assert CliRunner().invoke(app, ["config", "check", str(write(tmp_path, BASE))]).exit_code == 0


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_valid_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert list(cfg.datasets) == ["bad_medical", "good_medical"]
    assert cfg.dataset("bad_medical").n == 10
    # The JSON the workflow hands to commands reads back to the same config.
    as_json = tmp_path / "config.json"
    as_json.write_text(cfg.model_dump_json())
    assert load_config(as_json).hash() == cfg.hash()


@pytest.mark.parametrize("lookup, name, hint", [
    ("model", "smollm", "Did you mean 'smollm2'"),
    ("dataset", "bad_medicl", "Did you mean 'bad_medical'"),
    ("dataset", "zzz", "Known: ['bad_medical', 'good_medical']"),
])
def test_unknown_name_referenced(tmp_path, lookup, name, hint):
    cfg = load_config(write(tmp_path, BASE))
    with pytest.raises(ConfigError) as err:
        getattr(cfg, lookup)(name)
    assert f"'{name}'" in str(err.value) and hint in str(err.value)


def test_committed_schema_in_sync():
    committed = json.loads((REPO / "config" / "schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), (
        "config/schema.json is stale: run `emtrait config schema --out config/schema.json`"
    )


def test_cli_import_does_not_load_torch():
    code = "import sys, emtrait.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, "importing emtrait.cli imported torch (keep it inside commands)"


def test_help_lists_stage_groups():
    emtrait = shutil.which("emtrait") or f"{sys.prefix}/bin/emtrait"
    proc = subprocess.run([emtrait, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for group in ["config", "prepare", "organism", "traits", "finetune", "measure", "cube",
                  "behavior", "analysis", "monitor", "report"]:
        assert group in proc.stdout, f"`emtrait --help` does not list {group}"


def test_snakemake_validation_accepts_null_optional_sections():
    """`sae: null` (or any optional section written as null) means unset: the Snakefile's
    schema validation must not crash on it (its default-filling walks into null values)."""
    from snakemake.utils import validate

    from emtrait.config import without_nulls

    cfg = load_config(REPO / "config" / "config.yaml").model_dump(mode="json")
    assert any(v is None for v in cfg["models"]["smollm2"].values())
    validate(without_nulls(cfg), str(REPO / "config" / "schema.json"))
