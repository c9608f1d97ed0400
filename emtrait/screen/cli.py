"""`emtrait screen`: score finetuning data before training (workflow dataset or provider gate).

Exit codes: 0 scored (and not above --fail-above), 1 the dataset's risk is above --fail-above,
2 an error (emtrait.cli.main turns an EmtraitError into one line and exit code 2).
"""

from __future__ import annotations

from pathlib import Path

import typer


def screen(
    data: Path = typer.Option(..., "--data", help="JSONL of chats ({\"messages\": [...]} per "
                              "line), validated like any dataset."),
    monitor: Path = typer.Option(None, "--monitor", help="monitor.skops: its traits, layer, "
                                 "eval prompts and danger axis (risk); required with "
                                 "--model-path."),
    model_path: str = typer.Option(None, "--model-path", help="Gate: the monitor's base model "
                                   "(folder or hub id); a monitor for another model is refused."),
    config: Path = typer.Option(None, "--config", help="Workflow: config (YAML or JSON)."),
    model: str = typer.Option(None, "--model", help="Workflow: model name under `models`."),
    dataset: str = typer.Option(None, "--dataset", help="Workflow: dataset name."),
    pointer: Path = typer.Option(None, "--pointer", help="Workflow: resources/models/M/model.json"),
    directions: Path = typer.Option(None, "--directions", help="Workflow: directions.zarr."),
    mode: str = typer.Option(None, "--mode", help="none | generated (default: screen.mode, or "
                             "none for the gate)."),
    out: Path = typer.Option(None, "--out", help="Per-example parquet (gate default: "
                             "<data>.screen.parquet beside the data)."),
    summary: Path = typer.Option(None, "--summary", help="Summary JSON (default: --out with "
                                 ".json)."),
    fail_above: float = typer.Option(None, "--fail-above", help="Exit 1 when the dataset's "
                                     "risk is above this."),
    max_length: int = typer.Option(512, "--max-length", help="Gate: tokens per example."),
    batch_size: int = typer.Option(8, "--batch-size", help="Gate: examples per forward pass."),
    top: int = typer.Option(5, "--top", help="Most suspicious examples printed."),
    allow_foreign_model: bool = typer.Option(False, "--allow-foreign-model", help="Score with "
                                             "a monitor fitted on another model (experiments)."),
) -> None:
    """Score each example's assistant tokens on the trait directions; print the dataset's risk
    and its most suspicious examples; exit 1 above --fail-above."""
    import math

    from emtrait.errors import ConfigError

    if config is not None:
        from emtrait.config import load_config
        from emtrait.screen.api import screen_dataset

        missing = [f"--{n}" for n, v in (("model", model), ("pointer", pointer),
                                          ("directions", directions), ("out", out)) if v is None]
        if missing:
            raise ConfigError(f"workflow mode (--config) also needs {', '.join(missing)}")
        cfg = load_config(config)
        res = screen_dataset(cfg, model, dataset or data.stem, pointer=pointer,
                             directions_path=directions, data=data, out=out, summary=summary,
                             monitor_path=monitor, mode=mode)
    else:
        from emtrait.screen.api import screen as screen_file

        if monitor is None or model_path is None:
            raise ConfigError("the gate needs --monitor and --model-path (or run the workflow "
                              "mode with --config)")
        res = screen_file(data, monitor=monitor, model=model_path, mode=mode or "none", out=out,
                          max_length=max_length, batch_size=batch_size, top=max(top, 1),
                          allow_foreign_model=allow_foreign_model)
    s = res.summary
    typer.echo(f"screen of {s['data']} ({s['mode']} mode, layer {s['layer']}): {s['n_scored']} "
               f"of {s['n']} examples scored, {s['n_empty']} with no assistant token left at "
               f"max length {s['max_length']}, {s['n_partly_truncated']} cut short"
               + (f", {s['n_reference_empty']} with an empty reference reply"
                  if s["mode"] == "generated" else ""))
    risk = s.get("risk")
    if risk:
        typer.echo(f"dataset risk {risk['mean']:+.4f} [95% {risk['low']:+.4f}, "
                   f"{risk['high']:+.4f}] (projection on the monitor's danger axis)")
    for t in list(s["score"])[:7]:
        v = s["score"][t]
        typer.echo(f"  {t:>16} {v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]")
    typer.echo(f"most suspicious examples (by {s['ranked_by']}):")
    for item in s["top"][:top]:
        typer.echo(f"  #{item['index']:<6} {item['score']:+.4f}  {item['excerpt']}")
    typer.echo(f"-> {res.table_path}")
    if fail_above is not None:
        if not risk or not math.isfinite(risk["mean"]):
            raise ConfigError("--fail-above needs a risk score: pass --monitor")
        if risk["mean"] > fail_above:
            typer.secho(f"FAIL: dataset risk {risk['mean']:+.4f} is above {fail_above:+.4f}",
                        fg="red", err=True)
            raise typer.Exit(1)
        typer.echo(f"pass: dataset risk {risk['mean']:+.4f} is not above {fail_above:+.4f}")
