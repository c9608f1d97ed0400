# Stage: screen. Per model × dataset: each example scored by the base model before (and
# independent of) any finetune; the risk is gradient alignment with the monitor's risk (or a
# projection baseline, screen.mode), so the rule waits for the model's monitor. Rule
# screen_calibration stores where the calibration datasets fall, beside the monitor (its own
# file: screening a new dataset never refits the monitor).


SCREEN_CALIBRATION = [d for d in DATASETS if CFG.datasets[d].role == "calibration"]


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
    conda:
        "../../envs/emtrait.yaml"
    # one thread each: on a 2-core run, two screens (or a screen and monitor_evaluate) share
    # the tail instead of queueing one at a time
    threads: 1
    resources:
        **GPU_PLACEMENT,
    params:
        config=config_file,
        screen=CFG.screen.model_dump_json(),
        prompts=CFG.measurement.model_dump_json(include={"prompts", "batch_size"}),
        entry=lambda wc: CFG.model(wc.model).model_dump_json(include=FINETUNE_ENTRY_KEYS),
        max_length=lambda wc: CFG.training_for(wc.model).max_length,
    shell:
        "emtrait screen --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset} --data {input.data} --pointer {input.pointer} --directions {input.directions} --monitor {input.monitor} --out {output.table} --summary {output.summary} > {log} 2>&1"


rule screen_calibration:
    """Where the calibration datasets' screens fall: the gate's default --fail-above."""
    input:
        monitor=MONITOR_FILE,
        screens=lambda wc: [
            f"{SCREEN}.json".format(model=wc.model, dataset=d) for d in SCREEN_CALIBRATION
        ],
    output:
        "results/monitor/{model}/screen_calibration.json",
    log:
        "logs/screen/{model}/calibration.log",
    conda:
        "../../envs/emtrait.yaml"
    params:
        config=config_file,
        labels={d: CFG.datasets[d].label for d in SCREEN_CALIBRATION},
        screens=lambda wc, input: " ".join(f"--screen {s}" for s in input.screens),
    shell:
        "emtrait screen-calibration --config {params.config} --model {wildcards.model} --monitor {input.monitor} {params.screens} --out {output} > {log} 2>&1"


FINAL_OUTPUTS.extend(SCREEN_SUMMARIES)
if SCREEN_SUMMARIES:
    FINAL_OUTPUTS.extend(f"results/monitor/{m}/screen_calibration.json" for m in MODELS)
