# Stage: monitor. Per model: fit (regressor chosen by LOPO on calibration runs) and evaluate
# (LOPO + held-out, every baseline, alarm). Scoring by other models' monitors: stress.smk.

MONITOR = "results/monitor/{model}"
MONITOR_FILE = "results/monitor/{model}/monitor.skops"
MONITOR_METRICS = "results/monitor/{model}/metrics.csv"


# The fit reads the calibration cube only (cube.smk): held-out and stress datasets feed the
# evaluation and the report, never the monitor, so adding one reruns neither the fit nor the
# screens that read the monitor's danger axis.
rule monitor_fit:
    input:
        cube=calibration_cube("{model}"),
        pointer=lambda w: model_pointer(w.model),
    output:
        monitor=f"{MONITOR}/monitor.skops",
        selection=f"{MONITOR}/selection.csv",
    log:
        "logs/monitor/{model}/fit.log",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=4000,
    params:
        config=config_file,
        # what emtrait.monitor.evaluate.fit_monitor reads (baselines, bootstrap, ... are the
        # evaluation's and the report's)
        monitor=CFG.monitor.model_dump_json(
            include={"regressors", "include_step", "threshold", "alarm_threshold", "seed"}
        ),
        traits=CFG.traits.model_dump_json(include={"monitor_set"}),
    shell:
        "emtrait monitor fit --config {params.config} --model {wildcards.model} --cube {input.cube} --pointer {input.pointer} --out {output.monitor} --selection {output.selection} > {log} 2>&1"


rule monitor_evaluate:
    input:
        cube=cube("{model}"),
        monitor=f"{MONITOR}/monitor.skops",
    output:
        predictions=f"{MONITOR}/predictions.csv",
        metrics=f"{MONITOR}/metrics.csv",
        alarms=f"{MONITOR}/alarms.csv",
        permutation_null=f"{MONITOR}/permutation_null.csv",
    log:
        "logs/monitor/{model}/evaluate.log",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=8000,
    params:
        config=config_file,
        monitor=CFG.monitor.model_dump_json(),
        roles={d: CFG.dataset(d).role for d in DATASETS},
    shell:
        "emtrait monitor evaluate --config {params.config} --model {wildcards.model} --cube {input.cube} --monitor {input.monitor} --predictions {output.predictions} --metrics {output.metrics} --alarms {output.alarms} --permutation-null {output.permutation_null} > {log} 2>&1"


rule monitor_layers:
    """The monitor's fit and validation at every measured layer: which layer monitors best."""
    input:
        cube=cube("{model}"),
    output:
        layers=f"{MONITOR}/layers.csv",
    log:
        "logs/monitor/{model}/layers.log",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=8000,
    params:
        config=config_file,
        monitor=CFG.monitor.model_dump_json(),
        traits=CFG.traits.model_dump_json(include={"monitor_set"}),
        roles={d: CFG.dataset(d).role for d in DATASETS},
    shell:
        "emtrait monitor layers --config {params.config} --model {wildcards.model} --cube {input.cube} --out {output.layers} > {log} 2>&1"


FINAL_OUTPUTS.extend(MONITOR_FILE.format(model=m) for m in MODELS)
FINAL_OUTPUTS.extend(MONITOR_METRICS.format(model=m) for m in MODELS)
