"""The `emtrait` command: one group per workflow stage (rule, command and module share a name).

Stage modules import only typer at top level; torch and friends load inside the commands, so
`emtrait --help` is instant. Every command works without Snakemake.
"""

from __future__ import annotations

import sys

import typer

from emtrait import __version__
from emtrait.analysis.cli import app as analysis_app
from emtrait.behavior.cli import app as behavior_app
from emtrait.config_cli import app as config_app
from emtrait.cube.cli import app as cube_app
from emtrait.errors import EmtraitError
from emtrait.finetune.cli import finetune, measure
from emtrait.monitor.cli import app as monitor_app
from emtrait.organism.cli import app as organism_app
from emtrait.prepare.cli import app as prepare_app
from emtrait.report.cli import app as report_app
from emtrait.screen.cli import calibrate as screen_calibrate
from emtrait.screen.cli import screen
from emtrait.stress.cli import app as stress_app
from emtrait.traits.cli import app as traits_app

app = typer.Typer(
    help="Monitor emergent misalignment during finetuning through alignment-trait drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(config_app, name="config", help="Validate configs and generate the JSON-Schema.")
app.add_typer(prepare_app, name="prepare", help="Prepare models and datasets.")
app.add_typer(organism_app, name="organism", help="Build the tiny model organism.")
app.add_typer(traits_app, name="traits", help="Extract and validate trait directions.")
app.command("finetune", help="Finetune one model on one dataset, measuring every checkpoint.")(
    finetune
)
app.command("measure", help="Measure trait drift of checkpoints made elsewhere.")(measure)
app.add_typer(cube_app, name="cube", help="Merge run stores into the per-model cube.")
app.add_typer(behavior_app, name="behavior", help="Behavioural EM labels per checkpoint.")
app.add_typer(analysis_app, name="analysis", help="Geometry of drift (PCA).")
app.add_typer(monitor_app, name="monitor", help="Fit, validate and apply the EM monitor.")
app.add_typer(report_app, name="report", help="Figures and the summary report.")
app.add_typer(stress_app, name="stress", help="Training variants, misaligned starts, transfer.")
app.command("screen", help="Score finetuning data before training; gate on its risk.")(screen)
app.command("screen-calibration", help="Store where the calibration datasets' screens fall "
            "(the gate's default threshold).")(screen_calibrate)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emtrait {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def main() -> None:
    """Entry point: EmtraitError becomes one clear line on stderr and exit code 2."""
    try:
        app()
    except EmtraitError as e:
        typer.secho(f"emtrait: error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
