# Stage: cube. One Zarr cube per model (results/cube/{model}.zarr) from all its runs and all
# their behavioural em.json labels; open it with
#   xr.open_zarr("results/cube/{model}.zarr", consolidated=False)


rule merge_cube:
    """Merge a model's run stores and behaviour labels into its cube."""
    input:
        runs=cube_run_files,
        em=cube_em_files,
    output:
        directory(cube("{model}")),
    log:
        "logs/cube/{model}.log",
    params:
        config=config_file,
        runs=lambda wc: [run_dir(wc.model, d, s) for d, s in runs_of(wc.model)],
        behavior_root=lambda wc: behavior_root(wc.model),
        threshold=CFG.behavior.threshold,
        labels=lambda wc: {d: [CFG.dataset(d).label, CFG.dataset(d).role] for d in DATASETS},
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    shell:
        "emtrait cube merge --config {params.config} --model {wildcards.model} --runs {params.runs} --behavior-root {params.behavior_root} --out {output} > {log} 2>&1"


FINAL_OUTPUTS.extend(cube(m) for m in MODELS)
