"""`emtrait finetune` and `emtrait measure` (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer


def finetune(
    config: Path = typer.Option(..., "--config", help="Config YAML (or the workflow's JSON)."),
    model: str = typer.Option(..., "--model", help="Model name under `models`."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset name under `datasets`."),
    seed: int = typer.Option(..., "--seed", help="Run seed (data order, LoRA init)."),
    pointer: Path = typer.Option(..., "--pointer", help="resources/models/M/model.json"),
    data: Path = typer.Option(..., "--data", help="results/datasets/D.jsonl"),
    directions: Path = typer.Option(..., "--directions", help="results/traits/M/directions.zarr"),
    out: Path = typer.Option(..., "--out", help="Run folder, e.g. results/runs/M/D/seed42."),
    variant: str = typer.Option("default", "--variant", help="Training variant under "
                                "`variants` (its training overrides apply)."),
) -> None:
    """Finetune one model on one dataset, measuring trait drift at step 0 and every checkpoint.

    Started again after a kill, it resumes from the last complete checkpoint. A misaligned-start
    variant passes the start model's pointer (`emtrait stress start`) as --pointer.
    """
    from emtrait.config import load_config
    from emtrait.finetune.train import run_finetune

    cfg = load_config(config).with_variant(variant)
    done = run_finetune(cfg, model, dataset, seed, pointer=pointer, data=data,
                        directions_path=directions, out=out)
    t = done["timing"]
    typer.echo(f"{out}: steps {done['steps']} in {done['wall_s']:.1f} s "
               f"(measuring {sum(t['measure_s']):.1f} s, training {sum(t['train_s']):.1f} s)")


def measure(
    config: Path = typer.Option(..., "--config", help="Config YAML (or the workflow's JSON)."),
    model: str = typer.Option(..., "--model", help="Model name under `models`."),
    pointer: Path = typer.Option(..., "--pointer", help="Base model pointer (model.json)."),
    directions: Path = typer.Option(..., "--directions", help="directions.zarr of the model."),
    checkpoint: list[Path] = typer.Option(
        [], "--checkpoint", help="A PEFT adapter folder or a full model folder; repeat, in the "
        "order of --step."),
    step: list[int] = typer.Option([], "--step", help="Training step of each --checkpoint."),
    adapters: Path | None = typer.Option(
        None, "--adapters", help="A run's adapters/ folder: measures every step-N inside."),
    dataset: str = typer.Option("external", "--dataset", help="Label recorded in the store."),
    seed: int = typer.Option(0, "--seed", help="Seed recorded in the store."),
    out: Path = typer.Option(..., "--out", help="measure.zarr to write."),
) -> None:
    """Measure checkpoints made elsewhere; step 0 is the base model unless given explicitly."""
    from emtrait.config import load_config
    from emtrait.finetune.standalone import checkpoints_in, measure_checkpoints

    cfg = load_config(config)
    if adapters is not None:
        if checkpoint or step:
            raise typer.BadParameter("give either --adapters or --checkpoint/--step, not both")
        pairs = checkpoints_in(adapters)
    else:
        if len(checkpoint) != len(step):
            raise typer.BadParameter(f"{len(checkpoint)} --checkpoint but {len(step)} --step; "
                                     "give one step per checkpoint")
        pairs = list(zip(step, checkpoint, strict=True))
    ds = measure_checkpoints(cfg, model, pointer=pointer, directions_path=directions,
                             checkpoints=pairs, out=out, dataset=dataset, seed=seed)
    typer.echo(f"{out}: steps {[int(s) for s in ds['step'].values]}")
