# Input functions and params of the cube stage's rules (cube.smk); included by common.smk
# (snakemake --lint wants rule files free of functions).


def cube_inputs(model, datasets):
    """A cube's files: for each run of the model on `datasets`, its measure.zarr and done.json
    (written last, so the cube waits for whole runs) and every checkpoint's em.json (labels)."""
    runs = [(d, s) for d, s in runs_of(model) if d in datasets]
    return {
        "runs": [f"{run_dir(model, d, s)}/measure.zarr" for d, s in runs],
        "done": [f"{run_dir(model, d, s)}/done.json" for d, s in runs],
        "em": [
            f"{behavior_dir(model, d, s, step)}/em.json"
            for d, s in runs
            for step in steps(model, d)
        ],
    }


def cube_labels(datasets):
    """What a cube reads from the entries of its datasets (label and role coordinates)."""
    return {d: [CFG.dataset(d).label, CFG.dataset(d).role] for d in datasets}
