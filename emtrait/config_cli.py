"""`emtrait config`: check a config file, print its checkpoint plan, write the JSON-Schema."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from emtrait import atomic
from emtrait.config import json_schema, load_config

app = typer.Typer(no_args_is_help=True)


@app.command("schema")
def schema(out: Path = typer.Option(None, help="Write here instead of stdout.")) -> None:
    """Generate the JSON-Schema that the Snakefile validates configs against."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic.write_text(out, text)


@app.command("check")
def check(config: Path = typer.Argument(..., help="Config YAML to validate.")) -> None:
    """Validate a config and print the runs and checkpoint steps it plans."""
    cfg = load_config(config)
    typer.echo(f"{config}: valid (hash {cfg.hash()})")
    for model in cfg.models:
        for dataset in cfg.datasets:
            seeds = cfg.training_for(model).seeds
            typer.echo(f"  {model} × {dataset} × seeds {seeds}: steps {cfg.steps(model, dataset)}")
