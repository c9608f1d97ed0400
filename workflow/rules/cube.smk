# Stage: cube. One Zarr cube per model (results/cube/{model}.zarr) from all its runs' stores and
# all their behavioural em.json labels, passed as files; open it with
#   xr.open_zarr("results/cube/{model}.zarr", consolidated=False)
# The same command merges the calibration runs alone into results/cube/{model}.calibration.zarr,
# the monitor's training data: a held-out or stress dataset (added, edited, removed) changes
# neither that cube nor, so, the fit, its danger axis or any screen.

CALIBRATION_DATASETS = [d for d in DATASETS if CFG.dataset(d).role == "calibration"]


rule merge_cube:
    """Merge a model's run stores and behaviour labels into its cube."""
    input:
        unpack(lambda wildcards: cube_inputs(wildcards.model, DATASETS)),
    output:
        directory(cube("{model}")),
    log:
        "logs/cube/{model}.log",
    localrule: True
    conda:
        "../../envs/emtrait.yaml"
    params:
        config=config_file,
        runs=lambda wildcards, input: " ".join(f"--run {p}" for p in input.runs),
        em=lambda wildcards, input: " ".join(f"--em {p}" for p in input.em),
        threshold=CFG.behavior.threshold,
        labels=cube_labels(DATASETS),
    shell:
        "emtrait cube merge --config {params.config} --model {wildcards.model} {params.runs} {params.em} --out {output} > {log} 2>&1"


use rule merge_cube as merge_calibration_cube with:
    input:
        unpack(lambda wildcards: cube_inputs(wildcards.model, CALIBRATION_DATASETS)),
    output:
        directory(calibration_cube("{model}")),
    log:
        "logs/cube/{model}.calibration.log",
    params:
        labels=cube_labels(CALIBRATION_DATASETS),


FINAL_OUTPUTS.extend(cube(m) for m in MODELS)
