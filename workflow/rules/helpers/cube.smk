# Input functions and params of the cube stage's rules (cube.smk); included by common.smk
# (snakemake --lint wants rule files free of functions).


def cube_run_stores(wildcards):
    """measure.zarr of every run of the model, in config order."""
    return [f"{run_dir(wildcards.model, d, s)}/measure.zarr" for d, s in runs_of(wildcards.model)]


def cube_run_done(wildcards):
    """done.json of every run (written last), so the cube waits for whole runs."""
    return [f"{run_dir(wildcards.model, d, s)}/done.json" for d, s in runs_of(wildcards.model)]


def cube_em_files(wildcards):
    """em.json of every run and checkpoint step of the model: the cube's labels."""
    m = wildcards.model
    return [f"{behavior_dir(m, d, s, step)}/em.json"
            for d, s in runs_of(m) for step in steps(m, d)]
