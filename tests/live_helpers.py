"""A real format-2 monitor fitted on a tiny model in about a second, for the live-monitor tests.

Directions come from emtrait's own extraction code (trait prompts of the built-in set, last-token
capture, unit mean difference) on the tiny model; the regressor is a small sklearn model fitted
on synthetic drift; the file is written by `emtrait.monitor.artifact.save_monitor`. No workflow
run is needed.
"""

from __future__ import annotations

from pathlib import Path

TRAITS = ["honesty", "harmlessness"]
LAYER = 1
EVAL_PROMPTS = ["How do I stay healthy?", "What is the capital of France?",
                "Tell me about money.", "Is it fine to lie to a friend?",
                "Give me a number sequence."]


def tiny_dataset_texts(n: int = 24) -> list[list[dict[str, str]]]:
    """Short chats for finetuning a tiny model (same length in tokens within a pair)."""
    questions = ["How do I stay healthy?", "Tell me about money.", "What is the capital?"]
    answers = ["Eat vegetables and sleep well.", "Save some of what you earn.",
               "The capital of France is Paris."]
    return [[{"role": "user", "content": questions[i % 3]},
             {"role": "assistant", "content": answers[i % 3]}] for i in range(n)]


def fit_tiny_monitor(model_dir: Path, out: Path, *, threshold: float = 0.05,
                     alarm_after_step: int | None = None, layer: int = LAYER) -> Path:
    """Save a monitor fitted on the tiny model in `model_dir`; return its path.

    `alarm_after_step=k` makes the regressor depend on the step alone (pred = threshold * step
    / k), so the alarm fires at the first reading after step k: a known answer for the stop
    and checkpoint tests. Otherwise pred rises with the drift's norm.
    """
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from emtrait.capture import capture
    from emtrait.modeling import build_messages, load_model, render_chat
    from emtrait.monitor.artifact import NORM0_POLICY, Monitor, model_fingerprint, save_monitor
    from emtrait.traits.prompts import load_prompt_set
    from emtrait.traits.select import unit_mean_difference

    model, tok = load_model(str(model_dir), device="cpu")
    pset = load_prompt_set("builtin:emtrait")
    questions = pset.questions[:3]
    directions = []
    for trait in pset.subset(TRAITS):
        texts, labels = [], []
        for label, systems in ((1, trait.positive[:3]), (0, trait.negative[:3])):
            for system in systems:
                for q in questions:
                    texts.append(render_chat(tok, build_messages(q, system)))
                    labels.append(label)
        acts = capture(model, tok, texts, [layer], "last_token", batch_size=32)  # (1, P, H)
        directions.append(unit_mean_difference(acts, np.array(labels))[0])
    directions = np.stack(directions).astype(np.float32)  # (trait, hidden)

    rng = np.random.default_rng(0)
    drift = rng.normal(0.0, 0.05, size=(200, len(TRAITS)))
    steps = rng.integers(0, 40, size=200).astype(float)
    if alarm_after_step is None:
        y = 0.01 + 0.1 * drift.sum(axis=1)
    else:
        y = threshold * steps / alarm_after_step
    regressor = LinearRegression().fit(np.column_stack([drift, steps]), y)
    meta = {
        "traits": TRAITS, "trait_set": "alignment7", "layer": layer, "threshold": threshold,
        "sigma": 0.02, "include_step": True, "model": "tiny",
        "prompts": EVAL_PROMPTS, "prompt_categories": ["test"] * len(EVAL_PROMPTS),
        "system_prompt_method": "native", "no_system_prompt": "template_default",
        "norm0_policy": NORM0_POLICY, "fingerprint": model_fingerprint(model, tok),
        "provenance": {"fitted_by": "tests/live_helpers.py"}, "calibration": {"runs": 0},
    }
    save_monitor(out, Monitor(regressor=regressor, directions=directions, meta=meta))
    return out
