# Stage constants and input functions of the stress stage's rules (stress.smk); included by
# common.smk (snakemake --lint wants rule files free of functions).

VARIANTS = list(CFG.variants)
# Transfer conditions: datasets with role `stress` (every model runs them) and `stress: true`
# models, which are also scored by the monitors of the calibration models.
STRESS_DATASETS = [d for d in DATASETS if CFG.dataset(d).role == "stress"]
STRESS_MODELS = [m for m in MODELS if STRESS_DATASETS or CFG.model(m).stress]
CALIBRATION_MODELS = [m for m in MODELS if not CFG.model(m).stress]


def variant_runs_of(model):
    """(variant, dataset, seed) runs of one model over every declared variant."""
    return [(v, d, s) for v in VARIANTS for d, s in CFG.variant_runs(v, model)]


VARIANT_MODELS = [m for m in MODELS if variant_runs_of(m)]


def stress_finetune_inputs(wildcards):
    """finetune_inputs, with the pointer of the model the variant trains from."""
    return {
        **finetune_inputs(wildcards),
        "pointer": variant_pointer(wildcards.variant, wildcards.model),
    }


def stress_cube_files(model):
    """(option, variant, path) of every file `emtrait stress cube` reads for one model: each
    variant run's store, the em.json of each of its steps, and the store of the root run whose
    step 0 is the base model (for drift_from_base) of each variant that starts from another."""
    runs = variant_runs_of(model)
    files = [("run", v, f"{variant_run_dir(v, model, d, s)}/measure.zarr") for v, d, s in runs]
    files += [
        ("em", v, f"{variant_behavior_dir(v, model, d, s, t)}/em.json")
        for v, d, s in runs
        for t in CFG.steps(model, d, v)
    ]
    for v in dict.fromkeys(v for v, _, _ in runs):
        root = CFG.root_run(v)
        if root is not None:
            rv, rd, rs = root
            files.append(("reference", v, f"{variant_run_dir(rv, model, rd, rs)}/measure.zarr"))
    return files


def stress_cube_inputs(wildcards):
    """Every file of stress_cube_files, and each variant run's done.json (written last)."""
    m = wildcards.model
    files = stress_cube_files(m)
    return {
        "runs": [p for opt, _, p in files if opt == "run"],
        "done": [f"{variant_run_dir(v, m, d, s)}/done.json" for v, d, s in variant_runs_of(m)],
        "em": [p for opt, _, p in files if opt == "em"],
        "references": [p for opt, _, p in files if opt == "reference"],
    }


def stress_cube_args(wildcards):
    """--run/--em/--reference VARIANT=PATH for every file of stress_cube_files."""
    return " ".join(f"--{opt} {v}={p}" for opt, v, p in stress_cube_files(wildcards.model))


def transfer_monitors(wildcards):
    """The model's own monitor; a stress model is also scored by every calibration model's."""
    m = wildcards.model
    others = CALIBRATION_MODELS if CFG.model(m).stress else []
    return [MONITOR_FILE.format(model=name) for name in [m, *others]]
