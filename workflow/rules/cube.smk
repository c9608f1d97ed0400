# Stage: cube. One Zarr cube per model (results/cube/{model}.zarr) from all its runs' stores and
# all their behavioural em.json labels, passed as files; open it with
#   xr.open_zarr("results/cube/{model}.zarr", consolidated=False)


rule merge_cube:
    """Merge a model's run stores and behaviour labels into its cube."""
    input:
        runs=cube_run_stores,
        done=cube_run_done,
        em=cube_em_files,
    output:
        directory(cube("{model}")),
    log:
        "logs/cube/{model}.log",
    params:
        config=config_file,
        runs=lambda wildcards, input: " ".join(f"--run {p}" for p in input.runs),
        em=lambda wildcards, input: " ".join(f"--em {p}" for p in input.em),
        threshold=CFG.behavior.threshold,
        labels=lambda wc: {d: [CFG.dataset(d).label, CFG.dataset(d).role] for d in DATASETS},
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    shell:
        "emtrait cube merge --config {params.config} --model {wildcards.model} {params.runs} {params.em} --out {output} > {log} 2>&1"


FINAL_OUTPUTS.extend(cube(m) for m in MODELS)
