"""Scoring finetuning data before training: where each example's replies sit in trait space.

Per example: the base model's block output at l* averaged over the example's assistant tokens
(the content of every assistant turn; prompt, system and template tokens excluded), dotted with
each unit trait direction and divided by norm0. norm0 is the mean per-prompt ‖h‖ of the
evaluation prompts' last token at l* on the base model: exactly the step-0 norm0 of every
finetune of that model (`emtrait.drift.mean_norm`), so screen scores and drift share units.

Reference modes: `none` keeps that normalised projection; `generated` (the persona-vector
"projection difference") subtracts the same quantity for the base model's own greedy reply to
the same context, i.e. how far the data's replies sit from what the model would say itself.

Risk: the score vector on the monitor's traits dotted with the monitor's danger axis, the unit
vector from the mean drift of benign to the mean drift of dangerous calibration checkpoints
(`emtrait.drift.danger_axis`, stored in the monitor by `emtrait monitor fit`). In `none` mode
it carries the base model's own offset along that axis (the same for every dataset of a model).

Everything streams: examples are read, scored and written in chunks; the dataset score's
bootstrap is a Poisson bootstrap updated per chunk, so memory does not grow with n.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MODES = ("none", "generated")
EXCERPT_CHARS = 120
CHUNK = 256  # examples read, scored and written at a time


@dataclass(frozen=True)
class ChatFormat:
    """The model's chat conventions (what `emtrait.modeling.model_messages` reads) + max length."""

    system_prompt_method: str = "native"
    no_system_prompt: str = "template_default"
    max_length: int = 512
    model_name: str = "model"


# ---------------------------------------------------------------------------------------------
# reading data (streaming, validated like any dataset)
# ---------------------------------------------------------------------------------------------


def iter_examples(path: str | os.PathLike) -> Iterator[list[dict[str, str]]]:
    """Every example of a JSONL file, validated and converted as any dataset is (the formats of
    emtrait.datasets), line by line: never all in memory."""
    from emtrait.datasets import iter_jsonl, to_chat

    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file {p} does not exist; pass a JSONL file of chats")
    seen = False
    for where, row in iter_jsonl(p):
        seen = True
        yield to_chat(row, where)
    if not seen:
        raise DataError(f"dataset file {p} is empty (no examples); it needs one JSON chat per "
                        "line")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# token masks
# ---------------------------------------------------------------------------------------------


def assistant_tokens(tok: Any, messages: list[dict[str, str]], fmt: ChatFormat
                     ) -> tuple[list[int], list[bool], int]:
    """Token ids of one chat cut at `fmt.max_length`, which are assistant content, and how many
    assistant tokens the chat has uncut.

    The chat is rendered as the finetune renders it (same system-prompt convention, same
    right truncation); a token is an assistant token when its characters overlap the content of
    an assistant turn of the data (not the template's markers, not a synthetic UNDERSTOOD turn).
    """
    from emtrait.modeling import model_messages, render_chat, reply_spans

    msgs, trained = model_messages(messages, fmt)
    text = render_chat(tok, msgs, add_generation_prompt=False, model_name=fmt.model_name)
    spans = []
    for (a, b), i in zip(reply_spans(tok, msgs, trained, text, fmt.model_name),
                         [i for i, t in enumerate(trained) if t], strict=True):
        content = msgs[i]["content"].strip()
        if not content:
            continue
        start = text.find(content, a, b)
        if start < 0:
            raise DataError(f"the chat template of {fmt.model_name} rewrites assistant content, so "
                            "its tokens cannot be located; screening needs a template that keeps "
                            "the content verbatim")
        spans.append((start, start + len(content)))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [e > s and any(s < ce and e > cs for cs, ce in spans)
            for s, e in enc["offset_mapping"]]
    n = fmt.max_length  # right truncation, as the finetune's tokenizer call does
    return list(enc["input_ids"])[:n], mask[:n], sum(mask)


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------


def masked_means(model: Any, rows: Sequence[tuple[list[int], list[bool], int]], layer: int,
                 pad_id: int, batch_size: int) -> np.ndarray:
    """Mean block-`layer` output over each row's masked tokens: (row, hidden) float64.

    Rows are batched by length, right-padded, run truncated after block `layer`. A row with no
    masked token gives NaN.
    """
    import numpy as np
    import torch

    from emtrait.capture import forward_blocks, pool

    device = next(model.parameters()).device
    out = np.full((len(rows), model.config.hidden_size), np.nan)
    todo = sorted((i for i, r in enumerate(rows) if any(r[1])), key=lambda i: len(rows[i][0]))
    for k in range(0, len(todo), batch_size):
        idx = todo[k:k + batch_size]
        width = max(len(rows[i][0]) for i in idx)
        ids = torch.tensor([rows[i][0] + [pad_id] * (width - len(rows[i][0])) for i in idx],
                           device=device)  # (batch, pos)
        attn = torch.tensor([[1] * len(rows[i][0]) + [0] * (width - len(rows[i][0]))
                             for i in idx], device=device)
        sel = torch.tensor([[int(b) for b in rows[i][1]] + [0] * (width - len(rows[i][1]))
                            for i in idx], device=device)
        h = forward_blocks(model, ids, attn, [layer])[layer]  # (batch, pos, hidden)
        out[idx] = pool(h, sel, "masked_mean").to(torch.float64).cpu().numpy()
    return out


def base_norm0(model: Any, tok: Any, prompts: Sequence[str], directions: np.ndarray,
               layer: int, fmt: ChatFormat, batch_size: int = 16) -> float:
    """norm0 as every finetune of this model computes it at step 0 (eval prompts, last token)."""
    from emtrait.drift import mean_norm
    from emtrait.measure.probe import TraitProbe
    from emtrait.modeling import format_user_prompts

    texts = format_user_prompts(tok, list(prompts), model_name=fmt.model_name,
                                method=fmt.system_prompt_method,
                                no_system_prompt=fmt.no_system_prompt)
    probe = TraitProbe(directions=directions, traits=[str(i) for i in range(len(directions))],
                       layer=layer, texts=texts, tokenizer=tok, batch_size=batch_size)
    return mean_norm(probe.measure(model).activation)


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


# ---------------------------------------------------------------------------------------------
# the streaming screen
# ---------------------------------------------------------------------------------------------


class _Bootstrap:
    """Poisson bootstrap of column means, updated chunk by chunk (memory O(replicates))."""

    def __init__(self, columns: int, replicates: int, seed: int):
        import numpy as np

        self.rng = np.random.default_rng(seed)
        self.sums = np.zeros((replicates, columns))
        self.counts = np.zeros((replicates, 1))
        self.total = np.zeros(columns)
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        w = self.rng.poisson(1.0, size=(self.sums.shape[0], len(x)))  # (replicate, row)
        self.sums += w @ x
        self.counts += w.sum(axis=1, keepdims=True)
        self.total += x.sum(axis=0)
        self.n += len(x)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import numpy as np

        mean = self.total / max(self.n, 1)
        if not self.sums.shape[0]:
            return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
        reps = self.sums[self.counts[:, 0] > 0] / self.counts[self.counts[:, 0] > 0]
        return mean, np.percentile(reps, 2.5, axis=0), np.percentile(reps, 97.5, axis=0)


@dataclass
class Scorer:
    """Everything needed to score examples: model, directions at l*, norm0, conventions."""

    model: Any
    tokenizer: Any
    directions: np.ndarray  # (trait, hidden) unit vectors at `layer`
    traits: list[str]
    layer: int
    norm0: float
    fmt: ChatFormat
    mode: str = "none"
    axis: np.ndarray | None = None  # (trait,) danger axis over `axis_traits`
    axis_traits: list[str] = field(default_factory=list)
    batch_size: int = 8
    reply_tokens: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"unknown screen mode {self.mode!r}; use one of {MODES}")
        missing = sorted(set(self.axis_traits) - set(self.traits))
        if missing:
            raise DataError(f"the danger axis names traits {missing} the directions lack")

    def project(self, chats: Sequence[list[dict[str, str]]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised projections (chat, trait), NaN without assistant tokens; assistant tokens
        kept and assistant tokens uncut per chat."""
        import numpy as np

        from emtrait.drift import normalise
        from emtrait.measure.probe import frozen_for_measuring

        rows = [assistant_tokens(self.tokenizer, c, self.fmt) for c in chats]
        with frozen_for_measuring(self.model):
            h = masked_means(self.model, rows, self.layer, self.tokenizer.pad_token_id,
                             self.batch_size)
        proj = normalise(h @ np.asarray(self.directions, np.float64).T, self.norm0)
        return proj, np.array([sum(r[1]) for r in rows]), np.array([r[2] for r in rows])

    def risk(self, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.axis is None:
            return np.full(len(scores), np.nan)
        cols = [self.traits.index(t) for t in self.axis_traits]
        return scores[:, cols] @ np.asarray(self.axis, float)


def _excerpt(chat: list[dict[str, str]]) -> str:
    text = " / ".join(m["content"] for m in chat if m["role"] == "assistant")
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1] + "…"


class _ReplyCache:
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


@dataclass
class ScreenResult:
    """What a screen produced: the summary (dataset scores) and where the per-example table is."""

    summary: dict
    table_path: Path

    @property
    def score(self) -> float:
        """The dataset's risk (mean over scored examples of the per-example risk)."""
        return float(self.summary["risk"]["mean"]) if self.summary.get("risk") else float("nan")

    @property
    def top(self) -> list[dict]:
        """The most suspicious examples (highest risk), with index, risk and excerpt."""
        return list(self.summary["top"])

    def table(self) -> pd.DataFrame:
        """The per-example table (one row per example of the input file)."""
        import pandas as pd

        return pd.read_parquet(self.table_path)


def run_screen(scorer: Scorer, examples: Iterable[list[dict[str, str]]], out: str | os.PathLike,
               *, summary_path: str | os.PathLike | None = None, top: int = 10,
               bootstrap: int = 1000, seed: int = 0, reply_cache: str | os.PathLike | None = None,
               cache_key: str = "", meta: dict | None = None) -> ScreenResult:
    """Score every example, stream the per-example parquet, write the JSON summary atomically.

    Examples whose assistant turns are truncated away entirely get NaN scores (`kept_tokens`
    0) and are counted; if every example is, nothing is written and a DataError says why.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emtrait.atomic import atomic_path, write_json

    out = Path(out)
    summary_path = Path(summary_path) if summary_path else out.with_suffix(".json")
    cache_path = Path(reply_cache) if reply_cache else None
    generated = scorer.mode == "generated"
    cache = _ReplyCache(cache_path, cache_key) if generated else None
    boot = _Bootstrap(len(scorer.traits) + 1, bootstrap, seed)
    heap: list[tuple[float, int, str]] = []
    counts = {"n": 0, "n_scored": 0, "n_empty": 0, "n_partly_truncated": 0,
              "n_reference_empty": 0}
    schema = pa.schema([("index", pa.int64()), ("kept_tokens", pa.int64()),
                        ("truncated", pa.bool_()), ("excerpt", pa.string()),
                        *[(t, pa.float64()) for t in scorer.traits], ("risk", pa.float64())])
    new_cache = None
    with atomic_path(out) as tmp, _maybe_atomic(cache_path if generated else None) as cache_tmp:
        writer = pq.ParquetWriter(tmp, schema)
        try:
            if cache_tmp is not None:
                new_cache = open(cache_tmp, "w", encoding="utf-8")
                new_cache.write(json.dumps({"key": cache_key}) + "\n")
            for chunk in _chunks(examples, CHUNK):
                proj, kept, full = scorer.project(chunk)
                if generated:
                    replies = cache.take(len(chunk)) if cache is not None else None
                    if replies is None:
                        replies = generate_replies(scorer.model, scorer.tokenizer, chunk,
                                                   scorer.fmt, scorer.reply_tokens,
                                                   scorer.batch_size)
                    if new_cache is not None:
                        new_cache.writelines(json.dumps({"replies": r}) + "\n" for r in replies)
                    ref, ref_kept, _ = scorer.project([with_replies(c, r) for c, r in
                                                    zip(chunk, replies, strict=True)])
                    counts["n_reference_empty"] += int(((ref_kept == 0) & (kept > 0)).sum())
                    proj = proj - ref
                risk = scorer.risk(proj)
                ok = np.isfinite(proj).all(axis=1)
                start = counts["n"]
                excerpts = [_excerpt(c) for c in chunk]
                counts["n"] += len(chunk)
                counts["n_scored"] += int(ok.sum())
                counts["n_empty"] += int((kept == 0).sum())
                counts["n_partly_truncated"] += int(((kept > 0) & (kept < full)).sum())
                boot.add(np.column_stack([proj, risk])[ok])
                rank = risk if scorer.axis is not None else proj.mean(axis=1)
                for j in np.flatnonzero(ok):
                    item = (float(rank[j]), start + int(j), excerpts[j])
                    if len(heap) < top:
                        heapq.heappush(heap, item)
                    elif item > heap[0]:
                        heapq.heapreplace(heap, item)
                cols = {"index": np.arange(start, start + len(chunk)), "kept_tokens": kept,
                        "truncated": kept < full, "excerpt": excerpts,
                        **{t: proj[:, i] for i, t in enumerate(scorer.traits)}, "risk": risk}
                writer.write_table(pa.table(cols, schema=schema))
        finally:
            writer.close()
            if new_cache is not None:
                new_cache.close()
            if cache is not None:
                cache.close()
        if counts["n_scored"] == 0:
            raise DataError(
                f"no example could be scored: {counts['n_empty']} of {counts['n']} keep no "
                f"assistant token at max_length {scorer.fmt.max_length}"
                + (f" and {counts['n_reference_empty']} have an empty reference reply"
                   if counts["n_reference_empty"] else "")
                + "; raise the max length or shorten the prompts")
    mean, low, high = boot.result()
    t = len(scorer.traits)
    summary = {
        **(meta or {}),
        "mode": scorer.mode, "layer": scorer.layer, "norm0": scorer.norm0,
        "traits": scorer.traits, "max_length": scorer.fmt.max_length, **counts,
        "score": {tr: {"mean": mean[i], "low": low[i], "high": high[i]}
                  for i, tr in enumerate(scorer.traits)},
        "risk": ({"mean": mean[t], "low": low[t], "high": high[t],
                  "axis": dict(zip(scorer.axis_traits, map(float, scorer.axis), strict=True))}
                 if scorer.axis is not None else None),
        "ranked_by": "risk" if scorer.axis is not None else "mean trait score",
        "top": [{"index": i, "score": s, "excerpt": e} for s, i, e in sorted(heap, reverse=True)],
        "bootstrap": bootstrap, "seed": seed,
        "reply_tokens": scorer.reply_tokens if generated else None,
    }
    write_json(summary_path, summary)
    return ScreenResult(summary=json.loads(json.dumps(summary, default=float)), table_path=out)


@contextlib.contextmanager
def _maybe_atomic(path: Path | None) -> Iterator[Path | None]:
    if path is None:
        yield None
        return
    from emtrait.atomic import atomic_path

    with atomic_path(path) as tmp:
        yield tmp


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
