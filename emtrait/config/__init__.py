"""The typed config (moved from emtrait/config.py; split into one module per section next)."""

from emtrait.config.root import *  # noqa: F403
from emtrait.config.root import _lookup  # noqa: F401
