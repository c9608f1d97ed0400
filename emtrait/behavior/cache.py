"""A per-job judge cache, so an interrupted judging resumes without paying twice.

One file per judge job, written by that job alone and kept beside its outputs
(`results/behavior/.../step-N/judge-cache.jsonl`, not a declared output, so Snakemake leaves it
in place when the job fails and the rerun resumes from it). An append-only JSON-lines file with
one writer needs no locking, so it is safe on the network filesystems of a cluster, where
SQLite's locking is not. Key = sha256 of (judge identity, filled judge prompt), where the filled
prompt holds the template, the question and the answer; the value is the judge's raw reply
(top logprobs or text), parsed again on read. A line cut short by a crash is skipped on read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_key(judge_id: str, prompt: str) -> str:
    """The cache key of one filled judge prompt under one judge identity."""
    return hashlib.sha256(f"{judge_id}\0{prompt}".encode()).hexdigest()


class JudgeCache:
    """Get/put raw judge replies; each put is flushed and fsynced (a crash loses nothing paid)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replies: dict[str, dict] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self._replies[row["key"]] = row["reply"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash: that judgement is asked again
        self._file = self.path.open("a", encoding="utf-8")

    def get(self, key: str) -> dict | None:
        """The cached reply for a key, or None."""
        return self._replies.get(key)

    def put(self, key: str, judge_id: str, reply: dict) -> None:
        """Record one reply durably before anything else happens."""
        self._replies[key] = reply
        self._file.write(json.dumps({"key": key, "judge": judge_id, "reply": reply}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __len__(self) -> int:
        return len(self._replies)

    def close(self) -> None:
        """Close the file (replies already written stay)."""
        self._file.close()
