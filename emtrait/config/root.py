"""The root `Config`: every section, and the checks that span sections.

Cross-checks that need an implementation's names ask `emtrait.registry`, never a stage module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from emtrait.config.base import Name, Section, config_error
from emtrait.config.behavior import BehaviorConfig
from emtrait.config.datasets import DatasetEntry
from emtrait.config.measurement import MeasurementConfig
from emtrait.config.models import ModelEntry
from emtrait.config.monitor import MonitorConfig
from emtrait.config.organisms import OrganismEntry
from emtrait.config.screen import ScreenConfig
from emtrait.config.training import TrainingConfig, checkpoint_steps
from emtrait.config.traits import TraitsConfig
from emtrait.config.variants import DEFAULT_VARIANT, VariantEntry
from emtrait.errors import ConfigError, did_you_mean
from emtrait.provenance import stable_hash
from emtrait.registry import FEATURE_SETS, Registry, check_feature_set


class Config(Section):
    """A whole emtrait configuration."""

    models: dict[Name, ModelEntry] = Field(..., min_length=1, description="Base models.")
    traits: TraitsConfig = Field(default_factory=TraitsConfig)
    datasets: dict[Name, DatasetEntry] = Field(
        ..., min_length=1, description="Perturbation datasets (one finetune per model×seed)."
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    measurement: MeasurementConfig = Field(default_factory=MeasurementConfig)
    behavior: BehaviorConfig = Field(default_factory=BehaviorConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    screen: ScreenConfig = Field(default_factory=ScreenConfig)
    organisms: dict[Name, OrganismEntry] = Field(
        default_factory=dict,
        description="Model organisms a model entry can use as `source: organism:<name>`.",
    )
    variants: dict[Name, VariantEntry] = Field(
        default_factory=dict,
        description="Training variants (stress tests): each runs its models × datasets × seeds "
        "with other training settings or from another run's weights, scored by the base "
        "model's monitor.",
    )

    @model_validator(mode="after")
    def _vllm_needs_adapters(self) -> Config:
        if self.behavior.engine == "vllm" and self.behavior.method == "judge":
            full = [m for m in self.models if self.training_for(m).method == "full"]
            if full:
                raise ValueError(f"behavior.engine 'vllm' swaps LoRA adapters, but models {full} "
                                 "finetune fully (training.method: full); use behavior.engine: hf")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_baselines(cls, data: Any) -> Any:
        """Unset monitor.baselines + own traits.sets: drop default sets that are not defined."""
        if not isinstance(data, dict):
            return data
        mon, traits = data.get("monitor") or {}, data.get("traits") or {}
        if (isinstance(mon, dict) and "baselines" not in mon and isinstance(traits, dict)
                and isinstance(traits.get("sets"), dict)):
            default = MonitorConfig.model_fields["baselines"].default_factory()
            keep = [b for b in default if b in FEATURE_SETS or b in traits["sets"]]
            data = {**data, "monitor": {**mon, "baselines": keep}}
        return data

    @model_validator(mode="after")
    def _baselines_are_extracted(self) -> Config:
        for i, name in enumerate(self.monitor.baselines):
            check_feature_set(name, list(self.traits.sets), key=f"monitor.baselines[{i}]")
        return self

    @model_validator(mode="after")
    def _model_training_ok(self) -> Config:
        """Each model's training overrides are checked at load, not when its finetune starts."""
        for model in self.models:
            try:
                self.training_for(model)
            except ConfigError as e:  # keep only the lines naming the bad keys
                raise ValueError(str(e).split("\n", 1)[-1].strip()) from None
        return self

    @model_validator(mode="after")
    def _variants_ok(self) -> Config:
        for name, v in self.variants.items():
            where = f"variants.{name}"
            if name == DEFAULT_VARIANT:
                raise ValueError(f"{where}: '{DEFAULT_VARIANT}' names the base grid; pick "
                                 "another variant name")
            for key in v.training:
                if key not in TrainingConfig.model_fields:
                    hint = did_you_mean(key, list(TrainingConfig.model_fields))
                    raise ValueError(f"{where}.training.{key}: unknown training key.{hint} "
                                     f"Known: {', '.join(TrainingConfig.model_fields)}")
            for section, names, table in (("models", v.models, self.models),
                                          ("datasets", v.datasets, self.datasets)):
                for n in names or []:
                    if n not in table:
                        hint = did_you_mean(n, list(table))
                        raise ValueError(f"{where}.{section}: '{n}' is not under '{section}'."
                                         f"{hint} Known: {sorted(table)}")
            for model in self.variant_models(name):
                try:
                    self.training_for(model, name)
                except ConfigError as e:  # keep only the lines naming the bad keys
                    raise ValueError(str(e).split("\n", 1)[-1].strip()) from None
        for name in self.variants:
            self._check_start(name)
        return self

    def _check_start(self, name: str) -> None:
        seen = [name]
        current = self.variants[name].start_from
        while current is not None:
            src = current.variant
            if src != DEFAULT_VARIANT and src not in self.variants:
                hint = did_you_mean(src, list(self.variants))
                raise ValueError(f"variants.{seen[-1]}.start_from.variant: no variant '{src}'."
                                 f"{hint} Known: {[DEFAULT_VARIANT, *self.variants]}")
            if src in seen:
                raise ValueError("variants: starting points form a cycle "
                                 f"{' -> '.join([*seen, src])}; one of them must start from "
                                 "a run of another variant or of the default grid")
            for model in self.variant_models(seen[-1]):
                grid = self.variant_runs(src, model)
                if (current.dataset, current.seed) not in grid:
                    raise ValueError(
                        f"variants.{seen[-1]}.start_from: no run {current.dataset} seed "
                        f"{current.seed} of model {model} in variant '{src}' (its runs: "
                        f"{sorted(grid) or 'none'}); pick one of them, or restrict "
                        f"variants.{seen[-1]}.models")
            seen.append(src)
            current = self.variants[src].start_from if src != DEFAULT_VARIANT else None

    def variant_models(self, variant: str) -> list[str]:
        """Models a variant applies to (every model for the default grid)."""
        if variant == DEFAULT_VARIANT:
            return list(self.models)
        return list(self.variant(variant).models or self.models)

    def variant_datasets(self, variant: str) -> list[str]:
        """Datasets a variant applies to (every dataset for the default grid)."""
        if variant == DEFAULT_VARIANT:
            return list(self.datasets)
        return list(self.variant(variant).datasets or self.datasets)

    def variant_runs(self, variant: str, model: str) -> list[tuple[str, int]]:
        """(dataset, seed) runs of `model` in a variant ([] when it does not apply)."""
        if model not in self.variant_models(variant):
            return []
        seeds = self.training_for(model, variant).seeds
        return [(d, s) for d in self.variant_datasets(variant) for s in seeds]

    def root_run(self, variant: str) -> tuple[str, str, int] | None:
        """The (variant, dataset, seed) at the end of a chain of starting points: its step 0 is
        the base model (None when `variant` itself starts from the base model)."""
        start = None if variant == DEFAULT_VARIANT else self.variants[variant].start_from
        found = None
        while start is not None:
            found = (start.variant, start.dataset, start.seed)
            start = None if start.variant == DEFAULT_VARIANT else \
                self.variants[start.variant].start_from
        return found

    def model(self, name: str) -> ModelEntry:
        """Look a model up by name, with a did-you-mean error."""
        return Registry("model", "models", self.models).get(name)

    def dataset(self, name: str) -> DatasetEntry:
        """Look a dataset up by name, with a did-you-mean error."""
        return Registry("dataset", "datasets", self.datasets).get(name)

    def organism(self, name: str) -> OrganismEntry:
        """Look an organism up by name, with a did-you-mean error."""
        return Registry("organism", "organisms", self.organisms).get(name)

    def variant(self, name: str) -> VariantEntry:
        """Look a training variant up by name (not 'default'), with a did-you-mean error."""
        return Registry("variant", "variants", self.variants).get(name)

    def training_for(self, model: str, variant: str | None = None) -> TrainingConfig:
        """The global training section with the model's (then the variant's) overrides applied
        and validated."""
        overrides = dict(self.model(model).training)
        prefix: tuple = ("models", model, "training")
        if variant not in (None, DEFAULT_VARIANT):
            overrides.update(self.variant(variant).training)
            prefix = ("variants", variant, "training")
        if not overrides:
            return self.training
        merged = {**self.training.model_dump(), **overrides}
        try:
            return TrainingConfig.model_validate(merged)
        except ValidationError as e:
            raise config_error(e, prefix=prefix) from None

    def steps(self, model: str, dataset: str, variant: str | None = None) -> list[int]:
        """Checkpoint steps of the runs of `model` on `dataset` (in a variant); `n` is checked
        against a local file's row count first (`emtrait.config.datasets.planned_n`)."""
        from emtrait.config.datasets import planned_n

        n = planned_n(self.dataset(dataset), dataset)
        return checkpoint_steps(n, self.training_for(model, variant))

    def with_variant(self, variant: str) -> Config:
        """This config as a variant's runs see it: the variant's training overrides folded into
        every model entry, so code reading `training_for(model)` trains the variant."""
        if variant == DEFAULT_VARIANT:
            return self
        extra = self.variant(variant).training
        models = {m: e.model_copy(update={"training": {**e.training, **extra}})
                  for m, e in self.models.items()}
        return self.model_copy(update={"models": models})

    def hash(self) -> str:
        """A short content hash of the whole config (stamped on artifacts)."""
        return stable_hash(self.model_dump(mode="json"))


def workflow_problems(cfg: Config) -> list[str]:
    """What would stop the whole workflow (`rule all`) only after finetuning, found from the
    config alone. A config for single stages (one dataset to prepare or finetune) may have them:
    `emtrait config check` and a Snakemake run of the default target refuse them."""
    problems = []
    calibration = [d for d, e in cfg.datasets.items() if e.role == "calibration"]
    if len(calibration) < 2:
        problems.append(
            f"datasets: {len(calibration)} with role 'calibration' ({calibration}); the monitor's "
            "leave-one-perturbation-out needs at least two (rule monitor_fit would fail after "
            "every finetune) — mark more datasets `role: calibration`")
    labels = {d: cfg.datasets[d].label for d in calibration}
    for label in ("dangerous", "benign"):
        if calibration and label not in labels.values():
            problems.append(
                f"datasets: no calibration dataset has label '{label}' (calibration labels: "
                f"{labels}); the monitor cannot be fitted or validated on one class (rule "
                f"monitor_fit would fail after every finetune) — add a `label: {label}, role: "
                "calibration` dataset")
    for name, entry in cfg.models.items():  # rule build_organism reads the entry
        organism = entry.source.split(":", 1)[1] if entry.source.startswith("organism:") else None
        if organism is not None and organism not in cfg.organisms:
            hint = did_you_mean(organism, list(cfg.organisms))
            problems.append(f"models.{name}.source: no organism '{organism}' under organisms."
                            f"{hint} Known: {sorted(cfg.organisms)}; rule build_organism "
                            "needs its entry: add one there or fix the name")
    problems += _heldout_reuse(cfg)
    unknown = [d for d, label in labels.items() if label == "unknown"]
    if unknown:
        problems.append(f"datasets {unknown}: role 'calibration' with label 'unknown'; the "
                        "monitor's validation needs each calibration run's class — set label "
                        "dangerous or benign, or role: heldout")
    return problems


def _source(entry) -> str:
    """What a dataset entry reads, whatever its size, seed or selection: the perturbation."""
    if entry.path is not None:
        return f"path: {Path(entry.path).resolve()}"
    if entry.hub is not None:
        return f"hub: {entry.hub} (config {entry.config}, split {entry.split}, revision " \
               f"{entry.revision})"
    return f"builtin: {entry.builtin}"


def _heldout_reuse(cfg: Config) -> list[str]:
    """Held-out datasets that read a calibration dataset's source: the held-out protocol would
    score a perturbation the monitor was fitted on (another subsample or seed of the same data
    is the same perturbation), so its numbers would not say what they claim."""
    calibration = {_source(e): d for d, e in cfg.datasets.items() if e.role == "calibration"}
    return [f"datasets.{d}: role 'heldout' reads the same data as calibration dataset "
            f"'{calibration[_source(e)]}' ({_source(e)}); the held-out score would measure a "
            "perturbation the monitor was fitted on — point it at other data, or make it "
            "role: calibration"
            for d, e in cfg.datasets.items()
            if e.role == "heldout" and _source(e) in calibration]


def _missing_files(cfg: Config) -> list[str]:
    """Files the config names (other than datasets, whose sizes `config check` reports) that
    do not exist yet (a user may fetch them after checking): each would fail its stage."""
    named = [("traits.file", cfg.traits.file), ("behavior.choice_items", cfg.behavior.choice_items)]
    named += [(f"behavior.questions[{i}]", q) for i, q in enumerate(cfg.behavior.questions)]
    if cfg.measurement.prompts != "traits":
        named.append(("measurement.prompts", cfg.measurement.prompts))
    if cfg.behavior.method != "choice":
        named = [n for n in named if n[0] != "behavior.choice_items"]
    else:
        named = [n for n in named if not n[0].startswith("behavior.questions")]
    return [f"{key}: file '{path}' does not exist (relative paths are read from the working "
            "directory); put it there before running, fix the path or use builtin:emtrait"
            for key, path in named if not path.startswith("builtin:") and not Path(path).exists()]


def workflow_notes(cfg: Config) -> list[str]:
    """What the whole workflow can run but reports weakly: `emtrait config check` prints them."""
    notes = _missing_files(cfg)
    if cfg.monitor.bootstrap > 0:
        for label in ("dangerous", "benign"):
            datasets = [d for d, e in cfg.datasets.items()
                        if e.role == "calibration" and e.label == label]
            if any(len(datasets) * len(cfg.training_for(m).seeds) == 1 for m in cfg.models):
                notes.append(f"one {label} calibration run per model: the run-level bootstrap "
                             "resamples that one run, so the intervals of its metrics have zero "
                             "width — add a seed (training.seeds) or a dataset for a real interval")
    return notes
