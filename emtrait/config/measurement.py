"""The `measurement` section: per-checkpoint trait measurement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from emtrait.config.base import Section


class MeasurementConfig(Section):
    """Per-checkpoint trait measurement."""

    prompts: str = Field(
        "traits",
        description="Evaluation prompts: 'traits' = the eval_prompts of traits.file, or a path "
        "to a YAML/JSONL prompt list.",
    )
    layers: Literal["chosen", "candidates"] = Field(
        "candidates", description="Measure at every candidate layer (one forward cut after the "
        "deepest; the cube and `emtrait monitor layers` compare them) or at l* only."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per measurement forward pass.")
    prefix_cache: bool = Field(
        True, description="Run the eval prompts' common token prefix (chat template, default "
        "system prompt) once into a KV cache and only the suffixes per batch; same activations "
        "to float tolerance, ~2x less compute on SmolLM2."
    )
