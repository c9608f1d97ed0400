"""The base of every config section, the name pattern, and how validation errors read.

The config package has one module per stage's section (`models`, `traits`, `datasets`,
`training`, `measurement`, `behavior`, `monitor`, `screen`, `organisms`, `variants`), the root
`Config` (`root`) and reading/schema (`load`); `emtrait.config` re-exports every public name.
Checks of names that select an implementation ask `emtrait.registry`, never a stage module.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from emtrait.errors import ConfigError, did_you_mean

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# a Hugging Face hub id: 'name' or 'org/name' (what `emtrait prepare` downloads)
HUB_ID_PATTERN = r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _unique(v: list | None) -> list | None:
    """Reject a list that repeats an entry (a repeated seed or layer would run twice or clash)."""
    if v is not None:
        repeated = sorted({str(x) for x in v if v.count(x) > 1})
        if repeated:
            raise ValueError(f"entries must be unique; {repeated} given more than once: remove "
                             "the repeats")
    return v


def _http_url(v: str) -> str:
    """Reject an endpoint that is not an http(s) URL with a host (it would fail at first call)."""
    url = urlparse(v)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"'{v}' is not an http(s) URL with a host; write it like "
                         "https://api.openai.com/v1 or http://localhost:8000/v1")
    return v


# Lists whose entries must be unique (the JSON-Schema says `uniqueItems`), and endpoint URLs.
UniqueInts = Annotated[list[int], AfterValidator(_unique),
                       Field(json_schema_extra={"uniqueItems": True})]
UniqueStrs = Annotated[list[str], AfterValidator(_unique),
                       Field(json_schema_extra={"uniqueItems": True})]
UniqueNames = Annotated[list[Name], AfterValidator(_unique),
                        Field(json_schema_extra={"uniqueItems": True})]


def unique_list(item: Any) -> Any:
    """`list[item]` whose entries must be unique (for item types other than int, str, Name)."""
    return Annotated[list[item], AfterValidator(_unique),
                     Field(json_schema_extra={"uniqueItems": True})]


HttpUrl = Annotated[str, AfterValidator(_http_url), Field(json_schema_extra={"format": "uri"})]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silent defaults, and no number
    is NaN or infinite (YAML's .nan/.inf would pass every range check and no gate could fail)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True,
                              allow_inf_nan=False)


def config_error(err: ValidationError, source: str = "config", prefix: tuple = (),
                 root: type[BaseModel] | None = None) -> ConfigError:
    """One ConfigError listing every problem pydantic found, each with its key path.

    `prefix` is the key path of the validated part (e.g. ('models', 'm', 'training')); `root`
    is the class validated at the top level, which lets an unknown key get a did-you-mean.
    """
    lines = []
    for e in err.errors():
        e = {**e, "loc": _user_loc(e["loc"])}
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


def _user_loc(loc: tuple) -> tuple:
    """A pydantic error location without the union-member tags it inserts (`list[str]`,
    `function-after[...]`, a section class name): only keys the user wrote."""
    sections = set()
    todo = [Section]
    while todo:
        cls = todo.pop()
        sections.add(cls.__name__)
        todo += cls.__subclasses__()
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in sections)))


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
