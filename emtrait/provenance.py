"""What every artifact records about how it was made (DESIGN.md: data contracts)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

from emtrait import __version__


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash a JSON-able object independent of key order (config and prompt-set hashes)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def provenance(*, config_hash: str, model_source: str | None = None,
               seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """The attribute block stamped on every Zarr store, table and artifact emtrait writes."""
    attrs: dict[str, Any] = {
        "emtrait_version": __version__,
        "config_hash": config_hash,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if model_source is not None:
        attrs["model_source"] = model_source
    if seed is not None:
        attrs["seed"] = int(seed)
    attrs.update(extra)
    return attrs
