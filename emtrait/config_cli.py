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
    """Validate a config (as the whole workflow would run it) and print the runs and checkpoint
    steps it plans."""
    from emtrait.config import workflow_notes, workflow_problems
    from emtrait.config.datasets import size_note
    from emtrait.errors import ConfigError

    cfg = load_config(config)
    problems = workflow_problems(cfg)
    sizes = {}
    for name, entry in cfg.datasets.items():  # every file smaller than its n, before the plan
        try:
            sizes[name] = size_note(entry, name)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(f"{config}: the whole workflow cannot run on this config:\n  - "
                          + "\n  - ".join(problems))
    typer.echo(f"{config}: valid (hash {cfg.hash()})")
    for note in workflow_notes(cfg):
        typer.echo(f"  note: {note}")
    for name, note in sizes.items():
        typer.echo(f"  dataset {name}: {note}")
    for model in cfg.models:
        for dataset in cfg.datasets:
            seeds = cfg.training_for(model).seeds
            typer.echo(f"  {model} × {dataset} × seeds {seeds}: steps {cfg.steps(model, dataset)}")
    for variant in cfg.variants:
        from emtrait.stress.variants import start_label

        start = start_label(cfg, variant)
        for model in cfg.variant_models(variant):
            for dataset in cfg.variant_datasets(variant):
                seeds = cfg.training_for(model, variant).seeds
                typer.echo(f"  variant {variant} (from {start}): {model} × {dataset} × seeds "
                           f"{seeds}: steps {cfg.steps(model, dataset, variant)}")
