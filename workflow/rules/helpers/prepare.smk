# Input functions and params of the prepare stage's rules (prepare.smk); included by common.smk
# (snakemake --lint wants rule files free of functions).


def organism_input(wildcards):
    """{'organism': folder} when the model's source is 'organism:<name>' (built by rule
    build_organism), else {} — for prepare_model's input: unpack(organism_input)."""
    source = CFG.model(wildcards.model).source
    if source.startswith("organism:"):
        return {"organism": f"resources/organisms/{source.split(':', 1)[1]}"}
    return {}


def model_source_params(wildcards):
    """What a model pointer depends on (not layers or resources: those must not re-convert)."""
    entry = CFG.model(wildcards.model)
    return entry.model_dump_json(include={"source", "revision", "trust_remote_code"})


def dataset_input(wildcards):
    """The dataset's JSONL file (so editing it reruns prepare_dataset); none for built-ins."""
    path = CFG.dataset(wildcards.dataset).path
    return [path] if path else []
