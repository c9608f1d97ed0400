"""Static checks that are part of the test command: ruff, `snakemake --lint`, snakefmt, the
import map of emtrait/ (import-linter's contracts in pyproject.toml) and no private name across
packages."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO, snakemake


def test_ruff_clean():
    ruff = shutil.which("ruff") or f"{sys.prefix}/bin/ruff"
    proc = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_lint_clean():
    run = snakemake(REPO, "--lint", check=False, timeout=300)
    assert run.returncode == 0, run.output


def test_import_map_holds():
    """pyproject.toml's [tool.importlinter] contracts (DEVELOPING.md "Layout"): stages over
    measurement over the core, no upward arrow, no circle, independent stages stay apart."""
    lint = shutil.which("lint-imports") or f"{sys.prefix}/bin/lint-imports"
    proc = subprocess.run([lint, "--no-cache"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def private_imports_across_packages(root: Path) -> list[str]:
    """`from emtrait.X... import _name` where X is not the importer's own top-level package.

    import-linter sees modules, not names, so this one rule is checked on the syntax tree: a
    private name stays inside its package (emtrait/<package>/ or one core module).
    """
    found = []
    for path in sorted((root / "emtrait").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        own = parts[1] if len(parts) > 2 else parts[-1]  # package, or the core module itself
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("emtrait.")):
                continue
            target = node.module.split(".")[1]
            private = [a.name for a in node.names
                       if a.name.startswith("_") and not a.name.startswith("__")]
            if private and target != own:
                found.append(f"{path.relative_to(root)}:{node.lineno} imports {private} from "
                             f"{node.module}")
    return found


def test_no_private_name_crosses_a_package_boundary(tmp_path):
    assert private_imports_across_packages(REPO) == []
    # the check sees what it must: a private name taken from another package
    bad = tmp_path / "emtrait" / "live" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from emtrait.modeling import _follow\nfrom emtrait.live.y import _ok\n")
    assert private_imports_across_packages(tmp_path) == [
        "emtrait/live/x.py:1 imports ['_follow'] from emtrait.modeling"]
def test_snakefmt_clean():
    """The Snakefile and rules files are in snakefmt's style (pyproject [tool.snakefmt]: ruff's
    line length). Fix with `snakefmt workflow/`."""
    snakefmt = shutil.which("snakefmt") or f"{sys.prefix}/bin/snakefmt"
    proc = subprocess.run([snakefmt, "--check", "--diff", str(REPO / "workflow")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


MODULE_LINES = 500  # DEVELOPING.md "Conventions": a module past this is two modules
FUNCTION_BODY_LINES = 60  # after the signature and docstring; longer needs "Long:" in the docstring


def oversized(root: Path) -> list[str]:
    """Modules over MODULE_LINES and function bodies over FUNCTION_BODY_LINES in emtrait/."""
    found = []
    for path in sorted((root / "emtrait").rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(root)
        if text.count("\n") > MODULE_LINES:
            found.append(f"{where}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node) or ""
            body = node.body[1:] if doc else node.body
            if body and node.end_lineno - body[0].lineno + 1 > FUNCTION_BODY_LINES \
                    and "Long:" not in doc:
                found.append(f"{where}:{node.lineno} {node.name}: "
                             f"{node.end_lineno - body[0].lineno + 1}-line body")
    return found


def test_no_oversized_module_or_function(tmp_path):
    assert oversized(REPO) == []
    # the check sees what it must: a long module, a long body, and the excused long body
    pkg = tmp_path / "emtrait"
    pkg.mkdir()
    body = "".join("    x = 1\n" for _ in range(FUNCTION_BODY_LINES + 1))
    (pkg / "long.py").write_text(f'def f():\n    """Short."""\n{body}\n'
                                 f'def g():\n    """Long: a table of options."""\n{body}'
                                 + "#\n" * MODULE_LINES)
    lines = (pkg / "long.py").read_text().count("\n")
    assert lines > MODULE_LINES
    assert oversized(tmp_path) == [f"emtrait/long.py: {lines} lines",
                                   f"emtrait/long.py:1 f: {FUNCTION_BODY_LINES + 1}-line body"]
