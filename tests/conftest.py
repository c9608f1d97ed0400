"""Shared fixtures: tiny real models, built once per session and never mutated by tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_model  # noqa: E402

ARCHS = ["llama", "qwen2", "mistral", "gemma2"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: folder of a saved tiny model of an architecture (built once per arch)."""
    cache: dict[tuple[str, int], Path] = {}

    def get(arch: str = "llama", layers: int = 4) -> Path:
        if (arch, layers) not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{arch}-{layers}")
            cache[(arch, layers)] = build_tiny_model(folder, arch, layers)
        return cache[(arch, layers)]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: one torch thread is ~5x faster than contended two.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def llama_run(tiny_model_dir, tmp_path_factory):
    """One uninterrupted LoRA run (bad_medical, seed 42, checkpoints 0 2 4 6), shared."""
    import torch
    from helpers import make_inputs, run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("llama-run")
    inputs = make_inputs(tmp, tiny_model_dir("llama"))
    done = run(inputs, tmp / "run")
    torch.set_num_threads(threads)
    return inputs, tmp / "run", done


@pytest.fixture(scope="session")
def organism_run(tmp_path_factory):
    """Workdir of one workflow run of config/organism.yaml up to its cube, shared by the
    known-answer tests and the screen's organism tests (one run per session)."""
    from test_organism_known_answer import organism_workflow

    return organism_workflow(tmp_path_factory)
