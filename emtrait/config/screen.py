"""The `screen` section: screening finetuning data before training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from emtrait.config.base import Section


class ScreenConfig(Section):
    """Screening finetuning data before training (`emtrait screen`, rule `screen`)."""

    enabled: bool = Field(True, description="Screen every dataset (rule screen) and put the "
                          "screen-vs-outcome section in the report; false skips both.")
    mode: Literal["gradient", "none", "generated"] = Field(
        "gradient", description="'gradient': -<grad L_example, grad R>, the first-order change "
        "of the monitor's risk R from a training step on each example, over the weights the "
        "finetune trains (needs the monitor); baselines: 'none', the normalised projection of "
        "each example's assistant tokens; 'generated', minus that of the base model's own "
        "greedy reply to the same context (costs a generation per example)."
    )
    method: Literal["jvp", "backward"] = Field(
        "jvp", description="Gradient mode: batched forward-mode (jvp) or the per-example "
        "backward reference (same numbers; on CPU it measured cheaper for SmolLM2)."
    )
    breakdown: bool = Field(False, description="Gradient mode: also one score per trait (one "
                            "JVP per trait: 7x the cost of the risk alone).")
    projection_baseline: bool = Field(
        True, description="Gradient mode: also score the 'none' projection of the same "
        "examples (one more forward each), so the report shows the two side by side."
    )
    sample: int | None = Field(
        None, ge=1, description="Score a seeded sample of this many examples per dataset "
        "(the dataset score and its interval come from the sample); null = every example."
    )
    max_length: int | None = Field(
        None, ge=8, description="Tokens per example (truncated as the finetune truncates); null "
        "= the model's training.max_length."
    )
    batch_size: int = Field(8, ge=1, description="Examples per forward pass.")
    reply_tokens: int = Field(64, ge=1, description="Greedy tokens per reply in 'generated'.")
    bootstrap: int = Field(1000, ge=0, description="Poisson-bootstrap replicates of the "
                           "dataset score's 95% interval.")
    top: int = Field(10, ge=0, description="Most suspicious examples kept in the summary.")
    seed: int = Field(0, description="Seed of the bootstrap.")
