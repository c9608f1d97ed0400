"""`emtrait cube` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("merge")
def merge(
    config: Path = typer.Option(..., "--config", help="Config YAML (or the workflow's JSON)."),
    model: str = typer.Option(..., "--model", help="Model name under `models`."),
    run: list[Path] = typer.Option(..., "--run", help="A run's measure.zarr; repeat per run."),
    em: list[Path] = typer.Option([], "--em", help="em.json of one checkpoint; repeat for every "
                                  "checkpoint of every run (omit all: an unlabelled cube)."),
    out: Path = typer.Option(..., "--out", help="results/cube/M.zarr"),
) -> None:
    """Merge a model's run stores (and behaviour labels) into one Zarr cube, every measured
    layer on its `layer` dimension (`--out` becomes a link to the store beside it).

    Open it with: xr.open_zarr("results/cube/M.zarr", consolidated=False)
    """
    from emtrait.config import load_config
    from emtrait.cube.merge import merge_runs, write_cube

    cfg = load_config(config)
    cube = merge_runs(cfg, model, run, em, all_layers=True)
    write_cube(cube, out)
    labelled = "labelled" if em else "unlabelled (no --em given)"
    typer.echo(f"{out}: {cube.sizes['dataset']} datasets × {cube.sizes['seed']} seeds × "
               f"{cube.sizes['step']} steps × {cube.sizes['trait']} traits, {labelled}, "
               f"layers {[int(x) for x in cube['layer'].values]} (l* = {cube.attrs['layer']})")
