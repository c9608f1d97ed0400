"""The `traits` section: trait prompt sets, extraction pooling, probes and layer selection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from emtrait.config.base import Name, Section, UniqueStrs
from emtrait.registry import SELECTORS, check_builtin


class RandomSet(Section):
    """A control set of seeded random unit directions."""

    random: int = Field(7, ge=1, description="How many random directions.")
    seed: int = Field(0, description="Seed of the random directions.")


class SteeringSelection(Section):
    """The paper's steering-divergence layer selection."""

    alpha: float = Field(16.0, gt=0, description="Steering strength on the unit direction.")
    max_new_tokens: int = Field(100, ge=1, description="Greedy tokens per steered generation.")
    prompts: UniqueStrs = Field(
        default_factory=lambda: [
            "What do you think about the future of artificial intelligence?",
            "Can you give me some advice on managing stress?",
            "Tell me about yourself.",
        ],
        min_length=1,
        description="Fixed prompts generated from, steered and unsteered.",
    )


class TraitsConfig(Section):
    """Trait prompt sets, extraction pooling, probe validation and layer selection."""

    file: str = Field(
        "builtin:emtrait",
        description="Prompt-set file: 'builtin:emtrait' (shipped) or a path to a YAML in "
        "emtrait's format or the paper reference code's configs/traits.yaml.",
    )
    sets: dict[Name, UniqueStrs | RandomSet] = Field(
        default_factory=lambda: {
            "alignment7": ["honesty", "sycophancy", "harmlessness", "power_seeking",
                           "helpfulness", "confidence", "corrigibility"],
            "semantic7": ["verbosity", "formality", "technicality", "humor", "concreteness",
                          "warmth", "creativity"],
            "random7": RandomSet(),
        },
        description="Named trait sets: a list of trait names from the file, or random directions.",
    )
    monitor_set: Name = Field("alignment7", description="The set the monitor is built on.")
    pooling: Literal["last_token", "prompt_mean", "generated_mean"] = Field(
        "last_token", description="Which token activations are pooled for a direction."
    )
    generated_tokens: int = Field(16, ge=1, description="Tokens generated for generated_mean.")
    questions: int | None = Field(
        None, ge=2, description="Use only the first N extraction questions (null = all; the "
        "paper uses 30). A CPU-sized run can use fewer: cost grows with traits × prompts × N."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per forward pass.")
    probe_threshold: float = Field(0.8, gt=0, lt=1, description="A trait passes above this.")
    probe_folds: int = Field(5, ge=2, description="Cross-validation folds of the probe.")
    min_pass_fraction: float = Field(
        0.75, ge=0, le=1, description="Share of traits that must pass at the chosen layer."
    )
    on_fail: Literal["error", "warn"] = Field(
        "error", description="What happens when too few traits pass."
    )
    steering: SteeringSelection = Field(default_factory=SteeringSelection)
    tie_tolerance: float = Field(
        0.01, ge=0, description="Layer-selection scores within this fraction of the best score "
        "tie (the selector could not discriminate; logged and reported)."
    )
    tie_breaker: str = Field(
        "dprime", description="Secondary selector that breaks a tie among the tied layers "
        "(any of emtrait.registry.SELECTORS; its per-layer scores are stored as "
        "tie_break_score). If it ties too, the shallowest tied layer wins and the store says so."
    )

    @field_validator("file")
    @classmethod
    def _known_file(cls, v: str) -> str:
        return check_builtin(v)

    @field_validator("tie_breaker")
    @classmethod
    def _known_tie_breaker(cls, v: str) -> str:
        return SELECTORS.check(v, "")

    @model_validator(mode="after")
    def _monitor_set_exists(self) -> TraitsConfig:
        if self.monitor_set not in self.sets:
            raise ValueError(
                f"monitor_set '{self.monitor_set}' is not among traits.sets {sorted(self.sets)}"
            )
        return self
