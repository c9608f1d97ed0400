"""Screen finetuning data before training: which examples push the model toward misalignment.

`screen(data, monitor=..., model=...) -> ScreenResult` is the Python API of the provider gate
(`emtrait screen --monitor M --data F --model-path P`); the workflow's rule `screen` scores
every prepared dataset. The default score is gradient alignment with the monitor's risk
(emtrait/screen/gradient.py); projection baselines in emtrait/screen/core.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below are (for type checkers and the API docs)
    from emtrait.screen.core import ScreenResult
    from emtrait.screen.gate import screen

__all__ = ["ScreenResult", "screen"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import emtrait.screen` stays light (torch loads only when scoring).
    if name == "screen":
        from emtrait.screen.gate import screen

        return screen
    if name == "ScreenResult":
        from emtrait.screen.core import ScreenResult

        return ScreenResult
    raise AttributeError(name)
