"""Trait directions of one base model: extraction, validation, layer selection, the store.

Extraction follows the paper (DESIGN.md "Extraction"): every system prompt of a trait is paired
with every question, chat-formatted with the generation prompt, and the activation pooled at the
output of each candidate decoder block (layer convention in `emtrait.modeling`). All prompts of
all traits go through `emtrait.capture.capture` together: right-padded batches sorted by length,
every candidate block read in ONE forward that stops after the deepest of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.config import RandomSet
from emtrait.errors import ConfigError, DataError, ModelError
from emtrait.modeling import build_messages, render_chat
from emtrait.traits.prompts import PromptSet, Trait, load_prompt_set

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

    from emtrait.config import Config, ModelEntry, TraitsConfig

log = logging.getLogger(__name__)
RANDOM_NOTE = ("one seeded unit vector per random trait (numpy default_rng(seed) standard "
               "normal, normalised), the same vector at every layer")


@dataclass
class TraitPrompts:
    """The chat-formatted extraction prompts of one trait, in a fixed order."""

    trait: Trait
    texts: list[str]
    labels: list[int]  # 1 = positive system prompt, 0 = negative
    question: list[int]  # question index of each text (for held-out splits)


def resolve_sets(tcfg: TraitsConfig, pset: PromptSet) -> list[tuple[str, str, Trait | None]]:
    """(name, set, trait or None for random) for every configured trait, names unique."""
    rows: list[tuple[str, str, Trait | None]] = []
    for set_name, spec in tcfg.sets.items():
        if isinstance(spec, RandomSet):
            rows += [(f"{set_name}_{i}", set_name, None) for i in range(spec.random)]
        else:
            if not spec:
                raise ConfigError(f"traits.sets.{set_name} is empty; list trait names from "
                                  f"{pset.source} or give {{random: N}}")
            rows += [(t.name, set_name, t) for t in pset.subset(spec, f"traits.sets.{set_name}")]
    seen: dict[str, str] = {}
    for name, set_name, _ in rows:
        if name in seen:
            raise ConfigError(f"trait '{name}' appears in traits.sets.{seen[name]} and "
                              f"traits.sets.{set_name}; trait names must be unique across sets")
        seen[name] = set_name
    return rows


def trait_prompts(tokenizer: Any, trait: Trait, questions: list[str], entry: ModelEntry,
                  model_name: str) -> TraitPrompts:
    """Every (system prompt, question) pair of a trait, formatted for the model's chat template."""
    from jinja2 import TemplateError

    texts, labels, qidx = [], [], []
    for label, systems in ((1, trait.positive), (0, trait.negative)):
        for system in systems:
            for q, question in enumerate(questions):
                messages = build_messages(question, system, method=entry.system_prompt_method)
                try:
                    texts.append(render_chat(tokenizer, messages, model_name=model_name))
                except TemplateError as e:  # e.g. Gemma-2's "System role not supported"
                    raise ModelError(
                        f"the chat template of {model_name} rejects the extraction messages "
                        f"({e}); models without a system role need "
                        f"models.{model_name}.system_prompt_method: user_turn"
                    ) from None
                labels.append(label)
                qidx.append(q)
    return TraitPrompts(trait, texts, labels, qidx)


def random_directions(n: int, hidden: int, seed: int) -> np.ndarray:
    """(n, hidden) seeded random unit vectors."""
    import numpy as np

    v = np.random.default_rng(seed).standard_normal((n, hidden))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def pooled_activations(model: Any, tokenizer: Any, texts: list[str], layers: list[int],
                       tcfg: TraitsConfig, progress: bool = False) -> np.ndarray:
    """(layer, prompt, hidden) float32 activations with the configured pooling."""
    from emtrait.capture import capture, capture_generated

    if tcfg.pooling == "generated_mean":
        return capture_generated(model, tokenizer, texts, layers, n_tokens=tcfg.generated_tokens,
                                 batch_size=tcfg.batch_size)
    return capture(model, tokenizer, texts, layers, pooling=tcfg.pooling,
                   batch_size=tcfg.batch_size, progress=progress)


@dataclass
class Extraction:
    """Everything computed for one model before it is written."""

    names: list[str]
    sets: list[str]
    layers: list[int]
    directions: np.ndarray  # (trait, layer, hidden)
    probe: np.ndarray  # (trait, layer), NaN for random traits
    scores: np.ndarray  # (layer,)
    layer: int
    selector: str
    pass_fraction: float
    seconds: dict[str, float]
    choice: Any = None  # select.LayerChoice when the layer was selected (layer: auto)


def extract(model: Any, tokenizer: Any, cfg: Config, model_name: str,
            progress: bool = False) -> Extraction:
    """Extract, validate and select: the pure-ish core shared by the CLI, tests and bench."""
    from emtrait.modeling import check_layers, decoder_layers

    tcfg, entry = cfg.traits, cfg.model(model_name)
    layers = list(entry.candidate_layers)
    check_layers(model, layers, model_name)
    n_blocks = len(decoder_layers(model))
    if entry.num_layers is not None and entry.num_layers != n_blocks:
        raise ModelError(f"models.{model_name}.num_layers is {entry.num_layers} but the model has "
                         f"{n_blocks} decoder blocks; fix num_layers (or remove it)")
    pset = load_prompt_set(tcfg.file)
    rows = resolve_sets(tcfg, pset)
    questions = used_questions(tcfg, pset)
    # Format everything before the first forward: a missing chat template fails in milliseconds.
    prompts = {name: trait_prompts(tokenizer, t, questions, entry, model_name)
               for name, _, t in rows if t is not None}

    t0 = time.perf_counter()
    texts = [x for p in prompts.values() for x in p.texts]
    acts = pooled_activations(model, tokenizer, texts, layers, tcfg, progress)
    t_capture = time.perf_counter() - t0
    directions, probe, per_trait = _directions(rows, prompts, acts, tcfg)
    t_probe = time.perf_counter() - t0 - t_capture

    monitor = [i for i, (_, s, t) in enumerate(rows) if s == tcfg.monitor_set and t is not None]
    scores, selector = _select(model, tokenizer, cfg, model_name, rows, monitor, directions,
                               probe, per_trait, progress)
    choice = None
    if entry.layer == "auto":
        choice = _choose_layer(layers, scores, selector, tcfg, lambda: _scores(
            tcfg.tie_breaker, model, tokenizer, cfg, model_name, rows, monitor, directions,
            probe, per_trait, progress))
        layer = choice.layer
        (log.info if choice.discriminated else log.warning)(f"{model_name}: {choice.reason}")
    else:
        layer = int(entry.layer)
    pass_fraction = _check_probe(tcfg, rows, monitor, probe[:, layers.index(layer)], layer,
                                 model_name)
    return Extraction(
        names=[r[0] for r in rows], sets=[r[1] for r in rows], layers=layers,
        directions=directions, probe=probe, scores=scores, layer=layer, selector=selector,
        pass_fraction=pass_fraction, choice=choice,
        seconds={"capture": t_capture, "probe": t_probe,
                 "select": time.perf_counter() - t0 - t_capture - t_probe},
    )


def _directions(rows: list[tuple[str, str, Trait | None]], prompts: dict[str, TraitPrompts],
                acts: np.ndarray, tcfg: TraitsConfig
                ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, ...]]]:
    """Unit directions (row, layer, hidden), probe accuracy (row, layer) and each trait's
    (activations, labels, question ids) from the pooled activations (layer, text, hidden)."""
    import numpy as np

    from emtrait.traits import select

    n_layers, hidden = acts.shape[0], acts.shape[-1]
    directions = np.zeros((len(rows), n_layers, hidden))
    probe = np.full((len(rows), n_layers), np.nan)
    per_trait: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    start = 0
    for i, (name, set_name, trait) in enumerate(rows):
        if trait is None:
            spec = tcfg.sets[set_name]
            k = int(name.rsplit("_", 1)[1])
            directions[i] = random_directions(spec.random, hidden, spec.seed)[k]
            continue
        p = prompts[name]
        a = acts[:, start:start + len(p.texts)]
        start += len(p.texts)
        labels = np.asarray(p.labels)
        per_trait[name] = (a, labels, np.asarray(p.question))
        directions[i] = select.unit_mean_difference(a, labels)
        for j in range(n_layers):
            probe[i, j] = select.probe_accuracy(a[j], labels, tcfg.probe_folds)
    return directions, probe, per_trait


def _choose_layer(layers: list[int], scores: np.ndarray, selector: str, tcfg: TraitsConfig,
                 tie_scores: Any) -> Any:
    """`layer: auto`: the configured selector's best layer, the tie-breaker deciding ties
    (`tie_scores()` computes its scores, only when needed unless it is cheap)."""
    from emtrait.traits import select

    return select.choose_layer(layers, scores, tie_scores, selector=selector,
                               tie_breaker=tcfg.tie_breaker, tolerance=tcfg.tie_tolerance,
                               eager=tcfg.tie_breaker != "steering")


def _check_probe(tcfg: TraitsConfig, rows: list[tuple[str, str, Trait | None]],
                 monitor: list[int], probe_at: np.ndarray, layer: int, model_name: str) -> float:
    """Share of the monitor set's traits whose probe passes at l*; too few: error or warning
    (`traits.on_fail`)."""
    passed = probe_at[monitor] > tcfg.probe_threshold
    pass_fraction = float(passed.mean()) if monitor else float("nan")
    if monitor and pass_fraction < tcfg.min_pass_fraction:
        report = ", ".join(f"{rows[i][0]}={probe_at[i]:.2f}" for i in monitor)
        msg = (f"only {pass_fraction:.0%} of traits.sets.{tcfg.monitor_set} pass the probe "
               f"(accuracy > {tcfg.probe_threshold}) at layer {layer} of {model_name} "
               f"(need {tcfg.min_pass_fraction:.0%}): {report}. Check the prompt set and "
               "candidate_layers, or set traits.on_fail: warn to keep these directions")
        if tcfg.on_fail == "error":
            raise DataError(msg)
        log.warning(msg)
    return pass_fraction


def _select(model, tokenizer, cfg, model_name, rows, monitor, directions, probe, per_trait,
            progress) -> tuple[np.ndarray, str]:
    import numpy as np

    tcfg, entry = cfg.traits, cfg.model(model_name)
    if entry.layer != "auto":
        return np.full(len(entry.candidate_layers), np.nan), "fixed"
    if not monitor:
        raise ConfigError(f"layer: auto needs traits.monitor_set '{tcfg.monitor_set}' to hold "
                          "prompt-based traits (a random set cannot select a layer)")
    how = entry.layer_selector
    return _scores(how, model, tokenizer, cfg, model_name, rows, monitor, directions, probe,
                   per_trait, progress), how


def _scores(how, model, tokenizer, cfg, model_name, rows, monitor, directions, probe, per_trait,
            progress) -> np.ndarray:
    """(layer,) scores of one selector of emtrait.registry.SELECTORS over the monitor traits."""
    from emtrait.traits import select

    tcfg, entry = cfg.traits, cfg.model(model_name)
    if how != "steering":
        return select.cheap_scores(how, probe[monitor], [per_trait[rows[i][0]] for i in monitor])
    texts = [render_chat(tokenizer, build_messages(p, None, method=entry.system_prompt_method,
                                                   no_system_prompt=entry.no_system_prompt),
                         model_name=model_name)
             for p in tcfg.steering.prompts]
    scores = select.steering_scores(
        model, tokenizer, texts, entry.candidate_layers, directions[monitor],
        alpha=tcfg.steering.alpha, max_new_tokens=tcfg.steering.max_new_tokens,
        progress=progress)
    return scores


def used_questions(tcfg: Any, pset: Any) -> list[str]:
    """The extraction questions in use: the first `traits.questions` of the set, or all."""
    if tcfg.questions is None:
        return list(pset.questions)
    if tcfg.questions > len(pset.questions):
        raise ConfigError(f"traits.questions is {tcfg.questions} but {tcfg.file} has only "
                          f"{len(pset.questions)} questions; lower it or set it to null")
    return list(pset.questions[: tcfg.questions])


def to_dataset(ex: Extraction, cfg: Config, model_name: str, model_source: str) -> xr.Dataset:
    """The directions store of an extraction, with provenance attributes."""
    from emtrait.provenance import provenance
    from emtrait.traits.store import build_dataset

    tcfg, entry = cfg.traits, cfg.model(model_name)
    pset = load_prompt_set(tcfg.file)
    attrs = provenance(
        config_hash=cfg.hash(), model_source=model_source,
        model=model_name, layer=int(ex.layer), selector=ex.selector, pooling=tcfg.pooling,
        prompt_hash=pset.hash, prompt_file=tcfg.file, prompt_format=pset.format,
        monitor_set=tcfg.monitor_set, n_questions=len(used_questions(tcfg, pset)),
        system_prompt_method=entry.system_prompt_method,
        no_system_prompt=entry.no_system_prompt,
        no_system_prompt_note="extraction always passes a system prompt; no_system_prompt "
        "governs the user-only eval prompts (and steering prompts) of this model",
        probe_threshold=tcfg.probe_threshold, probe_folds=tcfg.probe_folds,
        pass_fraction=ex.pass_fraction, random_directions=RANDOM_NOTE,
        layer_convention="layer l = output of decoder block l (0-based) = hidden_states[l+1]",
        traits_config=tcfg.model_dump(mode="json"),
        seconds={k: round(v, 2) for k, v in ex.seconds.items()},
    )
    if tcfg.pooling == "generated_mean":
        attrs["generated_tokens"] = tcfg.generated_tokens
    tie_break = None
    if ex.choice is not None:
        c = ex.choice
        tie_break = c.secondary
        attrs.update(tie_breaker=c.tie_breaker, tie_tolerance=c.tolerance,
                     selection_tied=[int(v) for v in c.tied],
                     selection_discriminated=bool(c.discriminated), selection_reason=c.reason)
    return build_dataset(names=ex.names, sets=ex.sets, layers=ex.layers,
                         directions=ex.directions, probe_accuracy=ex.probe,
                         selection_score=ex.scores, tie_break_score=tie_break, attrs=attrs)


def extract_to_store(cfg: Config, model_name: str, pointer: str | Path, out: str | Path,
                     figures: str | Path | None = None, progress: bool = True,
                     selection: str | Path | None = None) -> xr.Dataset:
    """Load the model named by its pointer, extract, write figures and then the store.

    `selection`: also write the layer choice (every per-layer score, ties) as JSON there.
    """
    import json

    from emtrait.atomic import atomic_path
    from emtrait.modeling import load_model, pointer_source, read_pointer
    from emtrait.traits.figures import write_figures
    from emtrait.traits.store import write_directions

    entry = cfg.model(model_name)
    location = read_pointer(pointer)
    source = pointer_source(pointer, entry.source)
    model, tokenizer = load_model(location, entry)
    ex = extract(model, tokenizer, cfg, model_name, progress=progress)
    ds = to_dataset(ex, cfg, model_name, source)
    if figures is not None:
        with atomic_path(figures, is_dir=True) as tmp:
            write_figures(ds, tmp, threshold=cfg.traits.probe_threshold)
    if selection is not None:
        from emtrait.atomic import write_text
        from emtrait.traits.select import selection_record

        write_text(selection, json.dumps(selection_record(ds), indent=1) + "\n")
    write_directions(ds, out)
    return ds
