"""The live monitor: a calibrated emtrait monitor inside anyone's training loop.

    from emtrait.live import load
    monitor = load("monitor.skops", tokenizer=tok, model=model)
    reading = monitor.check(model, step)          # step 0 first, then increasing
    if reading.alarm: ...

or, with transformers' Trainer / TRL's SFTTrainer, `callbacks=[MonitorCallback("monitor.skops")]`.
`MonitorCallback` is imported on first use (it subclasses transformers' TrainerCallback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emtrait.live.monitor import LiveMonitor, Reading, load
from emtrait.measure.probe import Measurement, TraitProbe

if TYPE_CHECKING:
    from emtrait.live.callback import MonitorCallback

__all__ = ["LiveMonitor", "Measurement", "MonitorCallback", "Reading", "TraitProbe", "load"]


def __getattr__(name: str) -> Any:
    if name == "MonitorCallback":
        from emtrait.live.callback import MonitorCallback

        return MonitorCallback
    raise AttributeError(f"module 'emtrait.live' has no attribute {name!r}")
