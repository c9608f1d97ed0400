"""The provider's gate: any dataset (file, folder or hub id) + a monitor + its base model.

`screen(data, monitor=..., model=...)` is the Python API; `emtrait screen --monitor M --data D
--model-path P` the command. Data is read as the workflow reads it (`emtrait.datasets`): a JSONL
file streamed line by line, a .json/.csv/.parquet file, a `save_to_disk` folder or a hub id,
with an optional column mapping. What θ is (LoRA target modules or a full finetune), the loss's
tokens and the max length default to the calibration's (the `screen_calibration.json` beside
the monitor), else to the paper's LoRA defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError
from emtrait.screen.api import (
    NORM0_POLICY,
    RISK_DEFINITION,
    cache_key,
    gradient_scorer,
    monitor_axis,
    monitor_prompts,
    reply_cache_path,
    training_meta,
)
from emtrait.screen.core import ChatFormat, Scorer, ScreenResult, base_norm0, file_sha256

if TYPE_CHECKING:
    from emtrait.monitor.artifact import Monitor


def read_examples(data: Any, *, columns: dict[str, str] | None = None, split: str = "train",
                  hub_config: str | None = None
                  ) -> tuple[Iterable[list[dict[str, str]]], str | None]:
    """(chats, sha256 of the file or None) of any source the workflow reads; JSONL streams.

    `data` may also be rows in memory (a `datasets.Dataset` or a list of row dicts, as a
    Trainer gets them): each row is read by the same converter as a file's.
    """
    from emtrait.config import ColumnMap, DatasetEntry
    from emtrait.datasets import read_dataset, source_rows, to_chat
    from emtrait.screen.core import iter_examples

    mapping = ColumnMap(**columns) if columns else None
    if not isinstance(data, (str, os.PathLike)):
        return (to_chat(dict(row), f"row {i}", mapping) for i, row in enumerate(data)), None
    p = Path(data)
    if p.is_file() and p.suffix.lower() == ".jsonl" and mapping is None:
        return iter_examples(p), file_sha256(p)
    if p.exists():
        entry = DatasetEntry(path=str(p), split=split, columns=mapping, select="first",
                             label="unknown", role="heldout")
    elif _hub_id(str(data)):
        entry = DatasetEntry(hub=str(data), config=hub_config, split=split, columns=mapping,
                             select="first", label="unknown", role="heldout")
    else:
        raise DataError(f"--data {data}: no such file or folder (nor a hub id owner/name); pass "
                        "a .jsonl/.json/.csv/.parquet file, a save_to_disk folder or a hub id")
    entry = entry.model_copy(update={"n": source_rows(entry, "data")})
    chats = read_dataset(entry, "data").chats
    return chats, file_sha256(p) if p.is_file() else None


def _hub_id(text: str) -> bool:
    import re

    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not text.startswith(".")


def _load_base(location: str) -> tuple[Any, Any]:
    """The base model of --model-path, or a one-line error naming the option."""
    from emtrait.errors import ModelError
    from emtrait.modeling import load_model

    if not Path(location).exists() and not _hub_id(location):
        raise ModelError(f"--model-path {location}: no such folder; pass the monitor's base "
                         "model folder (or a hub id owner/name)")
    try:
        return load_model(location)
    except OSError as e:
        raise ModelError(f"--model-path {location}: cannot load a model there "
                         f"({str(e).splitlines()[0][:200]})") from None


def training_for_gate(calibration: dict | None, *, finetune: str | None,
                      target_modules: list[str] | None, loss_on: str | None,
                      max_length: int | None) -> Any:
    """θ and the loss's tokens: the user's choice, else the calibration's, else the defaults."""
    from emtrait.config import TrainingConfig

    known = dict((calibration or {}).get("training") or {})
    given = {"method": finetune, "target_modules": target_modules, "loss_on": loss_on,
             "max_length": max_length}
    known.update({k: v for k, v in given.items() if v is not None})
    return TrainingConfig(**known)


def screen(data: str | os.PathLike | Any, *, monitor: str | os.PathLike | Monitor,
           model: str | os.PathLike | Any, tokenizer: Any = None, mode: str = "gradient",
           out: str | os.PathLike | None = None, max_length: int | None = None,
           batch_size: int = 8, reply_tokens: int = 64, bootstrap: int = 1000, seed: int = 0,
           top: int = 10, sample: int | None = None, method: str = "jvp",
           breakdown: bool = False, baseline: bool = False, finetune: str | None = None,
           target_modules: list[str] | None = None, loss_on: str | None = None,
           columns: dict[str, str] | None = None, split: str = "train",
           allow_foreign_model: bool = False) -> ScreenResult:
    """Screen a dataset with only a monitor and its base model (the provider gate).

    `model` is a folder or hub id, or a loaded model (then pass `tokenizer`); the monitor
    refuses a model it was not fitted on. `mode` gradient (default) scores what a training step
    on each example would do to the monitor's risk; `none`/`generated` are projection
    baselines (`baseline=True` scores `none` beside gradient). `sample` scores a seeded sample
    of that many examples. Writes the per-example parquet to `out` (default: beside the data,
    `<name>.screen.parquet`) and the summary JSON beside it; returns both.
    """
    from emtrait.monitor.artifact import check_fingerprint, load_monitor, origin_line
    from emtrait.provenance import provenance
    from emtrait.screen.calibration import read_calibration
    from emtrait.screen.core import run_screen

    where = "the monitor" if hasattr(monitor, "meta") else str(monitor)
    mon = monitor if hasattr(monitor, "meta") else load_monitor(monitor)
    calib = None if hasattr(monitor, "meta") else read_calibration(monitor)
    training = training_for_gate(calib, finetune=finetune, target_modules=target_modules,
                                 loss_on=loss_on, max_length=max_length)
    if isinstance(model, (str, os.PathLike)):
        location = str(model)
        model, tokenizer = _load_base(location)
    else:
        location = type(model).__name__
        if tokenizer is None:
            raise DataError("screen(model=<loaded model>) needs tokenizer=...")
    check_fingerprint(mon, model, tokenizer, allow_foreign=allow_foreign_model)
    name = str(mon.meta.get("model", "model"))
    fmt = ChatFormat(mon.meta.get("system_prompt_method", "native"),
                     mon.meta.get("no_system_prompt", "template_default"), training.max_length,
                     name)
    if mode == "gradient":
        scorer = gradient_scorer(model, tokenizer, mon, fmt, training, where=where,
                                 breakdown=breakdown, method=method, batch_size=batch_size,
                                 baseline=baseline)
    else:
        scorer = _projection_scorer(model, tokenizer, mon, fmt, mode, where, batch_size,
                                    reply_tokens)
    chats, sha = read_examples(data, columns=columns, split=split)
    if not isinstance(data, (str, os.PathLike)):
        if out is None:
            raise DataError("screen(<rows in memory>) needs out=<path of the per-example "
                            "parquet>")
        stem, out = Path(out).stem, Path(out)
    else:
        local = Path(data).exists()
        stem = Path(data).stem if local else str(data).replace("/", "_")
        base = Path(data).parent if local else Path.cwd()
        out = Path(out) if out is not None else base / f"{stem}.screen.parquet"
    meta = {"model": name, "dataset": stem, "data": str(data) if sha or isinstance(
                data, (str, os.PathLike)) else f"{type(data).__name__} in memory",
            "data_sha256": sha,
            "trait_sets": {t: str(mon.meta.get("trait_set", "")) for t in mon.traits},
            "norm0_policy": NORM0_POLICY, "monitor": where,
            "monitor_origin": origin_line(mon.meta), "risk_definition":
            RISK_DEFINITION[mode], "training": training_meta(scorer), "calibration": calib,
            **provenance(config_hash=str(mon.meta.get("provenance", {}).get("config_hash", "")),
                         model_source=location, seed=seed)}
    key = cache_key(model=mon.meta.get("fingerprint"), data=sha, fmt=fmt.__dict__,
                     tokens=reply_tokens)
    return run_screen(scorer, chats, out, top=top, bootstrap=bootstrap, seed=seed,
                      reply_cache=reply_cache_path(out), cache_key=key, meta=meta,
                      sample=sample)


def _projection_scorer(model: Any, tok: Any, mon: Monitor, fmt: ChatFormat, mode: str,
                       where: str, batch_size: int, reply_tokens: int) -> Scorer:
    axis, axis_traits = monitor_axis(mon, where)
    layer = int(mon.meta["layer"])
    norm0 = base_norm0(model, tok, monitor_prompts(mon, where), mon.directions, layer, fmt)
    return Scorer(model=model, tokenizer=tok, directions=mon.directions, traits=list(mon.traits),
                  layer=layer, norm0=norm0, fmt=fmt, mode=mode, axis=axis,
                  axis_traits=axis_traits, batch_size=batch_size, reply_tokens=reply_tokens)
