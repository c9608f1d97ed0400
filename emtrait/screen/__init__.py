"""Screen finetuning data before training: which examples push the model toward misalignment.

`screen(data, monitor=..., model=...) -> ScreenResult` is the Python API of the provider gate
(`emtrait screen --monitor M --data F --model-path P --fail-above X`); the workflow's rule
`screen` scores every prepared dataset. See emtrait/screen/core.py for the definitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below are (for type checkers and the API docs)
    from emtrait.screen.api import screen
    from emtrait.screen.core import ScreenResult

__all__ = ["ScreenResult", "screen"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import emtrait.screen` stays light (torch loads only when scoring).
    if name == "screen":
        from emtrait.screen.api import screen

        return screen
    if name == "ScreenResult":
        from emtrait.screen.core import ScreenResult

        return ScreenResult
    raise AttributeError(name)
