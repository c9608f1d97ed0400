# Stage: finetune. One job per model x dataset x seed: finetune with trait measurement at every
# checkpoint (results/runs/{model}/{dataset}/seed{seed}/). A killed job started again resumes
# from its last complete checkpoint, kept in the run folder's .inprogress/ (not an output, so
# Snakemake does not delete it). Params hold exactly what a run's numbers depend on: editing a
# hyper-parameter reruns the affected runs only (`seeds` is left out: adding a seed adds a run).

RUN = run_dir("{model}", "{dataset}", "{seed}")


rule finetune:
    """Finetune one model on one dataset with one seed, measuring every checkpoint in-process."""
    input:
        unpack(finetune_inputs),
    output:
        measure=directory(f"{RUN}/measure.zarr"),
        adapters=directory(f"{RUN}/adapters"),
        train_log=f"{RUN}/train_log.csv",
        done=f"{RUN}/done.json",
    log:
        "logs/finetune/{model}/{dataset}/seed{seed}.log",
    conda:
        "../../envs/emtrait.yaml"
    threads: 8  # capped by --cores; Snakemake exports OMP_NUM_THREADS={threads}
    resources:
        **GPU_RESOURCES,
    params:
        config=config_file,
        out=lambda wc: run_dir(wc.model, wc.dataset, wc.seed),
        training=lambda wc: training_params(CFG.training_for(wc.model)),
        measurement=CFG.measurement.model_dump_json(),
        prompts=CFG.traits.file if CFG.measurement.prompts == "traits" else "",
        dataset=lambda wc: CFG.dataset(wc.dataset).model_dump_json(),
        entry=lambda wc: CFG.model(wc.model).model_dump_json(include=FINETUNE_ENTRY_KEYS),
    shell:
        "emtrait finetune --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset} --seed {wildcards.seed} --pointer {input.pointer} --data {input.data} --directions {input.directions} --out {params.out} > {log} 2>&1"
