"""`emtrait screen`: score finetuning data before training (workflow dataset or provider gate).

Exit codes: 0 scored (and not above --fail-above), 1 the dataset's risk is above --fail-above,
2 an error (emtrait.cli.main turns an EmtraitError into one line and exit code 2).
"""

from __future__ import annotations

from pathlib import Path

import typer


def _finite(value: float | None, option: str) -> float | None:
    import math

    from emtrait.errors import ConfigError

    if value is not None and not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, got {value}")
    return value


def screen(
    data: str = typer.Option(..., "--data", help="Data to screen: a .jsonl/.json/.csv/.parquet "
                             "file, a save_to_disk folder or a hub id (read as the workflow "
                             "reads datasets)."),
    monitor: Path = typer.Option(None, "--monitor", help="monitor.skops: its traits, layer, "
                                 "eval prompts and danger axis (risk); required with "
                                 "--model-path. screen_calibration.json beside it gives the "
                                 "default --fail-above."),
    model_path: str = typer.Option(None, "--model-path", help="Gate: the monitor's base model "
                                   "(folder or hub id); a monitor for another model is refused."),
    config: Path = typer.Option(None, "--config", help="Workflow: config (YAML or JSON)."),
    model: str = typer.Option(None, "--model", help="Workflow: model name under `models`."),
    dataset: str = typer.Option(None, "--dataset", help="Workflow: dataset name."),
    pointer: Path = typer.Option(None, "--pointer", help="Workflow: resources/models/M/model.json"),
    directions: Path = typer.Option(None, "--directions", help="Workflow: directions.zarr."),
    mode: str = typer.Option(None, "--mode", help="gradient (default: what a training step on "
                             "each example does to the monitor's risk) | none | generated "
                             "(projection baselines). Workflow default: screen.mode."),
    out: Path = typer.Option(None, "--out", help="Per-example parquet (gate default: "
                             "<data>.screen.parquet beside the data)."),
    summary: Path = typer.Option(None, "--summary", help="Summary JSON (default: --out with "
                                 ".json)."),
    fail_above: float = typer.Option(None, "--fail-above", help="Exit 1 when the dataset's "
                                     "risk is above this (default: the calibration's "
                                     "threshold, from screen_calibration.json)."),
    sample: int = typer.Option(None, "--sample", help="Gate: score a seeded sample of N "
                               "examples (streamed); the verdict carries its interval."),
    seed: int = typer.Option(0, "--seed", help="Gate: seed of --sample and the bootstrap."),
    target_modules: str = typer.Option(None, "--target-modules", help="Gate: comma-separated "
                                       "LoRA target modules θ (default: the calibration's)."),
    finetune: str = typer.Option(None, "--finetune", help="Gate: lora | full (default: the "
                                 "calibration's)."),
    loss_on: str = typer.Option(None, "--loss-on", help="Gate: full | assistant, the tokens "
                                "the finetune's loss uses (default: the calibration's)."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Gate: one gradient score per "
                                   "trait too (7x the cost of the gradient score)."),
    baseline: bool = typer.Option(False, "--baseline", help="Gate: also score the projection "
                                  "baseline (mode none) beside the gradient score."),
    columns: str = typer.Option(None, "--columns", help="Gate: column mapping as JSON, e.g. "
                                "'{\"user\": \"q\", \"assistant\": \"a\"}'."),
    split: str = typer.Option("train", "--split", help="Gate: split of a hub id or folder."),
    max_length: int = typer.Option(None, "--max-length", help="Gate: tokens per example "
                                   "(default: the calibration's, else 512)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Gate: examples per forward pass."),
    top: int = typer.Option(5, "--top", help="Most suspicious examples printed."),
    allow_foreign_model: bool = typer.Option(False, "--allow-foreign-model", help="Score with "
                                             "a monitor fitted on another model (experiments)."),
) -> None:
    """Score each example by what a training step on it would do to the monitor's risk; print
    the dataset's risk and its most suspicious examples; exit 1 above --fail-above."""
    import json

    from emtrait.errors import ConfigError

    _finite(fail_above, "--fail-above")
    if config is not None:
        from emtrait.config import load_config
        from emtrait.screen.api import screen_dataset

        missing = [f"--{n}" for n, v in (("model", model), ("pointer", pointer),
                                          ("directions", directions), ("out", out)) if v is None]
        if missing:
            raise ConfigError(f"workflow mode (--config) also needs {', '.join(missing)}")
        res = screen_dataset(load_config(config), model, dataset or Path(data).stem,
                             pointer=pointer, directions_path=directions, data=data, out=out,
                             summary=summary, monitor_path=monitor, mode=mode)
    else:
        from emtrait.screen.gate import screen as screen_data

        if monitor is None or model_path is None:
            raise ConfigError("the gate needs --monitor and --model-path (or run the workflow "
                              "mode with --config)")
        try:
            mapping = json.loads(columns) if columns else None
        except json.JSONDecodeError as e:
            raise ConfigError(f"--columns is not JSON ({e}): {columns}") from None
        res = screen_data(data, monitor=monitor, model=model_path, mode=mode or "gradient",
                          out=out, max_length=max_length, batch_size=batch_size,
                          top=max(top, 1), sample=sample, seed=seed, breakdown=breakdown,
                          baseline=baseline,
                          finetune=finetune, loss_on=loss_on, columns=mapping, split=split,
                          target_modules=target_modules.split(",") if target_modules else None,
                          allow_foreign_model=allow_foreign_model)
    _report(res, top)
    # the workflow's rule measures every dataset (the report compares screens with outcomes): it
    # gates only when asked; the gate command defaults to the calibrated threshold
    _gate(res, fail_above, monitor, calibrated_default=config is None)


def _report(res, top: int) -> None:
    s = res.summary
    sampled = f" (a seeded sample of {s['n_total']})" if s.get("sample") else ""
    typer.echo(f"screen of {s['data']} ({s['mode']} mode, layer {s['layer']}): {s['n_scored']} "
               f"of {s['n']} examples scored{sampled}, {s['n_empty']} with no assistant token "
               f"left at max length {s['max_length']}, {s['n_partly_truncated']} cut short"
               + (f", {s['n_reference_empty']} with an empty reference reply"
                  if s["mode"] == "generated" else ""))
    risk = s.get("risk")
    if risk:
        what = ("gradient alignment with the monitor's risk" if s["mode"] == "gradient"
                else "projection on the monitor's danger axis")
        typer.echo(f"dataset risk {risk['mean']:+.4f} [95% {risk['low']:+.4f}, "
                   f"{risk['high']:+.4f}] ({what})")
    b = s.get("baseline")
    if b:
        typer.echo(f"  projection baseline ({b['mode']}) {b['mean']:+.4f} [95% {b['low']:+.4f}, "
                   f"{b['high']:+.4f}]")
    for t in list(s["score"])[:7]:
        v = s["score"][t]
        typer.echo(f"  {t:>16} {v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]")
    typer.echo(f"most suspicious examples (by {s['ranked_by']}):")
    for item in s["top"][:top]:
        typer.echo(f"  #{item['index']:<6} {item['score']:+.4f}  {item['excerpt']}")
    typer.echo(f"-> {res.table_path}")


def _gate(res, fail_above: float | None, monitor: Path | None, *,
          calibrated_default: bool = True) -> None:
    import math

    from emtrait.errors import ConfigError
    from emtrait.screen.calibration import place, read_calibration

    risk = res.summary.get("risk")
    calib = read_calibration(monitor) if monitor is not None else None
    if calib is not None and risk and calib.get("mode") == res.summary["mode"]:
        typer.echo(f"against the calibration: {place(risk['mean'], calib)}")
        if fail_above is None and calibrated_default:
            fail_above = float(calib["threshold"])
            typer.echo(f"threshold {fail_above:+.4f}: {calib['threshold_rule']}")
    if fail_above is None:
        return
    if not risk or not math.isfinite(risk["mean"]):
        raise ConfigError("--fail-above needs a risk score: pass --monitor")
    if risk["mean"] > fail_above:
        typer.secho(f"FAIL: dataset risk {risk['mean']:+.4f} is above {fail_above:+.4f}",
                    fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"pass: dataset risk {risk['mean']:+.4f} is not above {fail_above:+.4f}")


def calibrate(
    config: Path = typer.Option(..., "--config", help="Config (YAML or JSON): dataset labels."),
    model: str = typer.Option(..., "--model", help="Model name under `models`."),
    monitor: Path = typer.Option(..., "--monitor", help="The model's monitor.skops."),
    screens: list[Path] = typer.Option(..., "--screen", help="Summary JSON of each "
                                       "calibration dataset's screen (repeat)."),
    out: Path = typer.Option(..., "--out", help="screen_calibration.json beside the monitor."),
) -> None:
    """Store where the calibration datasets' screens fall (the gate's default threshold)."""
    import json

    from emtrait.atomic import write_json
    from emtrait.config import load_config
    from emtrait.provenance import provenance
    from emtrait.screen.calibration import build_calibration

    cfg = load_config(config)
    labels = {name: e.label for name, e in cfg.datasets.items() if e.role == "calibration"}
    summaries = [json.loads(Path(p).read_text()) for p in screens]
    calib = build_calibration(summaries, labels, str(monitor),
                              provenance(config_hash=cfg.hash(),
                                         model_source=cfg.model(model).source, seed=0))
    write_json(out, calib)
    typer.echo(f"screen calibration of {model}: threshold {calib['threshold']:+.4f} -> {out}")
