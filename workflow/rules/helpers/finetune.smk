# Input functions and params of the finetune stage's rules (finetune.smk); included by common.smk
# (snakemake --lint wants rule files free of functions).


def finetune_inputs(wildcards):
    """Pointer, dataset, directions, and the measurement prompt file when it is a path."""
    inputs = {
        "pointer": model_pointer(wildcards.model),
        "data": dataset_file(wildcards.dataset),
        "directions": directions(wildcards.model),
    }
    if CFG.measurement.prompts != "traits":
        inputs["prompts"] = CFG.measurement.prompts
    return inputs
