"""The streaming screen (`run_screen`, any scorer) and the projection baselines' scorer.

The default score is gradient alignment (emtrait/screen/gradient.py); the projection modes here
are baselines. Per example (projection): the base model's block output at l* averaged over the
example's assistant tokens (prompt, system and template tokens excluded), dotted with each unit
trait direction, over norm0 (the step-0 norm0 of every finetune of the model), so screen scores
and drift share units.

Reference modes: `none` keeps that normalised projection; `generated` (the persona-vector
"projection difference") subtracts the same quantity for the base model's own greedy reply to
the same context, i.e. how far the data's replies sit from what the model would say itself.

Projection risk: the score vector dotted with the monitor's danger axis
(`emtrait.drift.danger_axis`); in `none` mode it carries the base model's own offset along
the axis.

Everything streams: examples are read, scored and written in chunks; the dataset score's
bootstrap is a Poisson bootstrap updated per chunk, so memory does not grow with n.
"""

from __future__ import annotations

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

PROJECTION_MODES = ("none", "generated")  # baselines: where the data's replies sit
MODES = ("gradient", *PROJECTION_MODES)  # gradient: what a step on the data would do (default)
EXCERPT_CHARS = 120
CHUNK = 256  # examples read, scored and written at a time


@dataclass(frozen=True)
class ChatFormat:
    """The model's chat conventions (what `emtrait.modeling.model_messages` reads) + max length."""

    system_prompt_method: str = "native"
    no_system_prompt: str = "template_default"
    max_length: int = 512
    model_name: str = "model"

    @classmethod
    def of_model(cls, cfg: Any, model_name: str, max_length: int | None = None) -> ChatFormat:
        """The format of a configured model: its entry's chat conventions and `max_length`
        (default: the model's training.max_length, the length its finetunes truncate to)."""
        entry = cfg.model(model_name)
        return cls(entry.system_prompt_method, entry.no_system_prompt,
                   max_length or cfg.training_for(model_name).max_length, model_name)


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
        if self.mode not in PROJECTION_MODES:
            raise DataError(f"unknown projection mode {self.mode!r}; use one of "
                            f"{PROJECTION_MODES} (gradient mode: GradientScorer)")
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


@dataclass
class ScreenResult:
    """What a screen produced: the summary (dataset scores) and where the per-example table is."""

    summary: dict
    table_path: Path
    table_stamp: tuple[int, int, int] | None = field(default=None, repr=False)  # as written

    @property
    def score(self) -> float:
        """The dataset's risk (mean over scored examples of the per-example risk)."""
        return float(self.summary["risk"]["mean"]) if self.summary.get("risk") else float("nan")

    @property
    def top(self) -> list[dict]:
        """The most suspicious examples (highest risk), with index, risk and excerpt."""
        return list(self.summary["top"])

    def table(self) -> pd.DataFrame:
        """The per-example table (one row per example of the input file), if still on disk."""
        import pandas as pd

        if self.table_stamp is not None and _stamp(self.table_path) != self.table_stamp:
            raise DataError(f"{self.table_path} is no longer this screen's table (rewritten or "
                            "removed since); give each screen its own out=, or screen again")
        return pd.read_parquet(self.table_path)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    st = os.stat(path) if path.exists() else None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if st else None


def sample_examples(examples: Iterable[Any], n: int, seed: int
                    ) -> tuple[list[tuple[int, Any]], int]:
    """A seeded uniform sample of `n` examples from a stream (reservoir sampling: only `n` are
    held), as (index in the stream, example) in stream order, and how many the stream had."""
    import random

    if n < 1:
        raise DataError(f"--sample / screen.sample must be >= 1, got {n}")
    rng = random.Random(seed)
    kept: list[tuple[int, Any]] = []
    total = 0
    for i, ex in enumerate(examples):
        total += 1
        if len(kept) < n:
            kept.append((i, ex))
        else:
            j = rng.randrange(i + 1)
            if j < n:
                kept[j] = (i, ex)
    return sorted(kept, key=lambda p: p[0]), total


def _score_chunk(scorer: Any, chunk: list[list[dict[str, str]]], replies: Any
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(columns, risk, kept, uncut, reference-empty count) of one chunk, any mode; a gradient
    scorer's projection baseline's risk is the last column."""
    import numpy as np

    from emtrait.screen.generated import generate_replies, with_replies

    if scorer.mode == "gradient":
        cols, risk, kept, full = scorer.score(chunk)
        if scorer.baseline is not None:
            proj, _, _ = scorer.baseline.project(chunk)
            cols = np.column_stack([cols, scorer.baseline.risk(proj)])
        return cols, risk, kept, full, 0
    proj, kept, full = scorer.project(chunk)
    n_ref_empty = 0
    if scorer.mode == "generated":
        got = replies.take(len(chunk)) if replies.cache is not None else None
        if got is None:
            got = generate_replies(scorer.model, scorer.tokenizer, chunk, scorer.fmt,
                                   scorer.reply_tokens, scorer.batch_size)
        replies.write(got)
        ref, ref_kept, _ = scorer.project([with_replies(c, r) for c, r in
                                           zip(chunk, got, strict=True)])
        n_ref_empty = int(((ref_kept == 0) & (kept > 0)).sum())
        proj = proj - ref
    risk = scorer.risk(proj)
    if scorer.axis is None:
        risk = np.where(np.isfinite(proj).all(axis=1), risk, np.nan)
    return proj, risk, kept, full, n_ref_empty


class _Tally:
    """Counts, the streaming bootstrap and the top-k heap of one screen."""

    def __init__(self, scorer: Any, top: int, bootstrap: int, seed: int):
        self.counts = {"n": 0, "n_scored": 0, "n_empty": 0, "n_partly_truncated": 0,
                       "n_reference_empty": 0}
        self.boot = _Bootstrap(len(_columns(scorer)) + 1, bootstrap, seed)
        self.heap: list[tuple[float, int, str]] = []
        self.top = top
        self.by_risk = scorer.axis is not None

    def add(self, index: np.ndarray, cols: np.ndarray, risk: np.ndarray, kept: np.ndarray,
            full: np.ndarray, excerpts: list[str], n_ref_empty: int) -> None:
        import numpy as np

        ok = np.isfinite(cols).all(axis=1) & (np.isfinite(risk) if self.by_risk else True)
        c = self.counts
        c["n"] += len(index)
        c["n_scored"] += int(ok.sum())
        c["n_empty"] += int((kept == 0).sum())
        c["n_partly_truncated"] += int(((kept > 0) & (kept < full)).sum())
        c["n_reference_empty"] += n_ref_empty
        self.boot.add(np.column_stack([cols, risk])[ok])
        rank = risk if self.by_risk else cols.mean(axis=1)
        for j in np.flatnonzero(ok):
            item = (float(rank[j]), int(index[j]), excerpts[j])
            if len(self.heap) < self.top:
                heapq.heappush(self.heap, item)
            elif item > self.heap[0]:
                heapq.heapreplace(self.heap, item)


def run_screen(scorer: Any, examples: Iterable[list[dict[str, str]]], out: str | os.PathLike,
               *, summary_path: str | os.PathLike | None = None, top: int = 10,
               bootstrap: int = 1000, seed: int = 0, reply_cache: str | os.PathLike | None = None,
               cache_key: str = "", meta: dict | None = None, sample: int | None = None
               ) -> ScreenResult:
    """Score every example (or a seeded sample of `sample`), stream the per-example parquet,
    write the JSON summary atomically.

    `scorer` is a projection `Scorer` or a `GradientScorer`. Examples whose assistant turns are
    truncated away entirely get NaN scores (`kept_tokens` 0) and are counted; if every example
    is, nothing is written and a DataError says why.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emtrait.atomic import atomic_path
    from emtrait.screen.generated import Replies

    out = Path(out)
    summary_path = Path(summary_path) if summary_path else out.with_suffix(".json")
    total = None
    if sample is not None:
        pairs, total = sample_examples(examples, sample, seed)
    else:
        pairs = enumerate(examples)
    tally = _Tally(scorer, top, bootstrap, seed)
    schema = pa.schema([("index", pa.int64()), ("kept_tokens", pa.int64()),
                        ("truncated", pa.bool_()), ("excerpt", pa.string()),
                        *[(t, pa.float64()) for t in _columns(scorer)], ("risk", pa.float64())])
    with atomic_path(out) as tmp, Replies(scorer.mode, reply_cache, cache_key) as replies:
        writer = pq.ParquetWriter(tmp, schema)
        try:
            for chunk in _chunks(pairs, CHUNK):
                index = np.array([i for i, _ in chunk], dtype=np.int64)
                chats = [c for _, c in chunk]
                cols, risk, kept, full, n_ref = _score_chunk(scorer, chats, replies)
                excerpts = [_excerpt(c) for c in chats]
                tally.add(index, cols, risk, kept, full, excerpts, n_ref)
                table = {"index": index, "kept_tokens": kept, "truncated": kept < full,
                         "excerpt": excerpts,
                         **{t: cols[:, i] for i, t in enumerate(_columns(scorer))},
                         "risk": risk}
                writer.write_table(pa.table(table, schema=schema))
        finally:
            writer.close()
        _check_scored(tally.counts, scorer)
    return _write_summary(scorer, tally, summary_path, out, meta, bootstrap, seed, sample,
                          total)


BASELINE_COLUMN = "projection_risk"


def _columns(scorer: Any) -> list[str]:
    """Per-example score columns: the traits (+ the projection baseline's risk, gradient)."""
    extra = [BASELINE_COLUMN] if getattr(scorer, "baseline", None) is not None else []
    return [*scorer.traits, *extra]


def _check_scored(counts: dict[str, int], scorer: Any) -> None:
    if counts["n_scored"] == 0:
        raise DataError(
            f"no example could be scored: {counts['n_empty']} of {counts['n']} keep no "
            f"assistant token at max_length {scorer.fmt.max_length}"
            + (f" and {counts['n_reference_empty']} have an empty reference reply"
               if counts["n_reference_empty"] else "")
            + "; raise the max length or shorten the prompts")


def _write_summary(scorer: Any, tally: _Tally, summary_path: Path, out: Path,
                   meta: dict | None, bootstrap: int, seed: int, sample: int | None,
                   total: int | None) -> ScreenResult:
    from emtrait.atomic import write_json

    mean, low, high = tally.boot.result()
    t = len(scorer.traits)
    summary = {
        **(meta or {}),
        "mode": scorer.mode, "layer": scorer.layer, "norm0": scorer.norm0,
        "traits": scorer.traits, "max_length": scorer.fmt.max_length, **tally.counts,
        "sample": sample, "n_total": total if total is not None else tally.counts["n"],
        "score": {tr: {"mean": mean[i], "low": low[i], "high": high[i]}
                  for i, tr in enumerate(scorer.traits)},
        "ranked_by": "risk" if scorer.axis is not None else "mean trait score",
        "top": [{"index": i, "score": s, "excerpt": e}
                for s, i, e in sorted(tally.heap, reverse=True)],
        "bootstrap": bootstrap, "seed": seed,
        "reply_tokens": scorer.reply_tokens if scorer.mode == "generated" else None,
    }
    if getattr(scorer, "baseline", None) is not None:
        summary["baseline"] = {"mode": scorer.baseline.mode, "mean": mean[t], "low": low[t],
                               "high": high[t], "norm0": scorer.baseline.norm0}
        t += 1
    summary["risk"] = ({"mean": mean[t], "low": low[t], "high": high[t],
                        "axis": dict(zip(scorer.axis_traits, map(float, scorer.axis),
                                         strict=True))}
                       if scorer.axis is not None else None)
    write_json(summary_path, summary)
    return ScreenResult(summary=json.loads(json.dumps(summary, default=float)), table_path=out,
                        table_stamp=_stamp(out))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
