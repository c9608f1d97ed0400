"""`emtrait traits` commands (heavy imports stay inside each command)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("extract")
def extract(
    config: Path = typer.Option(..., "--config", help="Config YAML (or the workflow's JSON)."),
    model: str = typer.Option(..., "--model", help="Model name under `models`."),
    pointer: Path = typer.Option(..., "--pointer", help="resources/models/M/model.json"),
    out: Path = typer.Option(..., "--out", help="results/traits/M/directions.zarr to write."),
    figures: Path = typer.Option(
        None, "--figures", help="Folder for the figures (PNG + SVG); none if omitted."
    ),
    progress: bool = typer.Option(True, help="Show progress bars."),
    selection: Path = typer.Option(
        None, "--selection", help="Also write the layer choice as JSON here (every per-layer "
        "score, the tie-break; the report's layer section)."
    ),
) -> None:
    """Extract, validate and layer-select the trait directions of one base model."""
    from emtrait.config import load_config
    from emtrait.traits.extract import extract_to_store

    cfg = load_config(config)
    cfg.model(model)  # a wrong name fails before the model loads
    start = time.perf_counter()
    ds = extract_to_store(cfg, model, pointer, out, figures, progress=progress,
                          selection=selection)
    layer = int(ds.attrs["layer"])
    monitor = ds["trait_set"] == cfg.traits.monitor_set
    acc = ds["probe_accuracy"].sel(layer=layer).where(monitor, drop=True)
    typer.echo(f"{model}: l* = {layer} ({ds.attrs['selector']}); probe accuracy at l*: "
               + ", ".join(f"{t}={float(a):.2f}" for t, a in zip(acc["trait"].values, acc.values,
                                                                  strict=True))
               + f"; {time.perf_counter() - start:.1f} s -> {out}")
    if "selection_reason" in ds.attrs:
        typer.echo(f"layer selection: {ds.attrs['selection_reason']}")
