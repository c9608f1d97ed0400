"""Outputs appear whole or not at all (emtrait.atomic)."""

from __future__ import annotations

import pytest

from emtrait import atomic


@pytest.mark.parametrize("is_dir", [False, True])
def test_failure_leaves_nothing_and_keeps_previous(tmp_path, is_dir):
    target = tmp_path / ("store.zarr" if is_dir else "table.csv")
    with atomic.atomic_path(target, is_dir=is_dir) as tmp:
        (tmp / "a").write_text("old") if is_dir else tmp.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target, is_dir=is_dir) as tmp:
        (tmp / "a").write_text("new") if is_dir else tmp.write_text("new")
        raise RuntimeError("killed mid-write")
    assert ((target / "a") if is_dir else target).read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temp debris


def test_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "d"
    with atomic.atomic_path(target, is_dir=True) as tmp:
        (tmp / "stale").write_text("x")
    with atomic.atomic_path(target, is_dir=True) as tmp:
        (tmp / "fresh").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["fresh"]


def test_write_json_round_trips(tmp_path):
    import json

    atomic.write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2], "b": 1}


def test_published_outputs_follow_umask(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        with atomic.atomic_path(tmp_path / "d", is_dir=True) as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
