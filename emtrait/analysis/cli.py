"""`emtrait analysis` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("pca")
def pca_command(
    config: Path = typer.Option(..., "--config", help="Config (YAML or the workflow's JSON)."),
    cube: list[Path] = typer.Option(..., "--cube", help="Per-model cube; repeat for each model."),
    out: Path = typer.Option(..., "--out", help="Folder for pca.json, final_drift.csv, "
                             "trajectories.csv."),
) -> None:
    """PCA of final-checkpoint trait drift pooled over models × calibration datasets × seeds."""
    from emtrait.analysis.geometry import geometry
    from emtrait.atomic import atomic_path, write_json
    from emtrait.config import load_config
    from emtrait.monitor.data import open_cube
    from emtrait.provenance import provenance

    cfg = load_config(config)
    cubes = [open_cube(p) for p in cube]
    models = [str(ds.attrs["model"]) for ds in cubes]
    fit_models = [m for m in models if not (m in cfg.models and cfg.models[m].stress)] or models
    g = geometry(cubes, cfg.traits.monitor_set, fit_models)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("final", "trajectories"):
        with atomic_path(out / f"{'final_drift' if name == 'final' else name}.csv") as tmp:
            g.pop(name).to_csv(tmp, index=False)
    write_json(out / "pca.json", {**g, "provenance": provenance(config_hash=cfg.hash(),
                                                                cubes=[str(p) for p in cube])})
    typer.echo(f"PC1 explains {100 * g['pc1_explained']:.1f}% of final-drift variance "
               f"({g['n_runs']} runs of {', '.join(g['models'])}); loadings: "
               + ", ".join(f"{t} {v:+.2f}" for t, v in g["pc1_loadings"].items()))
