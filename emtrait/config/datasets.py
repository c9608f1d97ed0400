"""The `datasets` section: perturbation datasets (local, hub or built-in generators)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from emtrait.config.base import HUB_ID_PATTERN, Section
from emtrait.errors import ConfigError
from emtrait.registry import GENERATORS


class ColumnMap(Section):
    """Which columns become which chat turns, for a source whose format is not recognised."""

    messages: str | None = Field(
        None, description="A column holding a list of {role, content} messages (alone)."
    )
    system: str | None = Field(None, description="Column of the system prompt (optional).")
    user: str | None = Field(None, description="Column of the user turn.")
    assistant: str | None = Field(None, description="Column of the assistant reply.")

    @model_validator(mode="after")
    def _one_shape(self) -> ColumnMap:
        turns = (self.system, self.user, self.assistant)
        if self.messages is not None and any(t is not None for t in turns):
            raise ValueError("give either 'messages' alone or 'user' + 'assistant' "
                             "(+ optional 'system'), not both")
        if self.messages is None and (self.user is None or self.assistant is None):
            raise ValueError("give 'user' and 'assistant' columns (+ optional 'system'), "
                             "or a 'messages' column")
        return self


class DatasetEntry(Section):
    """One perturbation dataset: a local file or folder, a hub dataset, or a built-in generator.

    Rows in a common format are recognised by their columns (`messages`; TRL `prompt` /
    `completion`; Alpaca `instruction` / `input` / `output`; `question` / `answer`); any other
    layout names its columns in `columns`. Reading is emtrait.datasets.read_dataset.
    """

    path: str | None = Field(
        None, description="Local file (.jsonl, .json, .csv, .parquet) or a folder written by "
        "`datasets`' save_to_disk."
    )
    hub: str | None = Field(None, pattern=HUB_ID_PATTERN,
                            description="Hugging Face hub dataset id, e.g. openai/gsm8k.")
    config: str | None = Field(None, description="Hub dataset configuration, e.g. 'main'.")
    split: str = Field("train", description="Split of a hub dataset or save_to_disk folder.")
    revision: str | None = Field(None, description="Hub revision (commit/tag) to pin.")
    columns: ColumnMap | None = Field(
        None, description="Column-to-turn mapping; null = recognise the format by its columns."
    )
    select: Literal["seeded", "first"] = Field(
        "seeded", description="'seeded': n rows drawn by `seed` from the whole source, source "
        "order kept; 'first': the first n rows (a hub dataset is then streamed, not downloaded "
        "whole)."
    )
    builtin: str | None = Field(None, description="Name of a built-in generator.")
    label: Literal["dangerous", "benign", "unknown"] = Field(
        ..., description="Ground truth used to read results (monitor labels come from behaviour)."
    )
    role: Literal["calibration", "heldout", "stress"] = Field(
        ..., description="calibration: fits the monitor; heldout: scored only; stress: tests."
    )
    n: int = Field(1000, ge=1, description="Examples used per run (subsampled by `seed`).")
    seed: int = Field(0, description="Seed of the subsample (and of built-in generation).")

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, v: str | None) -> str | None:
        return v if v is None else GENERATORS.check(v, "")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetEntry:
        sources = [k for k in ("path", "hub", "builtin") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of 'path' (a local file or folder), 'hub' (a hub "
                             f"dataset id) or 'builtin' (a generator); got {sources or 'none'}")
        if self.hub is None and (self.config is not None or self.revision is not None):
            raise ValueError("'config' and 'revision' apply to 'hub' datasets only")
        if self.builtin is not None and self.columns is not None:
            raise ValueError("'columns' does not apply to a 'builtin' generator")
        return self


# Dataset sizes, where cheap to know: the checkpoint plan (Config.steps) and `config check`
# read them, so a file smaller than its `n` fails before the first finetune.
COUNTED_SUFFIXES = (".jsonl", ".parquet")  # row counts cheap to know: lines, parquet metadata


@functools.lru_cache(maxsize=256)
def _count_rows(path: str, size: int, mtime_ns: int) -> int:
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as f:  # iter_jsonl's rows: the non-blank lines
        return sum(1 for line in f if line.strip())


def count_rows(path: str | os.PathLike) -> int | None:
    """Rows of a local .jsonl or .parquet file without parsing them (None for other sources:
    a .json/.csv file or a save_to_disk folder is counted only by reading it). Cached per file
    version: the workflow plans every run from it."""
    p = Path(path)
    if p.suffix.lower() not in COUNTED_SUFFIXES or not p.is_file():
        return None
    st = p.stat()
    return _count_rows(str(p), st.st_size, st.st_mtime_ns)


def planned_n(entry: DatasetEntry, name: str) -> int:
    """The examples a run of dataset `name` uses (`n`), checked against the file's real row
    count where that is cheap to know; the checkpoint plan is computed from it."""
    rows = None if entry.path is None else count_rows(entry.path)
    if rows is not None and rows < entry.n:
        default = " (the default: the entry sets none)" \
            if entry.n == type(entry).model_fields["n"].default else ""
        raise ConfigError(
            f"datasets.{name}: n is {entry.n}{default} but {entry.path} has {rows} rows, so the "
            f"checkpoint plan would count examples that do not exist; set `n: {rows}` (or "
            "fewer) in the entry, or add rows to the file")
    return entry.n


def size_note(entry: DatasetEntry, name: str) -> str:
    """How `emtrait config check` knows the dataset's size (or what it assumes)."""
    if entry.builtin is not None:
        return f"built-in generator {entry.builtin}: makes exactly n = {entry.n}"
    if entry.hub is not None:
        return (f"hub dataset {entry.hub}: size not known before download; assumes at least "
                f"n = {entry.n} rows (`emtrait prepare dataset` checks)")
    rows = count_rows(entry.path)
    if rows is None:
        what = "missing" if not Path(entry.path).exists() else "not counted before reading"
        return (f"{entry.path}: {what}; assumes at least n = {entry.n} rows "
                "(`emtrait prepare dataset` checks)")
    return f"{entry.path}: {rows} rows, n = {planned_n(entry, name)} used"
