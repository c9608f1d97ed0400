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
    wildcard_constraints:
        model=_alternatives(OWN_MONITOR_MODELS) or "(?!)",
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
    wildcard_constraints:
        model=_alternatives(OWN_MONITOR_MODELS) or "(?!)",
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


# A model with `monitor_from: A` (docs/transfer.md): A's calibrated monitor moved onto it, with
# its own directions and l* (rule extract_traits), instead of a monitor fitted on its own grid.
rule monitor_transfer:
    input:
        monitor=lambda w: MONITOR_FILE.format(model=TRANSFERRED[w.model]),
        directions=lambda w: directions(w.model),
        pointer=lambda w: model_pointer(w.model),
    output:
        monitor=f"{MONITOR}/monitor.skops",
    log:
        "logs/monitor/{model}/transfer.log",
    wildcard_constraints:
        model=_alternatives(list(TRANSFERRED)) or "(?!)",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=4000,
    params:
        config=config_file,
        model=lambda w: CFG.model(w.model).model_dump_json(
            include={"source", "candidate_layers", "system_prompt_method", "no_system_prompt"}
        ),
    shell:
        "emtrait monitor transfer --config {params.config} --model {wildcards.model} --monitor {input.monitor} --directions {input.directions} --pointer {input.pointer} --out {output.monitor} > {log} 2>&1"


# Every dataset of a transferred model is held out from its monitor: zero-shot, few-run
# (one dangerous + one benign run) and its own LOPO, side by side.
rule monitor_transfer_evaluate:
    input:
        cube=cube("{model}"),
        monitor=f"{MONITOR}/monitor.skops",
    output:
        predictions=f"{MONITOR}/transfer_predictions.csv",
        metrics=f"{MONITOR}/transfer.csv",
    log:
        "logs/monitor/{model}/transfer_evaluate.log",
    wildcard_constraints:
        model=_alternatives(list(TRANSFERRED)) or "(?!)",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=8000,
    params:
        config=config_file,
        monitor=CFG.monitor.model_dump_json(),
        labels={d: CFG.dataset(d).label for d in DATASETS},
    shell:
        "emtrait monitor transfer-evaluate --config {params.config} --model {wildcards.model} --cube {input.cube} --monitor {input.monitor} --predictions {output.predictions} --metrics {output.metrics} > {log} 2>&1"


FINAL_OUTPUTS.extend(MONITOR_FILE.format(model=m) for m in MODELS)
FINAL_OUTPUTS.extend(MONITOR_METRICS.format(model=m) for m in OWN_MONITOR_MODELS)
FINAL_OUTPUTS.extend(f"{MONITOR}/transfer.csv".format(model=m) for m in TRANSFERRED)
