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

    from emtrait.monitor.artifact import load_monitor, origin_line, run_drift

    mon = load_monitor(monitor)
    steps, drift = run_drift(mon, run)
    res = mon.predict(drift, steps)
    table = pd.DataFrame({"step": steps, **res.columns()})
    typer.echo(f"monitor {mon.meta['model']} ({mon.meta['regressor_name']}, alarm when "
               f"P(EM > {mon.meta['threshold']:.3f}) > {mon.meta['alarm_threshold']:g}) on {run}")
    typer.echo(f"provenance: {origin_line(mon.meta)}")
    typer.echo(f"{'step':>6} {'pred_em':>8} {'alarm_p':>8}  alarm")
    for r in table.itertuples():
        typer.echo(f"{r.step:>6d} {r.pred_em:>8.3f} {r.alarm_prob:>8.3f}  "
                   f"{'ALARM' if r.alarm else '-'}")
    if out is not None:
        _csv(table, out)


def _run_key(text: str) -> tuple[str, int]:
    from emtrait.errors import ConfigError

    dataset, _, seed = text.rpartition(":")
    if not dataset or not seed.lstrip("-").isdigit():
        raise ConfigError(f"--run '{text}' is not DATASET:SEED (e.g. bad_medical:42)")
    return dataset, int(seed)


@app.command("transfer")
def transfer_command(
    config: Path = CONFIG,
    monitor: Path = typer.Option(..., "--monitor", help="The calibrated monitor.skops of "
                                 "another model (format 2)."),
    model: str = typer.Option(..., "--model", help="The new model's name under `models`."),
    pointer: Path = typer.Option(..., "--pointer", help="The new model's pointer (model.json)."),
    directions: Path = typer.Option(None, "--directions", help="The new model's directions.zarr "
                                    "(`emtrait traits extract`: its l* by its selector); "
                                    "without it they are extracted here with the config's "
                                    "trait prompts and the model's layer_selector."),
    directions_out: Path = typer.Option(None, "--directions-out", help="Also write the "
                                        "directions extracted here (a directions.zarr)."),
    out: Path = typer.Option(..., "--out", help="Monitor archive to write for the new model."),
    runs: Path = typer.Option(None, "--runs", help="Few-run recalibration: a cube of the new "
                              "model holding labelled runs, at least one dangerous and one "
                              "benign."),
    run: list[str] = typer.Option(None, "--run", help="DATASET:SEED of a run in --runs to use "
                                  "(repeat; default: every run there)."),
    method: str = typer.Option("scale", "--method", help="What --runs refits: 'scale' (a drift "
                               "scale per trait) or 'threshold' (the alarm's EM threshold)."),
) -> None:
    """Move a calibrated monitor onto another base model without its own calibration grid."""
    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.errors import DataError
    from emtrait.monitor.artifact import load_monitor, save_monitor
    from emtrait.monitor.transfer import (
        describe,
        labelled_runs,
        recalibrate,
        transfer_with_directions,
    )
    from emtrait.traits.store import write_directions

    if directions is not None and directions_out is not None:
        raise DataError("--directions-out keeps directions extracted here; with --directions "
                        f"{directions} nothing is extracted: drop one of the two")
    cfg = load_config(config)
    cfg.model(model)
    keys = [_run_key(r) for r in run or []]
    cube = open_cube(runs) if runs is not None else None
    if cube is not None:
        labelled_runs(cube, keys, str(runs))  # one class fails before any extraction
    moved, ds = transfer_with_directions(load_monitor(monitor), cfg, model, pointer, directions,
                                         source=monitor)
    if cube is not None:
        moved = recalibrate(moved, cube, runs=keys, method=method, where=str(runs))
    if directions_out is not None:  # written only once every check has passed
        write_directions(ds, directions_out)
    save_monitor(out, moved)
    typer.echo(f"{describe(moved)} -> {out}"
               + (f"; {model}'s directions (l* = {moved.meta['layer']}) -> {directions_out}"
                  if directions_out is not None else ""))


@app.command("transfer-evaluate")
def transfer_evaluate_command(
    config: Path = CONFIG,
    model: str = MODEL,
    cube: Path = CUBE,
    monitor: Path = typer.Option(..., "--monitor", help="The model's transferred monitor.skops."),
    predictions: Path = typer.Option(..., "--predictions", help="transfer_predictions.csv"),
    metrics_csv: Path = typer.Option(..., "--metrics", help="transfer.csv to write."),
) -> None:
    """Score a transferred monitor on its model's whole grid: zero-shot, few-run, own LOPO."""
    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.monitor.artifact import load_monitor, origin_line
    from emtrait.monitor.transfer_eval import transfer_metrics

    cfg = load_config(config)
    ds = open_cube(cube)
    _check_model(ds, model, cube)
    mon = load_monitor(monitor)
    pred, metrics = transfer_metrics(ds, mon, cfg)
    _csv(pred, predictions)
    _csv(metrics, metrics_csv)
    typer.echo(f"monitor of {mon.meta['model']}: {origin_line(mon.meta)}")
    for r in metrics[metrics.dataset == "pooled"].itertuples():
        typer.echo(f"{r.condition:>18}: AUROC {r.auroc:.3f} [{r.auroc_lo:.3f}, {r.auroc_hi:.3f}]"
                   f" p = {r.auroc_p:.3g}, FNR {r.fnr:.3f}, FPR {r.fpr:.3f} ({r.n_runs} runs)")
