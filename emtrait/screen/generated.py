"""`generated` mode (a baseline): the base model's own greedy replies, cached beside the output.

The persona-vector "projection difference": an example's projection minus that of the base
model's reply to the same context. Replies are cached one JSON line per example, keyed by what
they depend on, so a rerun with unchanged model, data and format generates nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emtrait.screen.core import ChatFormat


def generate_replies(model: Any, tok: Any, chats: Sequence[list[dict[str, str]]],
                     fmt: ChatFormat, max_new_tokens: int, batch_size: int) -> list[list[str]]:
    """The base model's greedy reply to the context of every assistant turn of every chat."""
    import torch

    from emtrait.modeling import model_messages, padding, render_chat

    contexts, where = [], []
    for c, chat in enumerate(chats):
        for j, m in enumerate(chat):
            if m["role"] == "assistant":
                msgs, _ = model_messages(chat[:j], fmt)
                contexts.append(render_chat(tok, msgs, add_generation_prompt=True,
                                            model_name=fmt.model_name))
                where.append(c)
    replies: list[list[str]] = [[] for _ in chats]
    device = next(model.parameters()).device
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    texts: dict[int, str] = {}
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        with padding(tok, "left"), torch.no_grad():
            enc = tok([contexts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:], strict=True):
            texts[i] = tok.decode(row, skip_special_tokens=True).strip()
    for i, c in enumerate(where):
        replies[c].append(texts[i])
    return replies


def with_replies(chat: list[dict[str, str]], replies: list[str]) -> list[dict[str, str]]:
    """The chat with its assistant turns replaced, in order, by `replies`."""
    it = iter(replies)
    return [{"role": m["role"], "content": next(it)} if m["role"] == "assistant" else dict(m)
            for m in chat]


class ReplyCache:
    """Replies of `generated` mode, one JSON line per example, keyed by what they depend on."""

    def __init__(self, path: Path | None, key: str):
        self.path, self.key = path, key
        self.reader: Iterator[list[str]] | None = None
        self._file = None
        if path is not None and path.is_file():
            f = open(path, encoding="utf-8")
            try:
                head = json.loads(f.readline() or "{}")
            except json.JSONDecodeError:
                head = {}
            if head.get("key") == key:
                self._file = f
                self.reader = (json.loads(line)["replies"] for line in f)
            else:
                f.close()

    def take(self, k: int) -> list[list[str]] | None:
        if self.reader is None:
            return None
        out = []
        for _ in range(k):
            try:
                out.append(next(self.reader))
            except StopIteration:
                self.close()
                self.reader = None
                return None  # a cache shorter than the data: regenerate everything
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextlib.contextmanager
def maybe_atomic(path: Path | None) -> Iterator[Path | None]:
    if path is None:
        yield None
        return
    from emtrait.atomic import atomic_path

    with atomic_path(path) as tmp:
        yield tmp


class Replies:
    """The reply cache of one screen: read the old one, write the new one atomically (a no-op
    outside `generated` mode)."""

    def __init__(self, mode: str, path: str | Path | None, key: str):
        self.on = mode == "generated"
        self.path = Path(path) if path and self.on else None
        self.key = key
        self.cache: ReplyCache | None = None
        self._stack = contextlib.ExitStack()
        self._new = None

    def __enter__(self) -> Replies:
        if not self.on:
            return self
        self.cache = ReplyCache(self.path, self.key)
        self._stack.callback(self.cache.close)
        tmp = self._stack.enter_context(maybe_atomic(self.path))
        if tmp is not None:
            self._new = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
            self._new.write(json.dumps({"key": self.key}) + "\n")
        return self

    def take(self, k: int) -> list[list[str]] | None:
        return self.cache.take(k) if self.cache is not None else None

    def write(self, replies: list[list[str]]) -> None:
        if self._new is not None:
            self._new.writelines(json.dumps({"replies": r}) + "\n" for r in replies)

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

