"""The `variants` section: training variants (stress tests of one base model's monitor)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from emtrait.config.base import Name, Section, UniqueNames

DEFAULT_VARIANT = "default"


class StartFrom(Section):
    """The run whose final weights a misaligned-start variant trains from."""

    variant: Name = Field(DEFAULT_VARIANT, description="Variant of the source run ('default': "
                          "the base grid's runs).")
    dataset: Name = Field(..., description="Dataset of the source run.")
    seed: int = Field(..., description="Seed of the source run.")


class VariantEntry(Section):
    """Other training settings for the same base model: same directions, same calibrated
    monitor (never refitted), runs under results/stress/runs/{variant}/."""

    training: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the `training` section (after the "
        "model's own), e.g. {method: full, learning_rate: 1.0e-5} or {lora_r: 64}.",
    )
    models: UniqueNames | None = Field(None, description="Models it applies to (null: all).")
    datasets: UniqueNames | None = Field(None, description="Datasets it applies to (null: all).")
    start_from: StartFrom | None = Field(
        None, description="Train from the final weights of this run instead of the base model "
        "(a misaligned starting point); drift is recorded against both starts.",
    )
