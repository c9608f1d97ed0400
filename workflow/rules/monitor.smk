# Stage: monitor. Per model: fit (regressor chosen by LOPO on calibration runs), evaluate
# (LOPO + held-out, every baseline, alarm) and, where the grid has stress conditions, stress.

MONITOR = "results/monitor/{model}"
MONITOR_FILE = "results/monitor/{model}/monitor.skops"
MONITOR_METRICS = "results/monitor/{model}/metrics.csv"
STRESS_METRICS = "results/monitor/{model}/stress_metrics.csv"
# Stress conditions: datasets with role `stress` (every model runs them) and `stress: true`
# models, which are also scored by the monitors of the calibration models (transfer).
STRESS_DATASETS = [d for d in DATASETS if CFG.dataset(d).role == "stress"]
STRESS_MODELS = [m for m in MODELS if STRESS_DATASETS or CFG.model(m).stress]
CALIBRATION_MODELS = [m for m in MODELS if not CFG.model(m).stress]


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
    params:
        config=config_file,
        # what emtrait.monitor.evaluate.fit_monitor reads (baselines, bootstrap, ... are the
        # evaluation's and the report's)
        monitor=CFG.monitor.model_dump_json(
            include={"regressors", "include_step", "threshold", "alarm_threshold", "seed"}
        ),
        traits=CFG.traits.model_dump_json(include={"monitor_set"}),
    resources:
        mem_mb=4000,
    conda:
        "../../envs/emtrait.yaml"
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
    params:
        config=config_file,
        monitor=CFG.monitor.model_dump_json(),
        roles={d: CFG.dataset(d).role for d in DATASETS},
    resources:
        mem_mb=8000,
    conda:
        "../../envs/emtrait.yaml"
    shell:
        "emtrait monitor evaluate --config {params.config} --model {wildcards.model} --cube {input.cube} --monitor {input.monitor} --predictions {output.predictions} --metrics {output.metrics} --alarms {output.alarms} --permutation-null {output.permutation_null} > {log} 2>&1"


rule monitor_stress:
    input:
        cube=cube("{model}"),
        # the model's own monitor; a stress model is also scored by every calibration model's
        monitors=lambda wildcards: [
            MONITOR_FILE.format(model=m)
            for m in [wildcards.model]
            + (CALIBRATION_MODELS if CFG.model(wildcards.model).stress else [])
        ],
    output:
        predictions=f"{MONITOR}/stress_predictions.csv",
        metrics=f"{MONITOR}/stress_metrics.csv",
    log:
        "logs/monitor/{model}/stress.log",
    params:
        config=config_file,
        monitor=CFG.monitor.model_dump_json(),
        monitors=lambda wildcards, input: " ".join(f"--monitor {m}" for m in input.monitors),
    wildcard_constraints:
        model=_alternatives(STRESS_MODELS) or "(?!)",
    resources:
        mem_mb=4000,
    conda:
        "../../envs/emtrait.yaml"
    shell:
        "emtrait monitor stress --config {params.config} --model {wildcards.model} --cube {input.cube} {params.monitors} --predictions {output.predictions} --metrics {output.metrics} > {log} 2>&1"


FINAL_OUTPUTS.extend(MONITOR_FILE.format(model=m) for m in MODELS)
FINAL_OUTPUTS.extend(MONITOR_METRICS.format(model=m) for m in MODELS)
FINAL_OUTPUTS.extend(STRESS_METRICS.format(model=m) for m in STRESS_MODELS)
