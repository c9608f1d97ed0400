"""The documentation cannot rot: the site builds strictly, its reference pages come from the
code, every public name is documented, and the README stays a user's guide.

- `mkdocs build --strict` (mkdocs.yml): a broken link or anchor, a page missing from the nav, a
  README snippet that does not resolve, or a docstring mkdocstrings cannot render fails it.
- Every name a public module exports (`__all__` of `emtrait.live`, `emtrait.screen`,
  `emtrait.monitor.artifact`), and every public method of an exported class, has a docstring
  (read statically by griffe, as mkdocstrings reads it) and is on the built API page.
- The configuration and CLI references are generated from `config/schema.json` and the Typer
  app at build time (docs/gen_pages.py): checked against both here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

from helpers import REPO

PUBLIC_MODULES = ["emtrait.live", "emtrait.screen", "emtrait.monitor.artifact",
                  "emtrait.monitor.transfer"]
SCHEMA = json.loads((REPO / "config" / "schema.json").read_text())


def gen_pages():
    """docs/gen_pages.py as a module (its page generators, without writing anything)."""
    spec = importlib.util.spec_from_file_location("gen_pages", REPO / "docs" / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_objects():
    """(path, griffe object) of every exported name and every public method of an exported
    class, as the API page renders them."""
    import griffe

    package = griffe.load("emtrait", search_paths=[str(REPO)], resolve_aliases=True,
                          resolve_external=False)
    for module_path in PUBLIC_MODULES:
        module = package[module_path.removeprefix("emtrait.")]
        assert module.exports, f"{module_path} has no __all__: its public API is not stated"
        for name in module.exports:
            obj = module[name]
            yield f"{module_path}.{name}", obj
            if obj.is_class:
                for member_name, member in obj.members.items():
                    data = member.is_attribute and "property" not in member.labels
                    # fields are described in their class's docstring; __init__ is merged
                    # into the class (mkdocs.yml: `filters: public`, merge_init_into_class)
                    if data or member_name.startswith("_") or not member.is_public:
                        continue
                    yield f"{module_path}.{name}.{member_name}", member


def test_every_public_name_has_a_docstring():
    missing = [path for path, obj in public_objects()
               if obj.docstring is None or not obj.docstring.value.strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_config_reference_has_every_key():
    text = gen_pages().config_reference(SCHEMA)
    for definition in [SCHEMA, *SCHEMA["$defs"].values()]:
        for key in definition.get("properties", {}):
            assert f"| `{key}` |" in text, key
    assert "## `models.<name>.resources`" in text and "## `behavior.judge`" in text


def test_cli_reference_has_every_command():
    import typer

    from emtrait.cli import app

    text = gen_pages().cli_reference()
    root = typer.main.get_command(app)
    for name, group in root.commands.items():
        assert f"`emtrait {name}`" in text, name
        for sub in getattr(group, "commands", {}):
            assert f"`emtrait {name} {sub}`" in text, (name, sub)
    assert "`--monitor <path>`" in text and "[required]" in text


def test_config_readme_explains_every_section():
    """config/README.md (what snakedeploy and the workflow catalog show) has a section per
    top-level key of the schema."""
    text = (REPO / "config" / "README.md").read_text()
    for key in SCHEMA["properties"]:
        assert f"### `{key}`" in text, key


def test_readme_is_a_users_guide():
    """Short, the two commands as they are, the sections others link to, and no lab notebook
    (commit hashes, sessions, rounds): measurements live under docs/."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    assert "make run    #" in text and "make test   #" in text
    for heading in ["## The workflow", "### Incremental runs", "## The cube (data contracts)",
                    "## Monitor your own finetune", "## Screening data before training",
                    "## Running on SLURM", "## Use in your own project"]:
        assert heading in text, heading
    assert not re.findall(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", text)
    for phrase in ["this round", "last round", "this session"]:
        assert phrase not in text.lower(), phrase
    # the site checks its own links; the README's point into the repository
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (REPO / target).exists(), f"README links to a missing file: {target}"


def inventory(site: Path) -> set[str]:
    """Object names in the site's objects.inv (Sphinx inventory v2, written by mkdocstrings)."""
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line}


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    names = inventory(site)
    missing = [path for path, _ in public_objects() if path not in names]
    assert not missing, f"public names missing from the API page: {missing}"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "emtrait screen" in cli and "emtrait monitor score" in cli
    config = (site / "reference" / "config" / "index.html").read_text()
    assert "checkpoint_every" in config
    assert not (REPO / "docs" / "reference" / "cli.md").exists()  # generated, never committed
