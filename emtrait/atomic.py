"""Outputs appear whole or not at all.

Every writer in emtrait goes through these helpers: content is written to a hidden sibling
temporary path and renamed into place only after it is complete, so a crash, a kill or an error
never leaves a half-written file or Zarr store where Snakemake (or a user) would trust it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> None:
    # mkstemp/mkdtemp create 0600/0700; a published output gets the usual umask-based mode.
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success move it to `path` (replacing what was there).

    On any exception the temporary is deleted and `path` is left exactly as it was.
    """
    target = Path(path)
    tmp = _tmp_sibling(target, is_dir)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _publish_mode(tmp, is_dir)
    publish(tmp, target)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete file or directory `tmp` at `target`, replacing what was there.

    A directory is swapped in with one rename-exchange, so a reader never finds `target` absent
    or half-written; where the kernel lacks renameat2, the old one is moved aside first (a
    microsecond window in which `target` is absent).
    """
    tmp, target = Path(tmp), Path(target)
    if not (target.is_dir() and not target.is_symlink()):
        os.replace(tmp, target)
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
        return
    old = _tmp_sibling(target, is_dir=True)
    old.rmdir()
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomically write `obj` as pretty, key-sorted JSON."""
    import json

    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Atomically write a pandas DataFrame as CSV, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
