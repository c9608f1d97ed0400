"""`emtrait stress` commands: start models, the variant cube, scoring, transfer, the report.

Heavy imports stay inside each command. Paths are explicit; a variant's files are passed as
VARIANT=PATH so one command sees every variant of a model.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

CONFIG = typer.Option(..., "--config", help="Config (YAML or the workflow's JSON).")


def _by_variant(items: list[str], option: str) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for item in items:
        variant, sep, path = item.partition("=")
        if not sep or not variant or not path:
            raise typer.BadParameter(f"{option} takes VARIANT=PATH, got {item!r}")
        out.setdefault(variant, []).append(Path(path))
    return out


@app.command("start")
def start(
    config: Path = CONFIG,
    model: str = typer.Option(..., "--model", help="Base model name under `models`."),
    pointer: Path = typer.Option(..., "--pointer", help="The base model's model.json."),
    adapters: Path = typer.Option(..., "--adapters", help="The source run's adapters/ folder "
                                  "(its last step-N is the start)."),
    out: Path = typer.Option(..., "--out", help="Folder for weights/ and model.json."),
) -> None:
    """Merge a finished run's final weights into a model folder: a misaligned starting point."""
    from emtrait.config import load_config
    from emtrait.stress.start import build_start

    record = build_start(load_config(config), model, pointer, adapters, out)
    typer.echo(f"{out}/model.json: start model from {record['start_checkpoint']}")


@app.command("cube")
def cube(
    config: Path = CONFIG,
    model: str = typer.Option(..., "--model", help="Base model name under `models`."),
    run: list[str] = typer.Option(..., "--run", help="VARIANT=measure.zarr of one variant run; "
                                  "repeat per run."),
    em: list[str] = typer.Option([], "--em", help="VARIANT=em.json of one checkpoint; repeat "
                                 "for every checkpoint (omit all: unlabelled)."),
    reference: list[str] = typer.Option([], "--reference", help="VARIANT=measure.zarr of the "
                                        "run whose step 0 is the base model, for variants that "
                                        "start from another run."),
    out: Path = typer.Option(..., "--out", help="results/stress/cube/M.zarr"),
) -> None:
    """Merge every variant's runs of a model into one cube with a `variant` dimension."""
    from emtrait.config import load_config
    from emtrait.stress.variants import variant_cube, write_variant_cube

    refs = {v: p[0] for v, p in _by_variant(reference, "--reference").items()}
    ds = variant_cube(load_config(config), model, _by_variant(run, "--run"),
                      _by_variant(em, "--em"), refs)
    write_variant_cube(ds, out)
    typer.echo(f"{out}: {ds.sizes['variant']} variants × {ds.sizes['dataset']} datasets × "
               f"{ds.sizes['seed']} seeds × {ds.sizes['step']} steps")


@app.command("score")
def score(
    config: Path = CONFIG,
    cube: Path = typer.Option(..., "--cube", help="The variant cube (results/stress/cube/M.zarr)."),
    calibration_cube: Path = typer.Option(..., "--calibration-cube", help="The model's own "
                                          "cube (results/cube/M.zarr), for the trajectories."),
    monitor: Path = typer.Option(..., "--monitor", help="The base model's monitor.skops."),
    out: Path = typer.Option(..., "--out", help="Folder for predictions, metrics, alarms and "
                             "trajectories CSVs."),
) -> None:
    """Score every variant run with the base model's calibrated monitor (never refitted)."""
    import pandas as pd

    from emtrait.atomic import write_csv
    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.monitor.artifact import load_monitor
    from emtrait.monitor.metrics import metrics_table
    from emtrait.stores import open_store
    from emtrait.stress.variants import run_alarms, score_variants, trajectories

    cfg = load_config(config)
    mon = load_monitor(monitor)
    variants = open_store(cube)
    pred = score_variants(variants, mon)
    metrics = metrics_table(pred, ["model", "variant", "reference", "dataset"],
                            bootstrap=cfg.monitor.bootstrap, seed=cfg.monitor.seed)
    alarms = run_alarms(pred, ["variant", "reference"])
    traj = pd.concat([trajectories(open_cube(calibration_cube), mon.traits, "calibration"),
                      trajectories(variants, mon.traits, "variant")], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("predictions", pred), ("metrics", metrics), ("alarms", alarms),
                        ("trajectories", traj)):
        write_csv(out / f"{name}.csv", frame)
    typer.echo(f"{len(pred)} variant checkpoints of {variants.attrs['model']} scored by its "
               f"monitor -> {out}")


@app.command("transfer")
def transfer(
    config: Path = CONFIG,
    model: str = typer.Option(..., "--model", help="The cube's model (checked against it)."),
    cube: Path = typer.Option(..., "--cube", help="The model's cube (results/cube/M.zarr)."),
    monitor: list[Path] = typer.Option(..., "--monitor", help="Monitor archive(s); the cube's "
                                       "own scores its stress datasets, others the whole cube."),
    out: Path = typer.Option(..., "--out", help="Folder for predictions.csv and metrics.csv."),
) -> None:
    """Score a model's cube with monitors: stress datasets by its own, all of it by others'.

    A stress model's whole cube is scored by every calibration model's monitor (transfer); the
    model's own monitor scores its `role: stress` datasets."""
    from emtrait.atomic import write_csv
    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.errors import DataError
    from emtrait.monitor.artifact import load_monitor
    from emtrait.monitor.evaluate import transfer as score_transfer

    ds = open_cube(cube)
    if str(ds.attrs["model"]) != model:
        raise DataError(f"{cube} is the cube of model '{ds.attrs['model']}', not '{model}'")
    monitors = {}
    for path in monitor:
        mon = load_monitor(path)
        monitors[mon.meta["model"]] = mon
    pred, metrics = score_transfer(ds, monitors, load_config(config))
    write_csv(out / "predictions.csv", pred)
    write_csv(out / "metrics.csv", metrics)
    typer.echo(f"transfer: {len(pred)} checkpoints of {model} scored by {len(monitors)} "
               f"monitor(s) -> {out}")


@app.command("report")
def report(
    config: Path = CONFIG,
    variant_dir: list[Path] = typer.Option([], "--variant-dir", help="Output folder of "
                                           "`emtrait stress score`; repeat per model."),
    transfer_dir: list[Path] = typer.Option([], "--transfer-dir", help="Output folder of "
                                            "`emtrait stress transfer`; repeat per model."),
    out: Path = typer.Option(..., "--out", help="Folder for summary.md, table.csv, figures/."),
) -> None:
    """The stress section: alarm rates, FNR/FPR/AUROC, first alarms, drift beside calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from emtrait.atomic import atomic_path, write_csv, write_text
    from emtrait.config import load_config
    from emtrait.provenance import provenance
    from emtrait.stress.report import conditions, stress_section, stress_tables, variant_drift

    cfg = load_config(config)

    def cat(name: str, dirs: list[Path]):
        frames = [pd.read_csv(d / name) for d in dirs]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    frame = conditions(cat("predictions.csv", variant_dir),
                       cat("predictions.csv", transfer_dir))
    mcfg = cfg.monitor
    table = stress_tables(frame, bootstrap=mcfg.bootstrap, seed=mcfg.seed)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig = variant_drift(cat("trajectories.csv", variant_dir))
    for ext in ("png", "svg"):
        with atomic_path(out / "figures" / f"variant_drift.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
    write_csv(out / "table.csv", table)
    text = stress_section(table, alarm_threshold=mcfg.alarm_threshold, bootstrap=mcfg.bootstrap)
    text += "\n![drift of variants beside calibration runs](figures/variant_drift.png)\n"
    stamp = provenance(config_hash=cfg.hash())
    text += "\n<!-- " + " ".join(f"{k}={v}" for k, v in sorted(stamp.items())) + " -->\n"
    write_text(out / "summary.md", text)
    typer.echo(text)
