"""`emtrait analysis` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("pca")
def pca_command(
    config: Path = typer.Option(..., "--config", help="Config (YAML or the workflow's JSON)."),
    cube: list[Path] = typer.Option(..., "--cube", help="Per-model cube; repeat for each model."),
    pca: Path = typer.Option(..., "--pca", help="pca.json to write (PC1, loadings, stability)."),
    final: Path = typer.Option(..., "--final", help="final_drift.csv to write (one row a run)."),
    trajectories: Path = typer.Option(..., "--trajectories",
                                      help="trajectories.csv to write (one row a checkpoint)."),
) -> None:
    """PCA of final-checkpoint trait drift pooled over models × calibration datasets × seeds."""
    from emtrait.analysis.geometry import geometry
    from emtrait.atomic import atomic_path, write_json
    from emtrait.config import load_config
    from emtrait.cube.read import open_cube
    from emtrait.provenance import provenance

    cfg = load_config(config)
    cubes = [open_cube(p) for p in cube]
    models = [str(ds.attrs["model"]) for ds in cubes]
    fit_models = [m for m in models if not (m in cfg.models and cfg.models[m].stress)] or models
    g = geometry(cubes, cfg.traits.monitor_set, fit_models)
    for name, path in (("final", final), ("trajectories", trajectories)):
        with atomic_path(path) as tmp:
            g.pop(name).to_csv(tmp, index=False)
    write_json(pca, {**g, "provenance": provenance(config_hash=cfg.hash(),
                                                   cubes=[str(p) for p in cube])})
    typer.echo(f"PC1 explains {100 * g['pc1_explained']:.1f}% of final-drift variance "
               f"({g['n_runs']} runs of {', '.join(g['models'])}); loadings: "
               + ", ".join(f"{t} {v:+.2f}" for t, v in g["pc1_loadings"].items()))
