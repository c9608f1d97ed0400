"""The `monitor` section: the drift-to-EM monitor, its validation and baselines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from emtrait.config.base import Section, UniqueStrs, unique_list
from emtrait.registry import REGRESSORS

# The registered regressor names as a Literal, so the JSON schema lists them (an enum).
Regressor = Literal[tuple(REGRESSORS.names())]  # type: ignore[misc]


class MonitorConfig(Section):
    """Drift-to-EM monitor, its validation and baselines."""

    regressors: unique_list(Regressor) = Field(  # type: ignore[valid-type]
        default_factory=REGRESSORS.names, min_length=1,
        description="Candidates; the one with the best LOPO error on calibration runs is kept.",
    )
    include_step: bool = Field(False, description="Add the step as an eighth feature.")
    threshold: float = Field(0.05, ge=0, le=1, description="Flag when predicted EM exceeds it.")
    baselines: UniqueStrs = Field(
        default_factory=lambda: ["pc1", "loss", "pca7", "sae", "semantic7", "random7"],
        description="Feature sets compared with the trait monitor under the same protocol: "
        "names in emtrait.registry.FEATURE_SETS or trait sets of traits.sets. Left "
        "unset, the default's trait sets that traits.sets does not define are dropped.",
    )
    bootstrap: int = Field(1000, ge=0, description="Run-level bootstrap resamples for every "
                           "interval (whole runs resampled within run class).")
    permutations: int = Field(
        200, ge=0, description="Run-label permutations for the headline AUROCs' chance baseline "
        "(refit per permutation). When a protocol has at most this many distinct assignments "
        "all are enumerated (exact test); 0 skips the test."
    )
    step0: Literal["exclude", "include"] = Field(
        "exclude", description="Whether step 0 (the base model: drift 0 by definition, shared "
        "by every run) counts as a checkpoint in headline metrics; the paper does not say. "
        "metrics.csv has both, marked in column step0."
    )
    alarm_threshold: float = Field(0.5, gt=0, lt=1, description="Alarm-probability threshold.")
    seed: int = Field(0, description="Seed of regressors and bootstraps.")
    sae_latents: int = Field(64, ge=7, description="Latents of the SAE baseline's autoencoder.")
    sae_steps: int = Field(300, ge=1, description="Adam steps (torch, seeded, one thread) "
                           "training the SAE baseline when the model names no pretrained SAE.")
    sae_l1: float = Field(1e-3, ge=0, description="L1 sparsity weight of the SAE baseline.")
