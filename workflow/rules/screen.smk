# Stage: screen. Per model × dataset: each example's assistant tokens scored on the trait
# directions by the base model, before (and independent of) any finetune; the risk column is
# the projection on the monitor's danger axis, so the rule waits for the model's monitor.


rule screen:
    """Screen one prepared dataset: per-example trait scores and risk, dataset score + interval."""
    input:
        data=dataset_file("{dataset}"),
        pointer=model_pointer("{model}"),
        directions=directions("{model}"),
        monitor=MONITOR_FILE,
    output:
        table=f"{SCREEN}.parquet",
        summary=f"{SCREEN}.json",
    log:
        "logs/screen/{model}/{dataset}.log",
    params:
        config=config_file,
        screen=CFG.screen.model_dump_json(),
        prompts=CFG.measurement.model_dump_json(include={"prompts", "batch_size"}),
        entry=lambda wc: CFG.model(wc.model).model_dump_json(include=FINETUNE_ENTRY_KEYS),
        max_length=lambda wc: CFG.training_for(wc.model).max_length,
    threads: 1  # one thread each: on a 2-core run, two screens (or a screen and monitor_evaluate)
                # share the tail instead of queueing one at a time (measured in README)
    resources:
        **GPU_PLACEMENT,
    conda:
        "../../envs/emtrait.yaml"
    shell:
        "emtrait screen --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset} --data {input.data} --pointer {input.pointer} --directions {input.directions} --monitor {input.monitor} --out {output.table} --summary {output.summary} > {log} 2>&1"


FINAL_OUTPUTS.extend(SCREEN_SUMMARIES)
