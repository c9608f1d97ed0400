"""The config file is the interface: typed sections that reject unknown keys.

One YAML file describes models, trait sets, perturbation datasets and every hyper-parameter.
`load_config` parses it into `Config`; `json_schema()` generates `config/schema.json`, which the
Snakefile validates against (a test keeps the committed schema in sync with these classes).

Each stage owns one section class, in its own module of this package (`models`, `traits`,
`datasets`, `training`, `measurement`, `behavior`, `monitor`, `screen`, `organisms`,
`variants`); `root` holds `Config` and the checks spanning sections, `load` reading and the
schema, `base` what every section shares. Names an implementation is chosen by (selectors,
generators, judges, choice rules, feature sets, regressors) are checked against
`emtrait.registry`, never by importing a stage. Every public name is importable from here.
Defaults are the paper's (arXiv 2606.07631) unless a field's description says otherwise.
"""

from emtrait.config.base import NAME_PATTERN, Name, Section
from emtrait.config.behavior import BehaviorConfig, JudgeConfig
from emtrait.config.datasets import ColumnMap, DatasetEntry
from emtrait.config.load import (
    UniqueKeyLoader,
    check_unique_keys,
    from_dict,
    json_schema,
    load_config,
    without_nulls,
)
from emtrait.config.measurement import MeasurementConfig
from emtrait.config.models import ModelEntry, PretrainedSae, Resources
from emtrait.config.monitor import MonitorConfig
from emtrait.config.organisms import OrganismEntry
from emtrait.config.root import Config, workflow_notes, workflow_problems
from emtrait.config.screen import ScreenConfig
from emtrait.config.training import (
    LATER_TRAINING_KEYS,
    ScheduleSegment,
    TrainingConfig,
    checkpoint_steps,
    total_steps,
    training_params,
    updates_per_epoch,
)
from emtrait.config.traits import RandomSet, SteeringSelection, TraitsConfig
from emtrait.config.variants import DEFAULT_VARIANT, StartFrom, VariantEntry

__all__ = [
    "DEFAULT_VARIANT", "LATER_TRAINING_KEYS", "NAME_PATTERN", "BehaviorConfig", "ColumnMap",
    "Config", "DatasetEntry", "JudgeConfig", "MeasurementConfig", "ModelEntry", "MonitorConfig",
    "Name", "OrganismEntry", "PretrainedSae", "RandomSet", "Resources", "ScheduleSegment",
    "ScreenConfig", "Section", "StartFrom", "SteeringSelection", "TraitsConfig",
    "TrainingConfig", "UniqueKeyLoader", "VariantEntry", "check_unique_keys", "checkpoint_steps",
    "from_dict", "json_schema", "load_config", "total_steps", "training_params",
    "updates_per_epoch", "without_nulls", "workflow_notes", "workflow_problems",
]
