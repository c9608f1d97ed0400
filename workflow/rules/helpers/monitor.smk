# Stage constants and input functions of the monitor stage's rules (monitor.smk); included by
# common.smk (snakemake --lint wants rule files free of functions).


def monitor_source(model):
    """The model whose calibrated monitor `model` gets (`models.<model>.monitor_from`), checked:
    it must name another model that has its own calibration grid."""
    from emtrait.errors import ConfigError

    source = CFG.model(model).monitor_from
    if source not in CFG.models or source == model or CFG.model(source).monitor_from:
        raise ConfigError(
            f"models.{model}.monitor_from is '{source}': name another model of `models` that is "
            f"calibrated with its own grid (no monitor_from of its own); models: {list(MODELS)}"
        )
    return source


# Models with `monitor_from` get a transferred monitor (rule monitor_transfer) instead of one
# fitted on their own calibration runs (rule monitor_fit).
TRANSFERRED = {m: monitor_source(m) for m in MODELS if CFG.model(m).monitor_from}
OWN_MONITOR_MODELS = [m for m in MODELS if m not in TRANSFERRED]
