"""A persistent judge cache, so an interrupted judging resumes without paying twice.

SQLite (one file, safe across processes): key = sha256 of (judge identity, filled judge prompt),
where the filled prompt holds the prompt template, the question and the answer. Values are the
judge's raw reply (top logprobs or text) as JSON, parsed again on read.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path


def cache_key(judge_id: str, prompt: str) -> str:
    return hashlib.sha256(f"{judge_id}\0{prompt}".encode()).hexdigest()


class JudgeCache:
    """Get/put raw judge replies; writes commit at once (a crash loses nothing already paid)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, judge TEXT, reply TEXT)"
        )
        self._db.commit()

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, judge_id: str, reply: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)",
                         (key, judge_id, json.dumps(reply)))
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()
