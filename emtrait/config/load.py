"""Reading a config: YAML with unique keys, validation into `Config`, and its JSON-Schema.

`load_config` parses a file into `Config`; `json_schema()` generates `config/schema.json`, which
the Snakefile validates against (a test keeps the committed schema in sync with the classes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from emtrait.config.base import config_error
from emtrait.config.root import Config
from emtrait.errors import ConfigError


def without_nulls(data: Any) -> Any:
    """`data` with every null-valued key dropped (recursively): an optional section written as
    `key: null` means "unset", which JSON-Schema default-filling validators cannot walk into."""
    if isinstance(data, dict):
        return {k: without_nulls(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [without_nulls(v) for v in data]
    return data


def from_dict(data: Any, source: str = "config") -> Config:
    """Validate an already-parsed config mapping (what Snakemake hands the Snakefile)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source, root=Config) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _DuplicateKey(key, line, first_line[key])
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def check_unique_keys(path: str | os.PathLike) -> None:
    """Raise a ConfigError naming file and line if a YAML file repeats a key in one mapping.

    For files read by other YAML loaders (Snakemake's --configfile), which keep the last one.
    """
    try:
        yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(
            f"{path}:{e.line}: key '{e.key}' is given twice (first on line {e.first}); YAML would "
            "silently keep only the last one. Rename or remove one of them"
        ) from None
    except yaml.YAMLError:
        pass  # syntax errors are reported by the loader that actually reads the file


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file; errors name the file, line or key and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass --config with an existing file")
    try:
        check_unique_keys(p)
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return from_dict(data, source=str(p))


def json_schema() -> dict[str, Any]:
    """JSON-Schema (2020-12) of `Config`, for `snakemake.utils.validate`."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "emtrait configuration. Generated from emtrait/config/ by `emtrait config schema`; "
        "do not edit by hand."
    )
    _drop_null_object_defaults(schema)
    return schema


def _drop_null_object_defaults(node: Any) -> None:
    """Remove `default: null` from optional sections (anyOf [$ref, null]): Snakemake's
    validate() fills defaults in and would then descend into the section with None and fail
    ('NoneType' object has no attribute 'setdefault'). Absent means null all the same."""
    if isinstance(node, dict):
        refs = [a for a in node.get("anyOf", []) if isinstance(a, dict) and "$ref" in a]
        if refs and "default" in node and node["default"] is None:
            del node["default"]
        for value in node.values():
            _drop_null_object_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_object_defaults(value)
