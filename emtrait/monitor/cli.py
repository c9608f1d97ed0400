"""`emtrait monitor` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

CONFIG = typer.Option(..., "--config", help="Config (YAML or the workflow's JSON).")
MODEL = typer.Option(None, "--model", help="Model name (checked against the cube).")
CUBE = typer.Option(..., "--cube", help="results/cube/{model}.zarr")


def _csv(frame, path: Path) -> None:
    from emtrait.atomic import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _check_model(ds, model: str | None, cube: Path) -> None:
    from emtrait.errors import DataError

    if model is not None and str(ds.attrs["model"]) != model:
        raise DataError(f"{cube} is the cube of model '{ds.attrs['model']}', not '{model}'")


@app.command("fit")
def fit(
    config: Path = CONFIG,
    model: str = MODEL,
    cube: Path = CUBE,
    pointer: Path = typer.Option(..., "--pointer", help="The model's pointer (model.json): "
                                 "the monitor stores its fingerprint for live use."),
    out: Path = typer.Option(..., "--out", help="Monitor archive to write (monitor.skops)."),
    selection: Path = typer.Option(None, "--selection", help="CSV of LOPO error per regressor."),
) -> None:
    """Fit the drift-to-EM monitor on calibration runs (regressor chosen by LOPO)."""
    import pandas as pd

    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.monitor.artifact import live_meta, save_monitor
    from emtrait.monitor.evaluate import fit_monitor
    from emtrait.provenance import provenance

    cfg = load_config(config)
    ds = open_cube(cube)
    _check_model(ds, model, cube)
    mon, table = fit_monitor(ds, cfg)
    source = cfg.models[model].source if model in cfg.models else None
    mon.meta["provenance"] = provenance(config_hash=cfg.hash(), model_source=source,
                                        seed=cfg.monitor.seed, cube=str(cube))
    mon.meta.update(live_meta(cfg, str(ds.attrs["model"]), pointer))  # format 2: usable alone
    save_monitor(out, mon)
    if selection is not None:
        _csv(pd.DataFrame(table).assign(model=mon.meta["model"]), selection)
    typer.echo(f"monitor for {mon.meta['model']}: {mon.meta['regressor_name']} on "
               f"{len(mon.traits)} traits, {mon.meta['n_train']} calibration checkpoints "
               f"({mon.meta['n_excluded_nan']} excluded: EM rate NaN) -> {out}")


@app.command("evaluate")
def evaluate_command(
    config: Path = CONFIG,
    model: str = MODEL,
    cube: Path = CUBE,
    monitor: Path = typer.Option(..., "--monitor", help="monitor.skops from `monitor fit`."),
    predictions: Path = typer.Option(..., "--predictions", help="predictions.csv to write."),
    metrics_csv: Path = typer.Option(..., "--metrics", help="metrics.csv to write."),
    alarms: Path = typer.Option(..., "--alarms", help="alarms.csv to write."),
    permutation_null: Path = typer.Option(
        None, "--permutation-null", help="permutation_null.csv to write: the run-label "
        "permutation null of the headline AUROCs (monitor.permutations)."),
) -> None:
    """LOPO and held-out validation of the monitor and every baseline, plus the alarm table."""
    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.monitor.artifact import load_monitor
    from emtrait.monitor.evaluate import evaluate, permutation_tests, with_permutation

    cfg = load_config(config)
    ds = open_cube(cube)
    _check_model(ds, model, cube)
    mon = load_monitor(monitor)
    heldout = [d for d, e in cfg.datasets.items() if e.role == "heldout"]
    pred, metrics, alarm_table = evaluate(ds, mon, cfg, heldout)
    perm, null = permutation_tests(ds, mon, cfg, heldout)
    metrics = with_permutation(metrics, perm)
    _csv(pred, predictions)
    _csv(metrics, metrics_csv)
    _csv(alarm_table, alarms)
    if permutation_null is not None:
        _csv(null, permutation_null)
    show = metrics[(metrics.dataset == "pooled") & metrics.headline]
    for r in show.itertuples():
        typer.echo(f"{r.feature_set:>12} {r.protocol:>8}: FNR {r.fnr:.3f} FPR {r.fpr:.3f} "
                   f"AUROC {r.auroc:.3f} (n={r.n} checkpoints of {r.n_runs} runs, step 0 "
                   f"{r.step0}d, {r.n_excluded_nan} NaN EM excluded)")
    for r in perm.itertuples():
        typer.echo(f"permutation test {r.protocol}: AUROC {r.auroc_observed:.3f}, p = "
                   f"{r.auroc_p:.3g} (null median {r.auroc_null_median:.3f}; "
                   f"{r.n_permutations} {'exact' if r.permutation_exact else 'random'} "
                   f"permutations, resolution {r.p_resolution:.3g})")


@app.command("layers")
def layers_command(
    config: Path = CONFIG,
    model: str = MODEL,
    cube: Path = CUBE,
    out: Path = typer.Option(..., "--out", help="layers.csv to write: per measured layer and "
                             "protocol, the monitor's FNR/FPR/AUROC, intervals, permutation p "
                             "and the PC1 share."),
) -> None:
    """Which layer monitors best: the monitor's fit and validation at every measured layer.

    The shipped monitor stays at l*; this table answers whether another layer does better."""
    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.monitor.layers import better_layers, compare_layers

    cfg = load_config(config)
    ds = open_cube(cube, load=False, all_layers=True)
    _check_model(ds, model, cube)
    heldout = [d for d, e in cfg.datasets.items() if e.role == "heldout"]
    table = compare_layers(ds, cfg, heldout)
    _csv(table, out)
    for r in table.itertuples():
        star = " (l*)" if r.chosen else ""
        typer.echo(f"layer {r.layer}{star} {r.protocol:>8}: AUROC {r.auroc:.3f} "
                   f"[{r.auroc_lo:.3f}, {r.auroc_hi:.3f}] p = {r.auroc_p:.3g}, FNR {r.fnr:.3f}, "
                   f"FPR {r.fpr:.3f}, PC1 share {r.pc1_explained:.3f}")
    for b in better_layers(table):
        typer.echo(f"layer {b['layer']} beats l* = {b['chosen_layer']} beyond its interval "
                   f"({b['protocol']} AUROC lower bound {b['auroc_lo']:.3f} > "
                   f"{b['chosen_auroc_hi']:.3f})")


@app.command("score")
def score(
    monitor: Path = typer.Option(..., "--monitor", help="monitor.skops from `monitor fit`."),
    run: Path = typer.Option(..., "--run", help="A run's measure.zarr."),
    out: Path = typer.Option(None, "--out", help="Also write the table as CSV here."),
) -> None:
    """Print per-step risk of a run: predicted EM rate, alarm probability, alarm."""
    import pandas as pd

    from emtrait.monitor.artifact import load_monitor, run_drift

    mon = load_monitor(monitor)
    steps, drift = run_drift(mon, run)
    res = mon.predict(drift, steps)
    table = pd.DataFrame({"step": steps, **res.columns()})
    typer.echo(f"monitor {mon.meta['model']} ({mon.meta['regressor_name']}, alarm when "
               f"P(EM > {mon.meta['threshold']:.3f}) > {mon.meta['alarm_threshold']:g}) on {run}")
    typer.echo(f"{'step':>6} {'pred_em':>8} {'alarm_p':>8}  alarm")
    for r in table.itertuples():
        typer.echo(f"{r.step:>6d} {r.pred_em:>8.3f} {r.alarm_prob:>8.3f}  "
                   f"{'ALARM' if r.alarm else '-'}")
    if out is not None:
        _csv(table, out)
