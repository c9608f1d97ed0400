"""No gate that cannot fail, on the command line: every pass/fail threshold a user sets (the
screen gate's --fail-above; the monitor's alarm and flag thresholds, the behaviour label's
threshold and the probe's pass mark in a config) refuses NaN and infinities with exit code 2,
one line naming the option or key, no traceback and nothing written."""

from __future__ import annotations

import pytest
from helpers import emtrait_exit

BASE = """\
models: {m: {source: embedded:smollm2-135m-instruct, candidate_layers: [9]}}
datasets:
  a: {builtin: bad_medical, label: dangerous, role: calibration, n: 10}
  b: {builtin: good_medical, label: benign, role: calibration, n: 10}
"""

NUMBERS = [".nan", ".inf", "-.inf"]
CONFIG_GATES = [("monitor", "threshold"), ("monitor", "alarm_threshold"),
                ("behavior", "threshold"), ("traits", "probe_threshold"),
                ("traits", "min_pass_fraction"), ("behavior", "choice_margin")]


def _nothing_but(tmp_path, *names: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


@pytest.mark.parametrize("value", NUMBERS)
@pytest.mark.parametrize(("section", "key"), CONFIG_GATES,
                         ids=[f"{s}.{k}" for s, k in CONFIG_GATES])
def test_config_check_refuses_a_gate_that_cannot_fail(tmp_path, section, key, value):
    path = tmp_path / "config.yaml"
    path.write_text(BASE + f"{section}: {{{key}: {value}}}\n")
    code, output = emtrait_exit("config", "check", str(path))
    assert code == 2, output
    assert f"{section}.{key}" in output and "finite" in output, output
    assert output.startswith("emtrait: error: ") and "Traceback" not in output
    _nothing_but(tmp_path, "config.yaml")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_the_screen_gate_refuses_a_fail_above_that_cannot_fail(tmp_path, value):
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "hello"}]}\n')
    code, output = emtrait_exit("screen", "--data", str(data), "--fail-above", value)
    assert code == 2, output
    assert "--fail-above" in output and "finite" in output and "Traceback" not in output
    assert output.count("\n") == 1, output
    _nothing_but(tmp_path, "data.jsonl")
