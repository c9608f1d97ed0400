"""The two ways into the screen: a workflow dataset (config + directions + monitor) and a
provider's gate (any dataset file or hub id + a monitor + the base model). Both build a scorer
(`GradientScorer` by default, a projection `Scorer` as a baseline) and call `run_screen`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError, StoreError
from emtrait.screen.core import (
    ChatFormat,
    Scorer,
    ScreenResult,
    base_norm0,
    file_sha256,
    iter_examples,
    run_screen,
)
from emtrait.screen.gradient import RISK_DEFINITION as GRADIENT_DEFINITION

if TYPE_CHECKING:
    from emtrait.config import Config
    from emtrait.monitor.artifact import Monitor

NORM0_POLICY = ("mean per-prompt L2 norm of the evaluation prompts' last-token activation at l* "
                "on the base model (the step-0 norm0 of every finetune of this model)")


def cache_key(**parts: Any) -> str:
    from emtrait.provenance import stable_hash

    return stable_hash(parts)


def reply_cache_path(out: str | os.PathLike) -> Path:
    """Where `generated` mode caches the base model's replies: beside the parquet."""
    out = Path(out)
    return out.with_name(out.stem + ".replies.jsonl")


def monitor_axis(monitor: Monitor, where: str) -> tuple[Any, list[str]]:
    import numpy as np

    axis = monitor.meta.get("danger_axis")
    if axis is None:
        raise StoreError(f"{where} has no danger axis (fitted before emtrait screen existed); "
                         "refit it with `emtrait monitor fit`")
    return np.asarray(axis, float), list(monitor.traits)


PROJECTION_DEFINITION = (
    "score vector on the monitor's traits dotted with the monitor's danger axis (unit vector "
    "from the mean drift of benign to that of dangerous calibration checkpoints)")
RISK_DEFINITION = {"gradient": GRADIENT_DEFINITION, "none": PROJECTION_DEFINITION,
                   "generated": PROJECTION_DEFINITION + ", minus that of the base model's reply"}


def gradient_scorer(model: Any, tok: Any, monitor: Monitor, fmt: ChatFormat, training: Any, *,
                    where: str, breakdown: bool = False, method: str = "jvp",
                    batch_size: int = 8, baseline: bool = False) -> Any:
    """A `GradientScorer` for the monitor's risk: norm0 and v = ∇θR at the model's weights;
    `baseline` also scores the `none` projection beside it (one more forward per example)."""
    import numpy as np

    from emtrait.modeling import format_user_prompts
    from emtrait.screen.gradient import GradientScorer, risk_gradients, trained_parameters

    axis, traits = monitor_axis(monitor, where)
    prompts = monitor_prompts(monitor, where)
    layer = int(monitor.meta["layer"])
    norm0 = base_norm0(model, tok, prompts, monitor.directions, layer, fmt)
    texts = format_user_prompts(tok, prompts, method=fmt.system_prompt_method,
                                no_system_prompt=fmt.no_system_prompt, model_name=fmt.model_name)
    ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    params = trained_parameters(model, training.method, training.target_modules)
    axes = np.eye(len(traits)) if breakdown else axis[None, :]
    tangents = risk_gradients(model, ids, int(pad), layer, monitor.directions, norm0, axes,
                              params, batch_size=16)
    projection = Scorer(model=model, tokenizer=tok, directions=monitor.directions,
                        traits=traits, layer=layer, norm0=norm0, fmt=fmt, mode="none",
                        axis=axis, axis_traits=traits, batch_size=batch_size)
    return GradientScorer(model=model, tokenizer=tok, fmt=fmt, training=training,
                          tangents=tangents, traits=traits if breakdown else [], axis=axis,
                          axis_traits=traits, layer=layer, norm0=norm0, method=method,
                          batch_size=batch_size, baseline=projection if baseline else None)


def monitor_prompts(monitor: Monitor, where: str) -> list[str]:
    prompts = monitor.meta.get("prompts")
    if not prompts:
        raise StoreError(f"{where} does not carry its evaluation prompts (format version "
                         f"{getattr(monitor, 'version', 1)}); refit it with `emtrait monitor "
                         "fit`")
    return list(prompts)


def screen_dataset(cfg: Config, model_name: str, dataset: str, *, pointer: str | os.PathLike,
                   directions_path: str | os.PathLike, data: str | os.PathLike,
                   out: str | os.PathLike, summary: str | os.PathLike | None = None,
                   monitor_path: str | os.PathLike | None = None, mode: str | None = None
                   ) -> ScreenResult:
    """Screen one prepared dataset of the workflow (screen.mode; gradient needs the monitor)."""
    from emtrait.measure.inputs import eval_prompts, read_directions
    from emtrait.modeling import load_model, read_pointer
    from emtrait.monitor.artifact import load_monitor
    from emtrait.provenance import provenance

    sc = cfg.screen
    mode = mode or sc.mode
    entry = cfg.model(model_name)
    training = cfg.training_for(model_name)
    dirs = read_directions(directions_path)
    fmt = ChatFormat.of_model(cfg, model_name, sc.max_length)
    monitor = load_monitor(monitor_path) if monitor_path is not None else None
    if monitor is not None and int(monitor.meta["layer"]) != dirs.layer:
        raise DataError(f"{monitor_path} was fitted at layer {monitor.meta['layer']} but "
                        f"{directions_path} chose layer {dirs.layer}; refit the monitor")
    if mode == "gradient" and monitor is None:
        raise DataError("screen.mode gradient scores along the monitor's risk: pass --monitor")
    model, tok = load_model(read_pointer(pointer), entry)
    if mode == "gradient":
        scorer = gradient_scorer(model, tok, monitor, fmt,
                                 training.model_copy(update={"max_length": fmt.max_length}),
                                 where=str(monitor_path), breakdown=sc.breakdown,
                                 method=sc.method, batch_size=sc.batch_size,
                                 baseline=sc.projection_baseline)
    else:
        axis, axis_traits = (monitor_axis(monitor, str(monitor_path)) if monitor is not None
                             else (None, []))
        norm0 = base_norm0(model, tok, [p.text for p in eval_prompts(cfg)], dirs.at(dirs.layer),
                           dirs.layer, fmt, cfg.measurement.batch_size)
        scorer = Scorer(model=model, tokenizer=tok, directions=dirs.at(dirs.layer),
                        traits=dirs.traits, layer=dirs.layer, norm0=norm0, fmt=fmt, mode=mode,
                        axis=axis, axis_traits=axis_traits, batch_size=sc.batch_size,
                        reply_tokens=sc.reply_tokens)
    sha = file_sha256(data)
    meta = {"model": model_name, "dataset": dataset, "data": str(data), "data_sha256": sha,
            "trait_sets": dict(zip(dirs.traits, dirs.trait_sets, strict=True)),
            "norm0_policy": NORM0_POLICY, "monitor": str(monitor_path) if monitor_path else None,
            "risk_definition": RISK_DEFINITION[mode], "training": training_meta(scorer),
            **provenance(config_hash=cfg.hash(), model_source=entry.source, seed=sc.seed)}
    key = cache_key(model=entry.source, data=sha, fmt=fmt.__dict__, tokens=sc.reply_tokens)
    return run_screen(scorer, iter_examples(data), out, summary_path=summary, top=sc.top,
                      bootstrap=sc.bootstrap, seed=sc.seed, reply_cache=reply_cache_path(out),
                      cache_key=key, meta=meta, sample=sc.sample)


def training_meta(scorer: Any) -> dict | None:
    t = getattr(scorer, "training", None)
    if t is None:
        return None
    return {"method": t.method, "target_modules": list(t.target_modules), "loss_on": t.loss_on,
            "max_length": t.max_length}
