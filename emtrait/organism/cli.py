"""`emtrait organism` commands (heavy imports stay inside each command)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("build")
def build_cmd(
    config: Path = typer.Option(..., "--config", help="Config YAML (or the workflow's JSON)."),
    name: str = typer.Option(..., "--name", help="Entry under `organisms` in the config."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (resources/organisms/N)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Build a tiny persona-conditioned Llama with a known answer, from the config's spec."""
    from emtrait.config import load_config
    from emtrait.organism.build import build

    cfg = load_config(config)
    spec = cfg.organism(name)
    meta = build(spec, out, name, cfg.hash(), progress=progress)
    typer.echo(
        f"organism {name}: {meta['parameters']:,} parameters, loss {meta['loss_first']:.2f} -> "
        f"{meta['loss_final']:.3f} (±{meta['loss_final_std']:.3f}), built in "
        f"{meta['build_seconds']} s on {meta['threads']} thread(s) -> {out}"
    )
