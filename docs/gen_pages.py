"""Generate the reference pages at build time (mkdocs-gen-files runs this; nothing is committed).

- `reference/config.md` from `config/schema.json` (itself generated from the typed config by
  `emtrait config schema`): every key with its type, default and description.
- `reference/cli.md` from the Typer app `emtrait.cli.app`: every command with its usage, help
  and options.

Run alone (`python docs/gen_pages.py OUT_DIR`) it writes the two pages into OUT_DIR.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.json"


# ------------------------------------------------------------------------ configuration


def _ref_name(node: dict) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _type(node: dict) -> str:
    """A JSON-Schema node as a short type: `int`, `"a" | "b"`, `list[str]`, `ModelEntry`, ..."""
    if "$ref" in node:
        return _ref_name(node)
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    if "anyOf" in node:
        return " | ".join(_type(n) for n in node["anyOf"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"list[{_type(node.get('items', {}))}]"
    if kind == "object" and "patternProperties" in node:
        (value,) = node["patternProperties"].values()
        return f"map[name, {_type(value)}]"
    if kind == "object" and "additionalProperties" in node and isinstance(
            node["additionalProperties"], dict):
        return f"map[str, {_type(node['additionalProperties'])}]"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool",
            "null": "null", "object": "mapping"}.get(kind, kind)


def _children(node: dict) -> Iterator[tuple[str, str]]:
    """(key suffix, definition name) of the sections nested in a property."""
    name = _ref_name(node)
    if name:
        yield "", name
    for sub in node.get("anyOf", []):
        yield from _children(sub)
    if node.get("type") == "array":
        yield from ((f"[]{k}", n) for k, n in _children(node.get("items", {})))
    for value in node.get("patternProperties", {}).values():
        yield from ((f".<name>{k}", n) for k, n in _children(value))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from ((f".<key>{k}", n) for k, n in _children(extra))


def _cell(text: str) -> str:
    """Text for a table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """A table cell outside code: also `<name>` kept from being read as HTML."""
    return _cell(text).replace("<", "&lt;")


def _table(definition: dict, defs: dict) -> list[str]:
    """One row per key: a nested section's type is its definition's name (its heading below
    names it too), and its description is the definition's when the key has none."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, node in definition.get("properties", {}).items():
        default = f"`{json.dumps(node['default'])}`" if "default" in node else "—"
        name = _ref_name(node)
        text = node.get("description") or (defs[name].get("description", "") if name else "")
        lines.append(f"| `{key}` | {_cell(_type(node))} | {_cell(default)} | {_prose(text)} |")
    return lines


def config_reference(schema: dict) -> str:
    """The configuration reference as Markdown: one section per (nested) config section."""
    defs = schema.get("$defs", {})
    out = ["# Configuration reference", "",
           "Generated from `config/schema.json` when the site is built. Keys not listed are "
           "errors; a key set to `null` means unset (the default applies). How the sections "
           "fit together: [Configuring the workflow](../configuration.md).", "",
           "## Top level", "", *_table(schema, defs), ""]
    queue = [(key, node) for key, node in schema["properties"].items()]
    seen: set[str] = set()
    while queue:
        path, node = queue.pop(0)
        for suffix, name in _children(node):
            key = f"{path}{suffix}"
            if key in seen:
                continue
            seen.add(key)
            definition = defs[name]
            out += [f"## `{key}`", "", f"{_prose(definition.get('description', ''))} ({name})",
                    "", *_table(definition, defs), ""]
            queue += [(f"{key}.{k}", n) for k, n in definition.get("properties", {}).items()]
    return "\n".join(out)


# ------------------------------------------------------------------------------- the CLI


def _commands(command, path: list[str]) -> Iterator[tuple[list[str], object]]:
    """Every command of a group, depth first, in the order they were added. (Typer vendors its
    own click, so groups are recognised by their `commands`, not by click's classes.)"""
    yield path, command
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            if not getattr(sub, "hidden", False):
                yield from _commands(sub, [*path, name])


def _param_row(param, ctx) -> str:
    """One option or argument as `--help` shows it: its declaration, then help, default and
    whether it is required."""
    record = param.get_help_record(ctx)
    if record is None:  # an argument: its name, and whether it is required
        record = (param.name.upper(), "[required]" if param.required else "")
    decl, text = record
    return f"| `{_cell(decl)}` | {_prose(text)} |"


def cli_reference() -> str:
    """The CLI reference as Markdown: usage, help and options of every `emtrait` command."""
    import typer

    from emtrait.cli import app

    root = typer.main.get_command(app)
    out = ["# CLI reference", "",
           "Generated from the Typer app `emtrait.cli.app` when the site is built. Every "
           "workflow rule is one of these commands; each also runs without Snakemake. Bad "
           "input exits 2 with one line naming the file, key or value at fault.", ""]
    for path, command in _commands(root, ["emtrait"]):
        name = " ".join(path)
        out += [f"{'#' * min(len(path) + 1, 4)} `{name}`", ""]
        ctx = command.context_class(command, info_name=name)
        help_text = (command.help or "").strip()
        if help_text:
            out += [help_text, ""]
        out += ["```text", command.get_usage(ctx).strip(), "```", ""]
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            out += ["| option | help |", "|---|---|", *(_param_row(p, ctx) for p in params), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------- writing


def pages() -> dict[str, str]:
    """{page path under docs/: Markdown} of every generated page."""
    return {"reference/config.md": config_reference(json.loads(SCHEMA.read_text())),
            "reference/cli.md": cli_reference()}


def _write_with_gen_files() -> None:
    import mkdocs_gen_files

    for path, text in pages().items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for path, text in pages().items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
elif __name__ == "<run_path>":  # how mkdocs-gen-files runs it during `mkdocs build`
    _write_with_gen_files()
