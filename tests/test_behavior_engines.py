"""Generation engines (hf default, vLLM per run) and the GPU benchmark's CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from emtrait.behavior.generate import vllm_available
from emtrait.cli import app
from emtrait.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
NO_VLLM = vllm_available()


@pytest.mark.skipif(NO_VLLM is None, reason="vLLM and CUDA are here: the error path is moot")
def test_vllm_engine_without_vllm_is_a_clear_error():
    from emtrait.behavior.generate import VLLMGenerator

    with pytest.raises(ConfigError, match="behavior.engine: hf"):
        VLLMGenerator("unused", None, max_lora_rank=16, max_new_tokens=4)


@pytest.mark.skipif(NO_VLLM is not None, reason=f"vLLM engine not testable here: {NO_VLLM}")
def test_vllm_one_engine_swaps_adapters(tiny_model_dir, tmp_path):
    """One engine, two checkpoints: each gets its adapter; the base is loaded once."""
    from peft import LoraConfig, get_peft_model

    from emtrait.behavior.generate import VLLMGenerator
    from emtrait.behavior.questions import load_prompts
    from emtrait.modeling import load_model

    base = tiny_model_dir("llama", 2)
    model, _ = load_model(str(base), device="cpu")
    for step in (0, 1):
        net = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        net.save_pretrained(tmp_path / f"step-{step}")
        model = net.unload()
    prompts = load_prompts(["builtin:emtrait"], "first_paraphrase", 1)[:4]
    gen = VLLMGenerator(str(base), None, max_lora_rank=8, max_new_tokens=5, memory=0.3)
    frames = [gen.generate(prompts, tmp_path / f"step-{s}", temperature=1.0, max_new_tokens=5,
                           seed=0) for s in (0, 1)]
    for frame in frames:
        assert len(frame) == 4 and (frame["engine"] == "vllm").all()
        assert frame["answer_tokens"].between(0, 5).all()
    assert len(gen._ids) == 2


def test_split_run_takes_one_step(tmp_path):
    frame = pd.DataFrame({"question_id": ["a", "b", "a"], "answer": ["x", "y", "z"],
                          "step": [0, 0, 10]})
    frame.attrs = {"engine": "vllm", "steps": "0,10"}
    frame.to_parquet(tmp_path / "all.parquet")
    out = tmp_path / "step-10" / "responses.parquet"
    result = CliRunner().invoke(app, ["behavior", "split-run", "--responses",
                                      str(tmp_path / "all.parquet"), "--step", "10", "--out",
                                      str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    part = pd.read_parquet(out)
    assert part["answer"].tolist() == ["z"] and "step" not in part
    assert part.attrs["engine"] == "vllm" and part.attrs["step"] == "10"
    with pytest.raises(DataError, match="no answers for step 5"):
        CliRunner().invoke(app, ["behavior", "split-run", "--responses",
                                 str(tmp_path / "all.parquet"), "--step", "5", "--out",
                                 str(tmp_path / "x.parquet")], catch_exceptions=False)


@pytest.mark.slow
def test_vllm_engine_plans_one_generate_job_per_run(tmp_path):
    """engine vllm: one generate job per run, a split per step, then one judge-and-score job per
    step (no separate score job)."""
    from helpers import planned_jobs, snakemake

    cfg = {
        "models": {"m": {"source": "some/model", "candidate_layers": [1], "num_layers": 4}},
        "datasets": {"d": {"builtin": "arithmetic", "label": "benign", "role": "calibration",
                           "n": 8},
                     "e": {"builtin": "bad_medical", "label": "dangerous",
                           "role": "calibration", "n": 8}},
        "training": {"batch_size": 2, "grad_accum": 1, "epochs": 1, "seeds": [1],
                     "checkpoint_every": 2},
        "behavior": {"method": "judge", "engine": "vllm", "judge": {"kind": "lexical"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [f"results/behavior/m/{d}/seed1/step-{s}/em.json" for d in "de" for s in (0, 2, 4)]
    run = snakemake(tmp_path, *targets, "-n", "--configfile", str(tmp_path / "config.yaml"))
    jobs = planned_jobs(run.output)
    assert jobs["behavior_generate_run"] == 2  # one engine per run, not per step
    assert jobs["behavior_split_run"] == jobs["behavior_label"] == 6
    assert "behavior_score" not in jobs
    assert "behavior_generate" not in jobs


@pytest.mark.slow
def test_gpu_bench_dry_run(tmp_path):
    """bench/gpu/run.sh --dry-run: every part runs on CPU with tiny models and reports."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "BENCH_TIMEOUT": "1500",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(REPO / "bench/gpu/run.sh"), "--dry-run", "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["errors"] == {} and res["environment"]["dry_run"]
    assert [r["model"] for r in res["measure"]] == ["smollm2", "llama8b"]
    for r in res["measure"]:
        assert r["prompts"] == 12 and r["ours_s"] > 0 and r["reference_s"] > r["reference_load_s"]
        assert r["ours"]["flops"] < r["reference"]["flops"]  # truncated + prefix once
    assert all(0 < r["overhead"] for r in res["overhead"])
    for r in res["generate"]:
        assert r["hf"]["answer_tokens"] > 0
        assert ("skipped" in r["vllm"]) == (NO_VLLM is not None)
    w = res["workflow"]
    assert w["returncode"] == 0 and set(w["runs"]) == {"bad_medical", "good_medical",
                                                       "insecure_code"}
    assert w["behavior_jobs"] == 6  # 3 runs x steps 0, 2
    md = (out / "results.md").read_text()
    assert "Per-checkpoint measurement" in md and "Snakemake" in md


def test_vllm_engine_with_full_finetune_fails_at_config_load(tmp_path):
    from emtrait.config import load_config

    cfg = {"models": {"m": {"source": "x", "candidate_layers": [1],
                            "training": {"method": "full"}}},
           "datasets": {"d": {"builtin": "arithmetic", "label": "benign",
                              "role": "calibration"}},
           "behavior": {"method": "judge", "engine": "vllm"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="engine 'vllm' swaps LoRA adapters.*'m'"):
        load_config(tmp_path / "c.yaml")
