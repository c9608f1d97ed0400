"""`emtrait report` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build_command(
    config: Path = typer.Option(..., "--config", help="Config (YAML or the workflow's JSON)."),
    pca: Path = typer.Option(..., "--pca", help="pca.json of `emtrait analysis pca`."),
    final: Path = typer.Option(..., "--final", help="final_drift.csv of `emtrait analysis pca`."),
    trajectories: Path = typer.Option(..., "--trajectories",
                                      help="trajectories.csv of `emtrait analysis pca`."),
    predictions: list[Path] = typer.Option(..., "--predictions", help="predictions.csv of "
                                           "`emtrait monitor evaluate`; repeat per model."),
    metrics: list[Path] = typer.Option(..., "--metrics", help="metrics.csv; repeat per model."),
    alarms: list[Path] = typer.Option(..., "--alarms", help="alarms.csv; repeat per model."),
    selection: list[Path] = typer.Option([], "--selection", help="selection.csv of `emtrait "
                                         "monitor fit`; repeat per model."),
    stress: list[Path] = typer.Option([], "--stress", help="metrics.csv of `emtrait stress "
                                      "transfer` (optional); repeat per stress model."),
    cube: list[Path] = typer.Option(..., "--cube", help="Per-model cube, for the trait-cosine "
                                    "heatmaps (its directions at l*); repeat per model."),
    permutation_null: list[Path] = typer.Option(
        [], "--permutation-null", help="permutation_null.csv of `emtrait monitor evaluate`; "
        "repeat per model."),
    layer_selection: list[Path] = typer.Option(
        [], "--layer-selection", help="layer_selection.json of `emtrait traits extract`; "
        "repeat per model."),
    layers: list[Path] = typer.Option(
        [], "--layers", help="layers.csv of `emtrait monitor layers`; repeat per model."),
    screen: list[Path] = typer.Option([], "--screen", help="Screen summary JSON of `emtrait "
                                      "screen` (results/screen/M/D.json); repeat per model and "
                                      "dataset."),
    screen_figure: list[Path] = typer.Option([], "--screen-figure", help="Where to draw the "
                                             "screen-vs-outcome figure (.png|.svg); repeat."),
    screen_table: Path = typer.Option(None, "--screen-table", help="CSV of screen(dataset, "
                                      "trait) joined with the cube, to write."),
    transfer: list[Path] = typer.Option([], "--transfer", help="transfer.csv of `emtrait "
                                        "monitor transfer-evaluate`; repeat per transferred "
                                        "model."),
    summary: Path = typer.Option(..., "--summary", help="summary.md to write."),
    ablation: Path = typer.Option(..., "--ablation", help="ablation.csv to write."),
    figure: list[Path] = typer.Option(..., "--figure", help="A figure to draw, named "
                                      "<name>.png|.svg (names: emtrait.report.FIGURES); repeat."),
) -> None:
    """Draw every figure (PNG + SVG) and write summary.md with the paper's numbers beside ours."""
    import matplotlib

    matplotlib.use("Agg")

    from emtrait.config import load_config
    from emtrait.provenance import provenance
    from emtrait.report.build import build, load_inputs

    cfg = load_config(config)
    inp = load_inputs(cfg, pca=pca, final=final, trajectories=trajectories,
                      predictions=predictions, metrics=metrics, alarms=alarms,
                      selection=selection, stress=stress, cubes=cube,
                      permutation_null=permutation_null, layer_selection=layer_selection,
                      layers=layers)
    sections = ""
    if screen:
        from emtrait.report.screen import screen_section

        sections = screen_section(screen, cube, screen_figure, screen_table)
    if transfer:
        from emtrait.report.transfer import transfer_section

        sections += ("\n" if sections else "") + transfer_section(transfer)
    build(inp, summary=summary, ablation=ablation, figure_files=figure,
          provenance=provenance(config_hash=cfg.hash()), sections=sections)
    typer.echo(summary.read_text())
