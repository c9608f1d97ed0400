# What every stage shares: config validation and loading, wildcard constraints, paths,
# resources and the final-output list. Paths are defined here once; stage files use them. Each
# stage's own input functions are in helpers/<stage>.smk, included at the end.
import re
from pathlib import Path

import emtrait
from emtrait.config import from_dict, training_params, without_nulls
from emtrait.provenance import stable_hash
from snakemake.utils import validate

validate(without_nulls(config), "../../config/schema.json")  # `key: null` = unset
CFG = from_dict(config, source="snakemake config")

MODELS = list(CFG.models)
DATASETS = list(CFG.datasets)


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    model=_alternatives(MODELS),
    dataset=_alternatives(DATASETS),
    seed=r"\d+",
    step=r"\d+",


def effective_config():
    """The validated config, written once per content hash, for CLI commands to read.

    Rules pass this path to `emtrait ... --config`; the parts a rule depends on are also its
    `params`, so editing one key reruns exactly the jobs that read it.
    """
    text = CFG.model_dump_json(indent=1)
    path = Path(".snakemake/emtrait") / f"config-{stable_hash(text)}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


CONFIG_FILE = effective_config()


def config_file(wildcards, input):
    """CONFIG_FILE as a param that is no rerun trigger: its path changes with every config edit,
    and Snakemake does not track params computed from `input`. A rule's other params carry the
    config subtree it really depends on. Use as `params: config=config_file`."""
    return CONFIG_FILE


def emtrait_source(relpath):
    """Absolute path of an emtrait module, as an input so that editing that code reruns the rule."""
    return str(Path(emtrait.__file__).parent / relpath)


def seeds(model):
    return CFG.training_for(model).seeds


def steps(model, dataset):
    return CFG.steps(model, dataset)


def model_pointer(model):
    return f"resources/models/{model}/model.json"


def dataset_file(dataset):
    return f"results/datasets/{dataset}.jsonl"


def dataset_stats(dataset):
    return f"results/datasets/{dataset}.stats.json"


def directions(model):
    return f"results/traits/{model}/directions.zarr"


def run_dir(model, dataset, seed):
    return f"results/runs/{model}/{dataset}/seed{seed}"


SCREEN = "results/screen/{model}/{dataset}"
# screen.enabled: false drops the screen jobs and the report's screen section
SCREEN_SUMMARIES = (
    [f"{SCREEN}.json".format(model=m, dataset=d) for m in MODELS for d in DATASETS]
    if CFG.screen.enabled
    else []
)


def behavior_dir(model, dataset, seed, step):
    return f"results/behavior/{model}/{dataset}/seed{seed}/step-{step}"


def calibration_cube(model):
    """The model's calibration runs only: what its monitor is fitted on (rule monitor_fit)."""
    return f"results/cube/{model}.calibration.zarr"


def cube(model):
    return f"results/cube/{model}.zarr"


# Stress stage (stress.smk): the default variant keeps the paths above; variant runs, start
# models, variant cubes and their scores, and transfer scores live under results/stress/.
def variant_run_dir(variant, model, dataset, seed):
    if variant == "default":
        return run_dir(model, dataset, seed)
    return f"results/stress/runs/{variant}/{model}/{dataset}/seed{seed}"


def variant_behavior_dir(variant, model, dataset, seed, step):
    if variant == "default":
        return behavior_dir(model, dataset, seed, step)
    return f"results/stress/behavior/{variant}/{model}/{dataset}/seed{seed}/step-{step}"


def start_dir(variant, model, dataset, seed):
    """The merged final weights of run (variant, model, dataset, seed): a misaligned start."""
    return f"results/stress/starts/{variant}/{model}/{dataset}/seed{seed}"


def variant_pointer(variant, model):
    """The model a variant's runs train from: the base model, or a start model."""
    start = CFG.variants[variant].start_from if variant != "default" else None
    if start is None:
        return model_pointer(model)
    return f"{start_dir(start.variant, model, start.dataset, start.seed)}/model.json"


def variant_cube_path(model):
    return f"results/stress/cube/{model}.zarr"


def variant_scores_dir(model):
    return f"results/stress/monitor/{model}"


def transfer_dir(model):
    """Scores of a model's cube by other models' monitors (and of its stress datasets)."""
    return f"results/stress/transfer/{model}"


def runs_of(model):
    """(dataset, seed) pairs of one model, in config order."""
    return [(d, s) for d in DATASETS for s in seeds(model)]


def model_resource(key):
    """A resource of the model entry, scaled by SLURM attempt for memory and runtime."""

    def get(wildcards, attempt):
        value = getattr(CFG.model(wildcards.model).resources, key)
        if key in ("mem_mb", "runtime") and value is not None:
            return value * attempt
        return value

    return get


# Resources of GPU rules, from the model entry. Heavy jobs (extraction, finetuning) take all of
# them; per-checkpoint jobs take only placement and memory (their runtime is not a finetune's,
# and a SLURM group adds its members' runtimes up).
GPU_PLACEMENT = {
    key: model_resource(key)
    for key in ("gpu", "gpu_model", "mem_mb", "slurm_partition", "slurm_extra")
}
GPU_RESOURCES = {
    **GPU_PLACEMENT,
    **{key: model_resource(key) for key in ("cpus_per_gpu", "runtime")},
}


def final_outputs(wildcards=None):
    """Everything `rule all` asks for; stage files append as they are built.

    As `rule all`'s input function it runs only when the whole workflow is requested, and then
    first refuses a config whose later stages would fail only after every finetune
    (emtrait.config.workflow_problems); named targets of single stages may need less."""
    from emtrait.config import workflow_problems
    from emtrait.errors import ConfigError

    problems = workflow_problems(CFG)
    if problems:
        raise ConfigError(
            "the whole workflow cannot run on this config:\n  - "
            + "\n  - ".join(problems)
            + "\n(name targets to run single stages)"
        )
    return list(FINAL_OUTPUTS)


FINAL_OUTPUTS = []


# conda helper (envs/emtrait.post-deploy.sh) -----------------------------------------------------
def _export_emtrait_src():
    """With --sdm conda, the env's post-deploy script installs emtrait from this checkout: the
    folder above workflow/ that holds these rules (not workflow.basedir, which is the user's own
    workflow/ when this workflow is used as a module)."""
    import os

    rules = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
    os.environ.setdefault("EMTRAIT_SRC", str(rules.parents[1]))


_export_emtrait_src()


def check_unique_config_keys():
    """Snakemake's YAML reader keeps the last of two equal keys (e.g. a dataset named twice);
    emtrait refuses such config files, naming the file and line."""
    from emtrait.config import check_unique_keys

    for path in workflow.configfiles:
        check_unique_keys(path)


# Model-entry keys a run's numbers depend on (not layers or resources: directions carry l*); the
# finetune, behaviour, screen and stress rules carry them as params.
FINETUNE_ENTRY_KEYS = {
    "source",
    "revision",
    "trust_remote_code",
    "dtype",
    "system_prompt_method",
    "no_system_prompt",
}


# Each stage's own input functions and params, one file per stage (rule files hold only rules).
include: "helpers/prepare.smk"
include: "helpers/finetune.smk"
include: "helpers/behavior.smk"
include: "helpers/cube.smk"
include: "helpers/stress.smk"
include: "helpers/monitor.smk"
