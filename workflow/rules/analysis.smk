# Stage: analysis. Geometry of trait drift: one PCA pooled over every model's cube.
# Stress models (`stress: true`) are drawn in the trajectories but not fitted (as in the paper).
# `config` params are lambdas of `input`: the config file's path changes with every edit and
# Snakemake does not track such params; the other params carry what a rule depends on.

ANALYSIS = "results/analysis"


rule pca:
    input:
        cubes=[cube(m) for m in MODELS],
    output:
        pca=f"{ANALYSIS}/pca.json",
        final=f"{ANALYSIS}/final_drift.csv",
        trajectories=f"{ANALYSIS}/trajectories.csv",
    log:
        "logs/analysis/pca.log",
    conda:
        "../../envs/emtrait.yaml"
    resources:
        mem_mb=4000,
    params:
        config=config_file,
        cubes=lambda wildcards, input: " ".join(f"--cube {c}" for c in input.cubes),
        traits=CFG.traits.model_dump_json(include={"monitor_set", "sets"}),
        stress=[m for m in MODELS if CFG.model(m).stress],
    shell:
        "emtrait analysis pca --config {params.config} {params.cubes} --pca {output.pca} --final {output.final} --trajectories {output.trajectories} > {log} 2>&1"


FINAL_OUTPUTS.append(f"{ANALYSIS}/pca.json")
