# Stage: traits. Once per base model: trait directions at every candidate layer, probe
# validation, layer selection (results/traits/{model}/directions.zarr) and their figures.
# `config` is not a rerun trigger (config_file in common.smk); `traits` and `entry` carry what
# the job depends on: a LoRA override or a memory bump must not re-extract the directions.
NOT_EXTRACTION_KEYS = {"training", "resources", "stress", "monitor_from"}


rule extract_traits:
    """Trait directions of one base model: extraction, probe validation, layer selection."""
    input:
        pointer=model_pointer("{model}"),
    output:
        store=directory(directions("{model}")),
        figures=directory("results/traits/{model}/figures"),
        selection="results/traits/{model}/layer_selection.json",
    log:
        "logs/traits/{model}.log",
    conda:
        "../../envs/emtrait.yaml"
    threads: 8  # capped by --cores; Snakemake exports OMP_NUM_THREADS={threads}
    resources:
        **GPU_RESOURCES,
    params:
        config=config_file,
        traits=CFG.traits.model_dump_json(),
        entry=lambda wc: CFG.model(wc.model).model_dump_json(exclude=NOT_EXTRACTION_KEYS),
    shell:
        "emtrait traits extract --config {params.config} --model {wildcards.model} --pointer {input.pointer} --out {output.store} --figures {output.figures} --selection {output.selection} --no-progress > {log} 2>&1"


FINAL_OUTPUTS.extend(directions(m) for m in MODELS)
