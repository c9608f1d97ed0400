"""The `datasets` section: perturbation datasets (local, hub or built-in generators)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from emtrait.config.base import Section
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
    hub: str | None = Field(None, description="Hugging Face hub dataset id, e.g. openai/gsm8k.")
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
