"""No gate that cannot fail, in the Python API: every pass/fail threshold a caller can set or
load refuses NaN and infinities (a NaN comparison is always False: an alarm that never rings).

One table per surface: `check_number` (the one check every gate goes through), the verdict
function, `Monitor` construction (what `LiveMonitor` and `MonitorCallback` run), and a monitor
file whose stored gate is NaN.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emtrait.errors import ConfigError, EmtraitError, StoreError, check_number

BAD = [math.nan, math.inf, -math.inf, "0.5x", None, True]


@pytest.mark.parametrize("value", BAD, ids=map(repr, BAD))
def test_check_number_refuses_what_cannot_be_a_gate(value):
    with pytest.raises(ConfigError, match="--gate"):
        check_number(value, "--gate")


@pytest.mark.parametrize(("value", "low", "high"), [(-0.1, 0, 1), (1.5, 0, 1), (-1, 0, None)])
def test_check_number_refuses_out_of_range(value, low, high):
    with pytest.raises(ConfigError, match="must lie in"):
        check_number(value, "x", low=low, high=high)


@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (0.5, 0.5), ("0.25", 0.25),
                                                 (np.float32(1.0), 1.0)])
def test_check_number_passes_real_numbers(value, expected):
    assert check_number(value, "x", low=0, high=1) == expected


GATES = [("threshold", math.nan), ("threshold", math.inf), ("alarm_threshold", math.nan),
         ("alarm_threshold", -math.inf), ("threshold", 1.5), ("alarm_threshold", -0.5)]


@pytest.mark.parametrize(("key", "value"), GATES, ids=[f"{k}={v}" for k, v in GATES])
def test_the_verdict_refuses_a_gate_that_cannot_decide(key, value):
    from emtrait.monitor.protocol import verdict

    gates = {"threshold": 0.05, "alarm_threshold": 0.5, key: value}
    with pytest.raises(ConfigError, match=key):
        verdict(np.array([0.1, 0.9]), sigma=0.1, **gates)


def test_the_verdict_decides_with_real_gates():
    from emtrait.monitor.protocol import verdict

    p = verdict(np.array([0.0, 0.9]), threshold=0.05, sigma=0.1, alarm_threshold=0.5)
    assert p.alarm.tolist() == [False, True] and p.flag.tolist() == [False, True]


def _meta(**gates) -> dict:
    return {"traits": ["a"], "layer": 1, "include_step": False, "threshold": 0.05,
            "alarm_threshold": 0.5, "sigma": 0.1, **gates}


MONITOR_GATES = [*GATES, ("sigma", math.nan), ("sigma", -1.0)]


@pytest.mark.parametrize(("key", "value"), MONITOR_GATES,
                         ids=[f"{k}={v}" for k, v in MONITOR_GATES])
def test_a_monitor_with_a_gate_that_cannot_decide_is_refused_when_made(key, value):
    """`Monitor(...)` is what `LiveMonitor(monitor, probe)` and `MonitorCallback` are given."""
    from emtrait.monitor.artifact import Monitor

    with pytest.raises(ConfigError, match=f"meta\\['{key}'\\]"):
        Monitor(regressor=None, directions=np.eye(1, 4), meta=_meta(**{key: value}))


def test_a_monitor_file_with_a_nan_gate_names_the_file_and_the_rule(tmp_path):
    import skops.io as sio
    from sklearn.linear_model import Ridge

    from emtrait.monitor.artifact import FORMAT, load_monitor

    path = tmp_path / "monitor.skops"
    sio.dump({"format": FORMAT, "version": 1, "regressor": Ridge(),
              "directions": np.eye(1, 4, dtype="float32"),
              "meta_json": json.dumps(_meta(alarm_threshold=math.nan))}, path)
    with pytest.raises(StoreError) as err:
        load_monitor(path)
    message = str(err.value)
    assert str(path) in message and "alarm_threshold" in message
    assert "snakemake --forcerun monitor_fit" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.skops"]


@pytest.mark.parametrize("every", [math.nan, math.inf, 0, 2.5])
def test_the_live_callback_refuses_a_reading_interval_that_is_not_a_count(every, tmp_path):
    from emtrait.live import MonitorCallback

    with pytest.raises(EmtraitError, match="every"):
        MonitorCallback(tmp_path / "monitor.skops", every=every)
