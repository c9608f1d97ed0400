# Input functions and params of the behavior stage's rules (behavior.smk); included by common.smk
# (snakemake --lint wants rule files free of functions).


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
