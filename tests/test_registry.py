"""The one registry: every entry resolves, lookups explain themselves, config needs no stage."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

from emtrait.config import json_schema
from emtrait.errors import ConfigError
from emtrait.registry import (
    CHOICE_RULES,
    FEATURE_SETS,
    GENERATORS,
    JUDGES,
    REGRESSORS,
    SELECTORS,
    Registry,
    check_judge,
)

ALL = [SELECTORS, GENERATORS, JUDGES, CHOICE_RULES, FEATURE_SETS, REGRESSORS]


@pytest.mark.parametrize("registry, name", [(r, n) for r in ALL for n in r.names()],
                         ids=lambda v: v if isinstance(v, str) else v.what)
def test_every_entry_resolves_to_its_implementation(registry, name):
    found = registry.get(name)
    assert callable(found) or hasattr(found, "build"), registry.entry(name).target


def test_unknown_name_gets_key_did_you_mean_and_the_known_names():
    with pytest.raises(ConfigError, match=r"^monitor.regressors: no regressor 'rigde'\. "
                       r"Did you mean 'ridge'\? Known: \['gradient_boosting'"):
        REGRESSORS.get("rigde")
    table = Registry("model", "models", {"smollm2": 1})
    assert table.get("smollm2") == 1 and table.check("x2", also=["x2"]) == "x2"
    with pytest.raises(ConfigError, match="Did you mean 'smollm2'"):
        table.get("smollm")


def test_judge_modes_are_checked_from_the_registry():
    assert check_judge("openai", "text") == "openai"
    with pytest.raises(ConfigError, match="use one of \\['logprob'\\]"):
        check_judge("hf", "text")


def test_the_schema_offers_exactly_the_registered_regressors():
    monitor = json_schema()["$defs"]["MonitorConfig"]["properties"]["regressors"]
    assert monitor["items"]["enum"] == REGRESSORS.names()


def test_loading_a_config_imports_no_stage_module():
    code = ("import sys; from emtrait.config import load_config; load_config('config/config.yaml');"
            "print(sorted(m for m in sys.modules if m.startswith('emtrait.') and "
            "m.split('.')[1] not in ('config', 'registry', 'errors', 'provenance')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout
