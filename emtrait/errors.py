"""One error family, so callers can catch emtrait's own complaints and nothing else.

Every message names the file, line or config key at fault and says what to do about it.
Each class also subclasses the built-in it refines, so `except ValueError` keeps working.
"""

from __future__ import annotations


class EmtraitError(Exception):
    """Base class of every error emtrait raises on purpose."""


class ConfigError(EmtraitError, ValueError):
    """A config file or entry is wrong (unknown key, bad value, dangling reference)."""


class DataError(EmtraitError, ValueError):
    """An input data file (dataset, prompt set, question set) is malformed."""


class ModelError(EmtraitError, ValueError):
    """A model does not fit the request (layer out of range, no chat template, bad modules)."""


class IntegrityError(EmtraitError, RuntimeError):
    """A downloaded or stored artifact fails a checksum or format check."""


class JudgeError(EmtraitError, RuntimeError):
    """A behavioural judge could not be reached or configured."""


class StoreError(EmtraitError, ValueError):
    """A Zarr store or saved artifact is missing, incomplete or not what it claims to be."""


def check_number(value: object, what: str, *, low: float | None = None,
                 high: float | None = None) -> float:
    """`value` as a float if it is a finite number within [low, high], else a ConfigError
    naming `what` (a CLI option, config key or argument): every pass/fail gate goes through
    this, so none is NaN or infinite (a NaN comparison is always False: a gate that cannot
    fail)."""
    import math

    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, got {value!r}; give a real "
                          "threshold")
    if (low is not None and number < low) or (high is not None and number > high):
        span = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{what} must lie in {span}, got {value!r}")
    return number


def did_you_mean(name: object, known: object) -> str:
    """" Did you mean 'x'?" for the known name closest to `name`, or "" (for error messages)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" Did you mean '{close[0]}'?" if close else ""
