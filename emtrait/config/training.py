"""The `training` section and the step arithmetic of a run (which checkpoints it has)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from emtrait.config.base import Section, UniqueInts, UniqueStrs
from emtrait.errors import ConfigError


class ScheduleSegment(Section):
    """One stretch of a thinning checkpoint schedule."""

    every: int = Field(..., ge=1, description="Optimizer steps between checkpoints here.")
    until: int | None = Field(None, ge=1, description="Last step of this stretch (null: the "
                              "run's end).")


class TrainingConfig(Section):
    """Finetuning hyper-parameters (paper defaults); a model entry may override any key."""

    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters or full finetune.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(64, gt=0, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: UniqueStrs = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1,
        description="Module names LoRA wraps.",
    )
    learning_rate: float = Field(4e-5, gt=0, description="Peak learning rate.")
    epochs: int = Field(2, ge=1, description="Passes over the n examples.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(4, ge=1, description="Sequences per device step.")
    grad_accum: int = Field(4, ge=1, description="Gradient-accumulation steps per update.")
    max_length: int = Field(512, ge=8, description="Tokens per training sequence (truncated).")
    loss_on: Literal["full", "assistant"] = Field(
        "full", description="Loss on the whole sequence (paper) or on assistant tokens only."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto' = bf16 on GPU, fp32 on CPU."
    )
    seeds: UniqueInts = Field(
        default_factory=lambda: [42, 123, 789], min_length=1, description="One run per seed."
    )
    checkpoint_every: int = Field(10, ge=1, description="Optimizer steps between checkpoints.")
    checkpoint_steps: UniqueInts | None = Field(
        None, description="Explicit checkpoint steps (overrides checkpoint_every); 0 included."
    )
    checkpoint_schedule: list[ScheduleSegment] | None = Field(
        None, description="A thinning schedule for long runs, e.g. [{every: 10, until: 200}, "
        "{every: 100}]: every 10 steps up to 200, then every 100 (overrides checkpoint_every)."
    )
    final: bool = Field(True, description="Also checkpoint the last step.")
    keep_activations: Literal["all", "step0"] = Field(
        "all", description="'step0' keeps only step 0's activations (they fix norm0); later "
        "steps store projections and drift only (activation rows NaN, no chunks on disk)."
    )
    logging_steps: int = Field(1, ge=1, description="Steps between training-loss records.")
    report_to: UniqueStrs = Field(
        default_factory=lambda: ["auto"], description="Dashboards the workflow's finetune logs "
        "loss and emtrait/drift/<trait> to (transformers' report_to names, e.g. tensorboard, "
        "wandb): 'auto' = TensorBoard when installed (event files in the run folder's "
        "tensorboard/), 'none' = no dashboard. Never reruns a run.",
    )

    @field_validator("checkpoint_steps")
    @classmethod
    def _increasing(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(b <= a for a, b in zip(v, v[1:], strict=False)) or (v and v[0] < 0):
                raise ValueError(f"checkpoint steps must be >= 0 and strictly increasing, got {v}")
        return v

    @model_validator(mode="after")
    def _one_schedule(self) -> TrainingConfig:
        if self.checkpoint_steps is not None and self.checkpoint_schedule is not None:
            raise ValueError("give checkpoint_steps or checkpoint_schedule, not both")
        return self


# Keys added after runs existed: left out of a run's params while at their default, so adding
# them did not rerun anything already computed.
LATER_TRAINING_KEYS = {"checkpoint_schedule": None, "keep_activations": "all"}


def training_params(training: TrainingConfig) -> str:
    """What a finetune job depends on, as JSON (a change reruns exactly the affected runs)."""
    exclude = {"seeds", "report_to"} | {k for k, v in LATER_TRAINING_KEYS.items()
                           if getattr(training, k) == v}
    return training.model_dump_json(exclude=exclude)


def updates_per_epoch(n: int, training: TrainingConfig) -> int:
    """Optimizer updates per epoch, counted as HF Trainer does (a partial accumulation counts)."""
    batches = math.ceil(n / training.batch_size)
    return max(1, math.ceil(batches / training.grad_accum))


def total_steps(n: int, training: TrainingConfig) -> int:
    """Optimizer updates in a whole run of `n` examples."""
    return updates_per_epoch(n, training) * training.epochs


def checkpoint_steps(n: int, training: TrainingConfig) -> list[int]:
    """The static list of steps measured in a run: 0, every k, and the final step."""
    last = total_steps(n, training)
    if training.checkpoint_steps is not None:
        steps = list(training.checkpoint_steps)
        beyond = [s for s in steps if s > last]
        if beyond:
            raise ConfigError(
                f"training.checkpoint_steps {beyond} lie beyond the run's last step {last} "
                f"(n={n}, batch_size={training.batch_size}, grad_accum={training.grad_accum}, "
                f"epochs={training.epochs}); remove them or raise epochs/n"
            )
    elif training.checkpoint_schedule is not None:
        steps, start = [0], 0
        for seg in training.checkpoint_schedule:
            end = last if seg.until is None else min(seg.until, last)
            steps += [s for s in range(start + seg.every, end + 1, seg.every) if s > steps[-1]]
            start = steps[-1]
            if end >= last:
                break
    else:
        steps = list(range(0, last + 1, training.checkpoint_every))
    if 0 not in steps:
        steps = [0, *steps]
    if training.final and steps[-1] != last:
        steps.append(last)
    return steps
