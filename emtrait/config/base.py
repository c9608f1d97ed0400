"""The base of every config section, the name pattern, and how validation errors read.

The config package has one module per stage's section (`models`, `traits`, `datasets`,
`training`, `measurement`, `behavior`, `monitor`, `screen`, `organisms`, `variants`), the root
`Config` (`root`) and reading/schema (`load`); `emtrait.config` re-exports every public name.
Checks of names that select an implementation ask `emtrait.registry`, never a stage module.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emtrait.errors import ConfigError, did_you_mean

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silent defaults."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


def config_error(err: ValidationError, source: str = "config", prefix: tuple = (),
                 root: type[BaseModel] | None = None) -> ConfigError:
    """One ConfigError listing every problem pydantic found, each with its key path.

    `prefix` is the key path of the validated part (e.g. ('models', 'm', 'training')); `root`
    is the class validated at the top level, which lets an unknown key get a did-you-mean.
    """
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
        if e["type"] == "extra_forbidden":
            parent = ".".join(str(p) for p in (*prefix, *e["loc"][:-1]))
            known = known_keys(root, e["loc"][:-1]) if root is not None and not prefix else []
            hint = did_you_mean(e["loc"][-1], known) or " Remove it"
            where = f" under '{parent}'" if parent else ""
            lines.append(f"  {loc}: unknown key{where}.{hint}" +
                         (f" (known: {', '.join(known)})" if known else ""))
        elif not e["loc"] and e["type"] == "value_error":  # a whole-config check: no input dump
            lines.append(f"  {str(e['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError(f"{source}: invalid configuration:\n" + "\n".join(lines))


def known_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at a location path (e.g. ('models', 'smol')), for did-you-mean hints."""
    node: Any = root
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        elif typing.get_origin(node) is dict:  # entries keyed by user names: step into the value
            node = typing.get_args(node)[1]
        else:
            return []
    if typing.get_origin(node) is dict:
        return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return sorted(node.model_fields)
    return []
