# The only Python in the workflow: config validation, wildcard constraints, paths, input
# functions and the final-output list. Paths are defined here once; stage files use them.
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


def cube(model):
    return f"results/cube/{model}.zarr"


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
GPU_PLACEMENT = {key: model_resource(key)
                 for key in ("gpu", "gpu_model", "mem_mb", "slurm_partition", "slurm_extra")}
GPU_RESOURCES = {**GPU_PLACEMENT,
                 **{key: model_resource(key) for key in ("cpus_per_gpu", "runtime")}}


def final_outputs(wildcards=None):
    """Everything `rule all` asks for; stage files append as they are built.

    As `rule all`'s input function it runs only when the whole workflow is requested, and then
    first refuses a config whose later stages would fail only after every finetune
    (emtrait.config.workflow_problems); named targets of single stages may need less."""
    from emtrait.config import workflow_problems
    from emtrait.errors import ConfigError

    problems = workflow_problems(CFG)
    if problems:
        raise ConfigError("the whole workflow cannot run on this config:\n  - "
                          + "\n  - ".join(problems) + "\n(name targets to run single stages)")
    return list(FINAL_OUTPUTS)


FINAL_OUTPUTS = []


# behavior stage helpers -------------------------------------------------------------------------
def behavior_params(*keys):
    """The behavior config keys a rule depends on, as JSON (a change reruns just those jobs)."""
    return CFG.behavior.model_dump_json(include=set(keys))


def behavior_model_entry(wildcards):
    """What loading and prompting the model depends on (not layers, training or resources)."""
    return CFG.model(wildcards.model).model_dump_json(include=FINETUNE_ENTRY_KEYS)


def behavior_adapters(wildcards):
    """The run's adapters/ directory (a directory() output of the finetune rule)."""
    return f"{run_dir(wildcards.model, wildcards.dataset, wildcards.seed)}/adapters"


def behavior_judge_pointer():
    """A configured model named as the hf judge is read through its pointer; else None."""
    judge = CFG.behavior.judge
    if judge.kind == "hf" and judge.model in MODELS:
        return model_pointer(judge.model)
    return None


# organism stage helpers -------------------------------------------------------------------------
def organism_input(wildcards):
    """{'organism': folder} when the model's source is 'organism:<name>' (built by rule
    build_organism), else {} — for prepare_model's input: unpack(organism_input)."""
    source = CFG.model(wildcards.model).source
    if source.startswith("organism:"):
        return {"organism": f"resources/organisms/{source.split(':', 1)[1]}"}
    return {}


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


# prepare stage helpers --------------------------------------------------------------------------
def config_file(wildcards, input):
    """CONFIG_FILE as a param that is no rerun trigger: its path changes with every config edit,
    and Snakemake does not track params computed from `input`. A rule's other params carry the
    config subtree it really depends on. Use as `params: config=config_file`."""
    return CONFIG_FILE


def model_source_params(wildcards):
    """What a model pointer depends on (not layers or resources: those must not re-convert)."""
    entry = CFG.model(wildcards.model)
    return entry.model_dump_json(include={"source", "revision", "trust_remote_code"})


def dataset_input(wildcards):
    """The dataset's JSONL file (so editing it reruns prepare_dataset); none for built-ins."""
    path = CFG.dataset(wildcards.dataset).path
    return [path] if path else []


def dataset_stats(dataset):
    return f"results/datasets/{dataset}.stats.json"


# finetune and cube stage helpers ----------------------------------------------------------------
# Model-entry keys a run's numbers depend on (not layers or resources: directions carry l*).
FINETUNE_ENTRY_KEYS = {"source", "revision", "trust_remote_code", "dtype",
                       "system_prompt_method", "no_system_prompt"}


def finetune_inputs(wildcards):
    """Pointer, dataset, directions, and the measurement prompt file when it is a path."""
    inputs = {"pointer": model_pointer(wildcards.model), "data": dataset_file(wildcards.dataset),
              "directions": directions(wildcards.model)}
    if CFG.measurement.prompts != "traits":
        inputs["prompts"] = CFG.measurement.prompts
    return inputs


def cube_run_stores(wildcards):
    """measure.zarr of every run of the model, in config order."""
    return [f"{run_dir(wildcards.model, d, s)}/measure.zarr" for d, s in runs_of(wildcards.model)]


def cube_run_done(wildcards):
    """done.json of every run (written last), so the cube waits for whole runs."""
    return [f"{run_dir(wildcards.model, d, s)}/done.json" for d, s in runs_of(wildcards.model)]


def cube_em_files(wildcards):
    """em.json of every run and checkpoint step of the model: the cube's labels."""
    m = wildcards.model
    return [f"{behavior_dir(m, d, s, step)}/em.json"
            for d, s in runs_of(m) for step in steps(m, d)]


# stress stage helpers (training variants; rules in finetune.smk and stress.smk) ----------------
# The default variant keeps the paths above; variant runs live under results/stress/.
VARIANTS = list(CFG.variants)


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


def variant_runs_of(model):
    """(variant, dataset, seed) runs of one model over every declared variant."""
    return [(v, d, s) for v in VARIANTS for d, s in CFG.variant_runs(v, model)]


def variant_cube_path(model):
    return f"results/stress/cube/{model}.zarr"


def variant_scores_dir(model):
    return f"results/stress/monitor/{model}"


VARIANT_MODELS = [m for m in MODELS if variant_runs_of(m)]


def finetune_variant_inputs(wildcards):
    """finetune_inputs, with the pointer of the model the variant trains from."""
    return {**finetune_inputs(wildcards),
            "pointer": variant_pointer(wildcards.variant, wildcards.model)}


def stress_cube_inputs(wildcards):
    """Every variant run of the model (store, done.json, em.json per step) and the root runs
    whose step 0 is the base model (for drift_from_base)."""
    m = wildcards.model
    runs = variant_runs_of(m)
    refs = [CFG.root_run(v) for v in dict.fromkeys(v for v, _, _ in runs)]
    return {
        "runs": [f"{variant_run_dir(v, m, d, s)}/measure.zarr" for v, d, s in runs],
        "done": [f"{variant_run_dir(v, m, d, s)}/done.json" for v, d, s in runs],
        "em": [f"{variant_behavior_dir(v, m, d, s, t)}/em.json"
               for v, d, s in runs for t in CFG.steps(m, d, v)],
        "references": [f"{variant_run_dir(*r[:1], m, *r[1:])}/measure.zarr"
                       for r in refs if r is not None],
    }


def stress_cube_args(wildcards):
    """--run/--em/--reference VARIANT=PATH for every variant run of the model."""
    m = wildcards.model
    runs = variant_runs_of(m)
    args = [f"--run {v}={variant_run_dir(v, m, d, s)}/measure.zarr" for v, d, s in runs]
    args += [f"--em {v}={variant_behavior_dir(v, m, d, s, t)}/em.json"
             for v, d, s in runs for t in CFG.steps(m, d, v)]
    for v in dict.fromkeys(v for v, _, _ in runs):
        root = CFG.root_run(v)
        if root is not None:
            rv, rd, rs = root
            args.append(f"--reference {v}={variant_run_dir(rv, m, rd, rs)}/measure.zarr")
    return " ".join(args)

