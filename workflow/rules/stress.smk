# Stage: stress. Training variants (config `variants`) of each base model: their finetunes,
# misaligned starting points merged into start models, the variants' behaviour labels (the
# behaviour rules reused with variant paths), one variant cube per model, scoring by the base
# model's calibrated monitor (never refitted); transfer: stress datasets scored by the model's own
# monitor and stress models by every calibration model's; and the report's stress section.
# Constants and input functions: helpers/stress.smk. Paths (defined in common.smk):
#   results/stress/starts/{variant}/{model}/{dataset}/seed{seed}/   start model of a source run
#   results/stress/runs/{variant}/{model}/{dataset}/seed{seed}/     variant runs
#   results/stress/behavior/{variant}/{model}/{dataset}/seed{seed}/step-{step}/em.json
#   results/stress/cube/{model}.zarr                                drift(variant, dataset, ...)
#   results/stress/monitor/{model}/                                  predictions, metrics, alarms
#   results/stress/transfer/{model}/                                 predictions, metrics
#   results/report/stress/                                          summary.md, table.csv, figure

VARIANT_STEP = variant_behavior_dir("{variant}", "{model}", "{dataset}", "{seed}", "{step}")
VARIANT_BEHAVIOR_LOG = "logs/stress/behavior/{variant}/{model}/{dataset}/seed{seed}/step-{step}"
VARIANT_GROUP = "behavior_{variant}_{model}_{dataset}_{seed}"
START = start_dir("{variant}", "{model}", "{dataset}", "{seed}")
VARIANT_RUN = variant_run_dir("{variant}", "{model}", "{dataset}", "{seed}")
# a pattern, not an input function: planning thousands of variant jobs stays cheaper
VARIANT_ADAPTERS = f"{VARIANT_RUN}/adapters"
STRESS_REPORT = "results/report/stress"


# A variant's run: the finetune job for results/stress/runs/{variant}/..., with the variant's
# training settings; a misaligned start trains from a start model (rule stress_start), whose
# pointer replaces the base model's.
rule stress_finetune:
    """Finetune one run of a training variant, measuring every checkpoint in-process."""
    input:
        unpack(stress_finetune_inputs),
    output:
        measure=directory(f"{VARIANT_RUN}/measure.zarr"),
        adapters=directory(f"{VARIANT_RUN}/adapters"),
        train_log=f"{VARIANT_RUN}/train_log.csv",
        done=f"{VARIANT_RUN}/done.json",
    log:
        "logs/stress/finetune/{variant}/{model}/{dataset}/seed{seed}.log",
    wildcard_constraints:
        variant=_alternatives(VARIANTS) or "(?!)",
    conda:
        "../../envs/emtrait.yaml"
    threads: 8
    resources:
        **GPU_RESOURCES,
    params:
        config=config_file,
        out=lambda wc: variant_run_dir(wc.variant, wc.model, wc.dataset, wc.seed),
        training=lambda wc: training_params(CFG.training_for(wc.model, wc.variant)),
        measurement=CFG.measurement.model_dump_json(),
        prompts=CFG.traits.file if CFG.measurement.prompts == "traits" else "",
        dataset=lambda wc: CFG.dataset(wc.dataset).model_dump_json(),
        entry=lambda wc: CFG.model(wc.model).model_dump_json(include=FINETUNE_ENTRY_KEYS),
    shell:
        "emtrait finetune --config {params.config} --variant {wildcards.variant} --model {wildcards.model} --dataset {wildcards.dataset} --seed {wildcards.seed} --pointer {input.pointer} --data {input.data} --directions {input.directions} --out {params.out} > {log} 2>&1"


rule stress_start:
    """Merge a source run's final weights into a start model for a misaligned-start variant."""
    input:
        pointer=lambda wc: variant_pointer(wc.variant, wc.model),
        adapters=lambda wc: f"{variant_run_dir(wc.variant, wc.model, wc.dataset, wc.seed)}/adapters",
        done=lambda wc: f"{variant_run_dir(wc.variant, wc.model, wc.dataset, wc.seed)}/done.json",
    output:
        pointer=f"{START}/model.json",
        weights=directory(f"{START}/weights"),
    log:
        "logs/stress/start/{variant}/{model}/{dataset}/seed{seed}.log",
    wildcard_constraints:
        variant=_alternatives(["default", *VARIANTS]),
    conda:
        "../../envs/emtrait.yaml"
    resources:
        **GPU_PLACEMENT,
    params:
        config=config_file,
        out=lambda wc: start_dir(wc.variant, wc.model, wc.dataset, wc.seed),
        entry=lambda wc: CFG.model(wc.model).model_dump_json(include=FINETUNE_ENTRY_KEYS),
    shell:
        "emtrait stress start --config {params.config} --model {wildcards.model} --pointer {input.pointer} --adapters {input.adapters} --out {params.out} > {log} 2>&1"


# Behaviour labels of variant runs: the behaviour stage's own rules, pointed at variant paths
# (a misaligned start's adapters sit on its start model, so its pointer replaces the base's).
if VARIANTS and CFG.behavior.method == "choice":

    use rule behavior_choice as stress_behavior_choice with:
        input:
            pointer=lambda w: variant_pointer(w.variant, w.model),
            adapters=VARIANT_ADAPTERS,
            base="results/behavior/{model}/choice-base.parquet",
        output:
            em=f"{VARIANT_STEP}/em.json",
            table=f"{VARIANT_STEP}/choice.parquet",
        log:
            f"{VARIANT_BEHAVIOR_LOG}/choice.log",
        wildcard_constraints:
            variant=_alternatives(VARIANTS),
        group:
            VARIANT_GROUP


if VARIANTS and CFG.behavior.method != "choice" and CFG.behavior.engine == "vllm":

    use rule behavior_generate_run as stress_behavior_generate_run with:
        input:
            pointer=lambda w: variant_pointer(w.variant, w.model),
            adapters=VARIANT_ADAPTERS,
        output:
            "results/stress/behavior/{variant}/{model}/{dataset}/seed{seed}/responses-vllm.parquet",
        log:
            "logs/stress/behavior/{variant}/{model}/{dataset}/seed{seed}/generate-vllm.log",
        wildcard_constraints:
            variant=_alternatives(VARIANTS),
        params:
            config=config_file,
            behavior=rules.behavior_generate_run.rule.params.behavior,
            model_entry=behavior_model_entry,
            steps=lambda w: ",".join(str(s) for s in CFG.steps(w.model, w.dataset, w.variant)),

    use rule behavior_split_run as stress_behavior_split_run with:
        input:
            "results/stress/behavior/{variant}/{model}/{dataset}/seed{seed}/responses-vllm.parquet",
        output:
            f"{VARIANT_STEP}/responses.parquet",
        log:
            f"{VARIANT_BEHAVIOR_LOG}/split.log",
        wildcard_constraints:
            variant=_alternatives(VARIANTS),


if VARIANTS and CFG.behavior.method != "choice" and CFG.behavior.engine == "hf":

    use rule behavior_generate as stress_behavior_generate with:
        input:
            pointer=lambda w: variant_pointer(w.variant, w.model),
            adapters=VARIANT_ADAPTERS,
        output:
            f"{VARIANT_STEP}/responses.parquet",
        log:
            f"{VARIANT_BEHAVIOR_LOG}/generate.log",
        wildcard_constraints:
            variant=_alternatives(VARIANTS),
        group:
            VARIANT_GROUP


if VARIANTS and CFG.behavior.method != "choice":

    use rule behavior_label as stress_behavior_label with:
        input:
            responses=f"{VARIANT_STEP}/responses.parquet",
            judge_pointer=behavior_judge_pointer() or [],
        output:
            judgements=f"{VARIANT_STEP}/judgements.parquet",
            usage=f"{VARIANT_STEP}/judge_usage.json",
            em=f"{VARIANT_STEP}/em.json",
        log:
            f"{VARIANT_BEHAVIOR_LOG}/label.log",
        wildcard_constraints:
            variant=_alternatives(VARIANTS),
        group:
            VARIANT_GROUP
        params:
            config=config_file,
            judge=rules.behavior_label.rule.params.judge,
            behavior=rules.behavior_label.rule.params.behavior,
            pointer_arg=lambda w, input: (
                f"--judge-pointer {input.judge_pointer}" if input.judge_pointer else ""
            ),
            cache=f"{VARIANT_STEP}/judge-cache.jsonl",


rule stress_cube:
    """Merge every variant's runs of a model into its variant cube."""
    input:
        unpack(stress_cube_inputs),
    output:
        directory(variant_cube_path("{model}")),
    log:
        "logs/stress/cube/{model}.log",
    wildcard_constraints:
        model=_alternatives(VARIANT_MODELS) or "(?!)",
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    params:
        config=config_file,
        args=stress_cube_args,
        # the entries of the variants' datasets only: a held-out dataset added does not rerun it
        labels=lambda wc: cube_labels(
            [d for d in DATASETS if d in {d for _, d, _ in variant_runs_of(wc.model)}]
        ),
        threshold=CFG.behavior.threshold,
    shell:
        "emtrait stress cube --config {params.config} --model {wildcards.model} {params.args} --out {output} > {log} 2>&1"


rule stress_score:
    """Score a model's variant runs with its calibrated monitor (never refitted)."""
    input:
        cube=variant_cube_path("{model}"),
        calibration=cube("{model}"),
        monitor=MONITOR_FILE,
    output:
        predictions=f"{variant_scores_dir('{model}')}/predictions.csv",
        metrics=f"{variant_scores_dir('{model}')}/metrics.csv",
        alarms=f"{variant_scores_dir('{model}')}/alarms.csv",
        trajectories=f"{variant_scores_dir('{model}')}/trajectories.csv",
    log:
        "logs/stress/score/{model}.log",
    wildcard_constraints:
        model=_alternatives(VARIANT_MODELS) or "(?!)",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=4000,
    params:
        config=config_file,
        monitor=CFG.monitor.model_dump_json(include={"alarm_threshold", "bootstrap", "seed"}),
        out=lambda wc: variant_scores_dir(wc.model),
    shell:
        "emtrait stress score --config {params.config} --cube {input.cube} --calibration-cube {input.calibration} --monitor {input.monitor} --out {params.out} > {log} 2>&1"


rule stress_transfer:
    """Score a model's stress datasets with its own monitor and, for a stress model, its whole
    cube with every calibration model's monitor (transfer)."""
    input:
        cube=cube("{model}"),
        monitors=transfer_monitors,
    output:
        predictions=f"{transfer_dir('{model}')}/predictions.csv",
        metrics=f"{transfer_dir('{model}')}/metrics.csv",
    log:
        "logs/stress/transfer/{model}.log",
    wildcard_constraints:
        model=_alternatives(STRESS_MODELS) or "(?!)",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=4000,
    params:
        config=config_file,
        monitor=CFG.monitor.model_dump_json(),
        monitors=lambda wildcards, input: " ".join(f"--monitor {m}" for m in input.monitors),
        out=lambda wc: transfer_dir(wc.model),
    shell:
        "emtrait stress transfer --config {params.config} --model {wildcards.model} --cube {input.cube} {params.monitors} --out {params.out} > {log} 2>&1"


FINAL_OUTPUTS.extend(f"{transfer_dir(m)}/metrics.csv" for m in STRESS_MODELS)


if VARIANT_MODELS or STRESS_MODELS:

    rule stress_report:
        """The report's stress section: every variant and every stress model."""
        input:
            variants=[
                f"{variant_scores_dir(m)}/{name}.csv"
                for m in VARIANT_MODELS
                for name in ("predictions", "trajectories")
            ],
            transfer=[f"{transfer_dir(m)}/predictions.csv" for m in STRESS_MODELS],
            code=emtrait_source("stress/report.py"),
        output:
            summary=report(
                f"{STRESS_REPORT}/summary.md",
                caption="../report/stress_summary.rst",
                category="Stress tests",
            ),
            table=f"{STRESS_REPORT}/table.csv",
            png=report(
                f"{STRESS_REPORT}/figures/variant_drift.png",
                caption="../report/variant_drift.rst",
                category="Stress tests",
            ),
            svg=f"{STRESS_REPORT}/figures/variant_drift.svg",
        log:
            "logs/report/stress.log",
        localrule: True
        conda:
            "../../envs/emtrait.yaml"
        params:
            config=config_file,
            report=CFG.monitor.model_dump_json(include={"alarm_threshold", "bootstrap", "seed"}),
            variant_dirs=" ".join(f"--variant-dir {variant_scores_dir(m)}" for m in VARIANT_MODELS),
            transfer_dirs=" ".join(f"--transfer-dir {transfer_dir(m)}" for m in STRESS_MODELS),
            out=lambda wildcards, output: Path(output.summary).parent,
        shell:
            "emtrait stress report --config {params.config} {params.variant_dirs} {params.transfer_dirs} --out {params.out} > {log} 2>&1"

    FINAL_OUTPUTS.append(f"{STRESS_REPORT}/summary.md")
