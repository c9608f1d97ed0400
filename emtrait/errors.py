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


def did_you_mean(name: object, known: object) -> str:
    """" Did you mean 'x'?" for the known name closest to `name`, or "" (for error messages)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" Did you mean '{close[0]}'?" if close else ""
