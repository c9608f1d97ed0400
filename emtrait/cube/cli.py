"""`emtrait cube` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("merge", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": False})
def merge(
    ctx: typer.Context,
    config: Path = typer.Option(..., "--config", help="Config YAML (or the workflow's JSON)."),
    model: str = typer.Option(..., "--model", help="Model name under `models`."),
    runs: list[Path] = typer.Option(..., "--runs", help="Run folders: --runs DIR [DIR ...]."),
    behavior_root: Path | None = typer.Option(
        None, "--behavior-root", help="results/behavior/M: em.json per dataset/seed/step."),
    out: Path = typer.Option(..., "--out", help="results/cube/M.zarr"),
) -> None:
    """Merge a model's run stores (and behaviour labels) into one Zarr cube.

    Open it with: xr.open_zarr("results/cube/M.zarr", consolidated=False)
    """
    from emtrait.config import load_config
    from emtrait.cube.merge import merge_runs, write_cube

    extra = [Path(a) for a in ctx.args]  # `--runs a b c`: b and c arrive as extra arguments
    cfg = load_config(config)
    cube = merge_runs(cfg, model, [*runs, *extra], behavior_root)
    write_cube(cube, out)
    typer.echo(f"{out}: {cube.sizes['dataset']} datasets × {cube.sizes['seed']} seeds × "
               f"{cube.sizes['step']} steps × {cube.sizes['trait']} traits")
