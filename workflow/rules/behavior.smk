# Stage: behavior. Behavioural EM labels per run x checkpoint step, ending in em.json.
# behavior.method picks the rule set: `choice` (judge-free forced-choice proxy, one job per step)
# or `judge` (generate, then judge + score in one job). Each step's job reloads the model, so the
# jobs of one run share a group: with `group-components: ["behavior_{model}_{dataset}_{seed}=1000"]` in a
# SLURM profile, a run's steps go to one SLURM job instead of one each.

BEHAVIOR_STEP = behavior_dir("{model}", "{dataset}", "{seed}", "{step}")
BEHAVIOR_LOG = "logs/behavior/{model}/{dataset}/seed{seed}/step-{step}"
BEHAVIOR_GROUP = "behavior_{model}_{dataset}_{seed}"

from emtrait.behavior.judges import judge_kind

JUDGE_KIND = judge_kind(CFG.behavior.judge.kind)


if CFG.behavior.method == "choice":

    rule behavior_choice_base:
        input:
            pointer=lambda w: model_pointer(w.model),
        output:
            "results/behavior/{model}/choice-base.parquet",
        log:
            "logs/behavior/{model}/choice-base.log",
        conda:
            "../../envs/emtrait.yaml"
        resources:
            **GPU_PLACEMENT,
        params:
            config=config_file,
            behavior=behavior_params("choice_items", "batch_size"),
            model_entry=behavior_model_entry,
        shell:
            "emtrait behavior choice-base --config {params.config} --model {wildcards.model} --pointer {input.pointer} --out {output} > {log} 2>&1"

    rule behavior_choice:
        input:
            pointer=lambda w: model_pointer(w.model),
            adapters=behavior_adapters,
            base="results/behavior/{model}/choice-base.parquet",
        output:
            em=f"{BEHAVIOR_STEP}/em.json",
            table=f"{BEHAVIOR_STEP}/choice.parquet",
        log:
            f"{BEHAVIOR_LOG}/choice.log",
        group:
            BEHAVIOR_GROUP
        conda:
            "../../envs/emtrait.yaml"
        resources:
            **GPU_PLACEMENT,
        params:
            config=config_file,
            behavior=behavior_params(
                "choice_items",
                "choice_rule",
                "choice_margin",
                "bootstrap",
                "seed",
                "batch_size",
                "threshold",
            ),
            model_entry=behavior_model_entry,
        shell:
            "emtrait behavior choice --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset} --seed {wildcards.seed} --step {wildcards.step} --pointer {input.pointer} --adapters {input.adapters} --base-table {input.base} --table {output.table} --out {output.em} > {log} 2>&1"

elif CFG.behavior.engine == "vllm":

    # one vLLM engine per run: every step's answers in one job, adapters swapped, not reloaded
    rule behavior_generate_run:
        input:
            pointer=lambda w: model_pointer(w.model),
            adapters=behavior_adapters,
        output:
            "results/behavior/{model}/{dataset}/seed{seed}/responses-vllm.parquet",
        log:
            "logs/behavior/{model}/{dataset}/seed{seed}/generate-vllm.log",
        conda:
            "../../envs/emtrait.yaml"
        resources:
            **GPU_PLACEMENT,
        params:
            config=config_file,
            behavior=behavior_params(
                "questions",
                "selection",
                "samples",
                "temperature",
                "max_new_tokens",
                "seed",
                "engine",
                "vllm_memory",
            ),
            model_entry=behavior_model_entry,
            steps=lambda w: ",".join(str(s) for s in steps(w.model, w.dataset)),
        shell:
            "emtrait behavior generate-run --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset} --seed {wildcards.seed} --pointer {input.pointer} --adapters {input.adapters} --steps {params.steps} --out {output} > {log} 2>&1"

    rule behavior_split_run:
        input:
            "results/behavior/{model}/{dataset}/seed{seed}/responses-vllm.parquet",
        output:
            f"{BEHAVIOR_STEP}/responses.parquet",
        log:
            f"{BEHAVIOR_LOG}/split.log",
        localrule: True
        conda:
            "../../envs/emtrait.yaml"
        shell:
            "emtrait behavior split-run --responses {input} --step {wildcards.step} --out {output} > {log} 2>&1"


if CFG.behavior.method != "choice" and CFG.behavior.engine == "hf":

    rule behavior_generate:
        input:
            pointer=lambda w: model_pointer(w.model),
            adapters=behavior_adapters,
        output:
            f"{BEHAVIOR_STEP}/responses.parquet",
        log:
            f"{BEHAVIOR_LOG}/generate.log",
        group:
            BEHAVIOR_GROUP
        conda:
            "../../envs/emtrait.yaml"
        resources:
            **GPU_PLACEMENT,
        params:
            config=config_file,
            behavior=behavior_params(
                "questions",
                "selection",
                "samples",
                "temperature",
                "max_new_tokens",
                "batch_size",
                "seed",
            ),
            model_entry=behavior_model_entry,
        shell:
            "emtrait behavior generate --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset} --seed {wildcards.seed} --step {wildcards.step} --pointer {input.pointer} --adapters {input.adapters} --out {output} > {log} 2>&1"


if CFG.behavior.method != "choice":

    # `behavior label`: judge, then score under behavior.convention/threshold, in one job per
    # step (two jobs, not three, per checkpoint keep the paper grid's plan fast). A threshold change reruns it, but
    # every judgement then comes from the job's own cache: no request, no judge model loaded.
    rule behavior_label:
        input:
            responses=f"{BEHAVIOR_STEP}/responses.parquet",
            judge_pointer=lambda w: behavior_judge_pointer() or [],
        output:
            judgements=f"{BEHAVIOR_STEP}/judgements.parquet",
            usage=f"{BEHAVIOR_STEP}/judge_usage.json",
            em=f"{BEHAVIOR_STEP}/em.json",
        log:
            f"{BEHAVIOR_LOG}/label.log",
        group:
            BEHAVIOR_GROUP
        conda:
            "../../envs/emtrait.yaml"
        resources:
            gpu=1 if JUDGE_KIND.gpu else 0,
        params:
            config=config_file,
            judge=CFG.behavior.judge.model_dump_json(
                exclude={
                    "concurrency",
                    "requests_per_minute",
                    "max_retries",
                    "timeout_s",
                    "price_input_per_mtok",
                    "price_output_per_mtok",
                }
            ),
            behavior=behavior_params("convention", "threshold"),
            pointer_arg=lambda w, input: (
                f"--judge-pointer {input.judge_pointer}" if input.judge_pointer else ""
            ),
            # this job's own cache, beside its outputs: one writer per file (safe on a cluster's
            # network filesystem), not a declared output so a failed job keeps it to resume
            cache=f"{BEHAVIOR_STEP}/judge-cache.jsonl",
        shell:
            "emtrait behavior label --config {params.config} --model {wildcards.model} --dataset {wildcards.dataset} --seed {wildcards.seed} --step {wildcards.step} --responses {input.responses} --judgements {output.judgements} --usage {output.usage} --cache {params.cache} {params.pointer_arg} --out {output.em} > {log} 2>&1"


FINAL_OUTPUTS.extend(
    f"{behavior_dir(m, d, s, step)}/em.json"
    for m in MODELS
    for d, s in runs_of(m)
    for step in steps(m, d)
)
