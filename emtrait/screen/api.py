"""The two ways into the screen: a workflow dataset (config + directions) and a provider's gate
(a raw JSONL file + a monitor + the base model). Both build a `Scorer` and call `run_screen`."""

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

if TYPE_CHECKING:
    from emtrait.config import Config
    from emtrait.monitor.artifact import Monitor

NORM0_POLICY = ("mean per-prompt L2 norm of the evaluation prompts' last-token activation at l* "
                "on the base model (the step-0 norm0 of every finetune of this model)")


def _cache_key(**parts: Any) -> str:
    from emtrait.provenance import stable_hash

    return stable_hash(parts)


def reply_cache_path(out: str | os.PathLike) -> Path:
    """Where `generated` mode caches the base model's replies: beside the parquet."""
    out = Path(out)
    return out.with_name(out.stem + ".replies.jsonl")


def _monitor_axis(monitor: Monitor, where: str) -> tuple[Any, list[str]]:
    import numpy as np

    axis = monitor.meta.get("danger_axis")
    if axis is None:
        raise StoreError(f"{where} has no danger axis (fitted before emtrait screen existed); "
                         "refit it with `emtrait monitor fit`")
    return np.asarray(axis, float), list(monitor.traits)


def screen_dataset(cfg: Config, model_name: str, dataset: str, *, pointer: str | os.PathLike,
                   directions_path: str | os.PathLike, data: str | os.PathLike,
                   out: str | os.PathLike, summary: str | os.PathLike | None = None,
                   monitor_path: str | os.PathLike | None = None, mode: str | None = None
                   ) -> ScreenResult:
    """Screen one prepared dataset of the workflow on every trait of the model's directions."""
    from emtrait.measure.inputs import eval_prompts, read_directions
    from emtrait.modeling import load_model, read_pointer
    from emtrait.monitor.artifact import load_monitor
    from emtrait.provenance import provenance

    sc = cfg.screen
    entry = cfg.model(model_name)
    dirs = read_directions(directions_path)
    fmt = ChatFormat(entry.system_prompt_method, entry.no_system_prompt,
                     sc.max_length or cfg.training_for(model_name).max_length, model_name)
    axis, axis_traits = None, []
    if monitor_path is not None:
        monitor = load_monitor(monitor_path)
        if int(monitor.meta["layer"]) != dirs.layer:
            raise DataError(f"{monitor_path} was fitted at layer {monitor.meta['layer']} but "
                            f"{directions_path} chose layer {dirs.layer}; refit the monitor")
        axis, axis_traits = _monitor_axis(monitor, str(monitor_path))
    location = read_pointer(pointer)
    model, tok = load_model(location, entry)
    norm0 = base_norm0(model, tok, [p.text for p in eval_prompts(cfg)], dirs.at(dirs.layer),
                       dirs.layer, fmt, cfg.measurement.batch_size)
    mode = mode or sc.mode
    scorer = Scorer(model=model, tokenizer=tok, directions=dirs.at(dirs.layer),
                    traits=dirs.traits, layer=dirs.layer, norm0=norm0, fmt=fmt, mode=mode,
                    axis=axis, axis_traits=axis_traits, batch_size=sc.batch_size,
                    reply_tokens=sc.reply_tokens)
    sha = file_sha256(data)
    meta = {"model": model_name, "dataset": dataset, "data": str(data), "data_sha256": sha,
            "trait_sets": dict(zip(dirs.traits, dirs.trait_sets, strict=True)),
            "norm0_policy": NORM0_POLICY, "monitor": str(monitor_path) if monitor_path else None,
            "risk_definition": RISK_DEFINITION,
            **provenance(config_hash=cfg.hash(), model_source=entry.source, seed=sc.seed)}
    key = _cache_key(model=entry.source, data=sha, fmt=fmt.__dict__, tokens=sc.reply_tokens)
    return run_screen(scorer, iter_examples(data), out, summary_path=summary, top=sc.top,
                      bootstrap=sc.bootstrap, seed=sc.seed, reply_cache=reply_cache_path(out),
                      cache_key=key, meta=meta)


RISK_DEFINITION = ("score vector on the monitor's traits dotted with the monitor's danger axis "
                   "(unit vector from the mean drift of benign to that of dangerous calibration "
                   "checkpoints)")


def screen(data: str | os.PathLike, *, monitor: str | os.PathLike | Monitor,
           model: str | os.PathLike | Any, tokenizer: Any = None, mode: str = "none",
           out: str | os.PathLike | None = None, max_length: int = 512, batch_size: int = 8,
           reply_tokens: int = 64, bootstrap: int = 1000, seed: int = 0, top: int = 10,
           allow_foreign_model: bool = False) -> ScreenResult:
    """Screen a raw JSONL chat file with only a monitor and its base model (the provider gate).

    `model` is a folder or hub id, or an already loaded model (then pass `tokenizer`). The
    monitor refuses a model it was not fitted on (its base-model fingerprint). Writes the
    per-example parquet to `out` (default: beside the data, `<name>.screen.parquet`) and the
    summary JSON beside it; returns both.
    """
    from emtrait.modeling import load_model
    from emtrait.monitor.artifact import check_fingerprint, load_monitor
    from emtrait.provenance import provenance

    where = str(monitor) if not hasattr(monitor, "meta") else "the monitor"
    mon = monitor if hasattr(monitor, "meta") else load_monitor(monitor)
    axis, axis_traits = _monitor_axis(mon, where)
    prompts = mon.meta.get("prompts")
    if not prompts:
        raise StoreError(f"{where} does not carry its evaluation prompts (format version "
                         f"{getattr(mon, 'version', 1)}); refit it with `emtrait monitor fit`")
    if isinstance(model, (str, os.PathLike)):
        location = str(model)
        model, tokenizer = load_model(location)
    else:
        location = type(model).__name__
        if tokenizer is None:
            raise DataError("screen(model=<loaded model>) needs tokenizer=...")
    check_fingerprint(mon, model, tokenizer, allow_foreign=allow_foreign_model)
    name = str(mon.meta.get("model", "model"))
    fmt = ChatFormat(mon.meta.get("system_prompt_method", "native"),
                     mon.meta.get("no_system_prompt", "template_default"), max_length, name)
    layer = int(mon.meta["layer"])
    norm0 = base_norm0(model, tokenizer, prompts, mon.directions, layer, fmt)
    scorer = Scorer(model=model, tokenizer=tokenizer, directions=mon.directions,
                    traits=list(mon.traits), layer=layer, norm0=norm0, fmt=fmt, mode=mode,
                    axis=axis, axis_traits=axis_traits, batch_size=batch_size,
                    reply_tokens=reply_tokens)
    data = Path(data)
    out = Path(out) if out is not None else data.with_name(data.stem + ".screen.parquet")
    sha = file_sha256(data) if data.is_file() else None
    meta = {"model": name, "dataset": data.stem, "data": str(data), "data_sha256": sha,
            "trait_sets": {t: str(mon.meta.get("trait_set", "")) for t in mon.traits},
            "norm0_policy": NORM0_POLICY, "monitor": where, "risk_definition": RISK_DEFINITION,
            **provenance(config_hash=str(mon.meta.get("provenance", {}).get("config_hash", "")),
                         model_source=location, seed=seed)}
    key = _cache_key(model=mon.meta.get("fingerprint"), data=sha, fmt=fmt.__dict__,
                     tokens=reply_tokens)
    return run_screen(scorer, iter_examples(data), out, top=top, bootstrap=bootstrap, seed=seed,
                      reply_cache=reply_cache_path(out), cache_key=key, meta=meta)
