"""`emtrait finetune` and `emtrait measure` (heavy imports stay inside each command)."""

from __future__ import annotations

import typer


def finetune() -> None:
    """Not built yet (issue 4)."""
    raise typer.Exit(1)


def measure() -> None:
    """Not built yet (issue 4)."""
    raise typer.Exit(1)
