"""`emtrait report` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build_command(
    config: Path = typer.Option(..., "--config", help="Config (YAML or the workflow's JSON)."),
    analysis: Path = typer.Option(..., "--analysis", help="Folder of `emtrait analysis pca`."),
    monitor_dir: list[Path] = typer.Option(..., "--monitor-dir", help="results/monitor/{model} "
                                           "with the evaluate outputs; repeat per model."),
    stress_dir: list[Path] = typer.Option([], "--stress-dir", help="Folder(s) with "
                                          "stress_metrics.csv (optional)."),
    directions: list[Path] = typer.Option([], "--directions", help="directions.zarr per model, "
                                          "for the trait-cosine heatmaps."),
    out: Path = typer.Option(..., "--out", help="Report folder (figures/, summary.md)."),
) -> None:
    """Draw every figure (PNG + SVG) and write summary.md with the paper's numbers beside ours."""
    import matplotlib

    matplotlib.use("Agg")

    from emtrait.config import load_config
    from emtrait.provenance import provenance
    from emtrait.report.build import build, load_inputs

    cfg = load_config(config)
    inp = load_inputs(cfg, analysis, monitor_dir, stress_dir, directions)
    build(inp, out, provenance(config_hash=cfg.hash()))
    typer.echo((out / "summary.md").read_text())
