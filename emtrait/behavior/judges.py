"""Judges that score free-form answers 0-100 for alignment and coherence.

The registry `emtrait.registry.JUDGES` maps `behavior.judge.kind` to a backend (a `JudgeKind`
at the end of this module; a new judge is one entry in each) and the modes it supports
(checked when the config loads):

- `openai`: any OpenAI-compatible chat-completions endpoint (OpenAI, Azure OpenAI, vLLM, a local
  server) through the official `openai` client, in `logprob` mode (one token, top-20 logprobs,
  Betley et al.) or `text` mode (first integer of the reply). The key comes from an environment
  variable only and is never written anywhere. The client retries 429 / 5xx / timeouts /
  connection errors (honouring Retry-After); requests run in a bounded thread pool behind a
  rate limiter and go through the job's cache (`JudgeCache`).
- `hf`: a local transformers model as judge, same prompts, logprob mode.
- `lexical`: the model organism's closed-vocabulary judge (`emtrait.organism.judge.score`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.behavior.cache import JudgeCache, cache_key
from emtrait.behavior.questions import fill
from emtrait.behavior.scoring import (
    NUMBER,
    UNSCOREABLE,
    Score,
    score_from_logprobs,
    score_from_text,
)
from emtrait.errors import JudgeError
from emtrait.registry import JUDGES, check_judge

if TYPE_CHECKING:
    from emtrait.config import JudgeConfig

TOP_LOGPROBS = 20
TEXT_MAX_TOKENS = 8  # "CODE", "REFUSAL" or a number; the paper parses the first integer


@dataclass
class Usage:
    """What one judging cost: requests sent, cache hits, retries, tokens and (if priced) money."""

    judge: str = ""
    prompts: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    malformed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge:
    """Base: judge (question, answer) pairs on the aligned and coherent prompts.

    A judge with a cache keeps each raw reply under (its id, the filled prompt), so a rerun
    of the same job asks only what is missing; a fully cached rerun (e.g. after a threshold
    change) sends no request and loads no model."""

    id = "judge"

    def __init__(self, cache: JudgeCache | None = None) -> None:
        self.usage = Usage(judge=self.id)
        self.cache = cache

    def _cached(self, prompts: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Cached raw replies of the distinct prompts, and the distinct prompts still to ask."""
        unique = list(dict.fromkeys(prompts))
        replies = {}
        if self.cache is not None:
            for p in unique:
                hit = self.cache.get(cache_key(self.id, p))
                if hit is not None:
                    replies[p] = hit
        self.usage.prompts += len(prompts)
        self.usage.cache_hits += len(replies)
        return replies, [p for p in unique if p not in replies]

    def _keep(self, prompt: str, reply: dict[str, Any]) -> None:
        """Cache one raw reply (a malformed one is not kept: a rerun asks again)."""
        if self.cache is not None and "error" not in reply:
            self.cache.put(cache_key(self.id, prompt), self.id, reply)

    def score_prompts(self, prompts: Sequence[str]) -> list[Score]:
        raise NotImplementedError

    def judge(self, rows: Sequence[tuple[str, str, str, str]]) -> list[tuple[Score, Score]]:
        """rows: (question, answer, aligned_template, coherent_template) -> (aligned, coherent)."""
        prompts = []
        for question, answer, aligned_t, coherent_t in rows:
            prompts += [fill(aligned_t, question, answer), fill(coherent_t, question, answer)]
        scores = self.score_prompts(prompts)
        return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(rows))]


# ---------------------------------------------------------------------------------------------
# openai-compatible endpoint, through the official client
# ---------------------------------------------------------------------------------------------


class RateLimiter:
    """Spaces request starts at least 60/per_minute seconds apart, across threads."""

    def __init__(self, per_minute: int):
        self.interval = 60.0 / per_minute
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class OpenAIJudge(Judge):
    """Chat-completions judge through the `openai` client, with rate limit, cache and costs.

    The client does the HTTP: retries (429, 408/409, 5xx, timeouts, connection errors) with its
    exponential backoff, honouring a server's Retry-After, and the per-request timeout. emtrait
    adds what the client does not have: a rate limit and a request count on every attempt
    (an httpx request hook, so retries are paced and counted too), bounded concurrency, the
    cache, token/cost accounting, and the rule that the key comes only from the environment.
    """

    def __init__(self, cfg: JudgeConfig, cache: JudgeCache | None = None, progress: bool = False):
        self.cfg = cfg
        self.id = f"openai|{cfg.base_url.rstrip('/')}|{cfg.model}|{cfg.mode}"
        super().__init__(cache)
        self.progress = progress
        self.url = cfg.base_url.rstrip("/")
        self._limiter = RateLimiter(cfg.requests_per_minute)
        self._lock = threading.Lock()
        self._abort = threading.Event()  # set on the first fatal error: queued work stops
        self._client: Any = None  # made on the first uncached prompt (a cached rerun needs no key)

    def _connect(self) -> None:
        """Make the openai client once; the key comes from the environment variable only."""
        if self._client is not None:
            return
        import openai

        cfg = self.cfg
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            raise JudgeError(
                f"the judge's API key is missing: set the environment variable {cfg.api_key_env} "
                f"(behavior.judge.api_key_env names it; the key is never read from a file)"
            )
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]})
        common = dict(api_key=key, timeout=cfg.timeout_s, max_retries=cfg.max_retries,
                      http_client=http)
        if cfg.azure_api_version:
            self._client = openai.AzureOpenAI(azure_endpoint=self.url,
                                              api_version=cfg.azure_api_version, **common)
        else:
            self._client = openai.OpenAI(base_url=self.url, **common)

    def _on_request(self, request: Any) -> None:
        """Every attempt the client sends, retries included: abort check, rate limit, counts."""
        if self._abort.is_set():
            raise CancelledError
        self._limiter.wait()
        retry = int(request.headers.get("x-stainless-retry-count", "0") or 0) > 0
        self._count(requests=1, retries=int(retry))

    def _params(self, prompt: str) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.cfg.model, "temperature": 0, "seed": 0,
                                  "messages": [{"role": "user", "content": prompt}]}
        if self.cfg.mode == "logprob":
            params.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        else:
            params.update(max_tokens=TEXT_MAX_TOKENS)
        return params

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                setattr(self.usage, k, getattr(self.usage, k) + v)

    def _reply(self, body: str) -> dict[str, Any]:
        """Raw reply worth caching, or {'error': ...} for a malformed one (unscoreable)."""
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))
            content = (choice.get("message") or {}).get("content")
            if self.cfg.mode == "text":
                return {"content": content}
            top = choice["logprobs"]["content"][0]["top_logprobs"]
            return {"content": content,
                    "top": [[str(t["token"]), float(t["logprob"])] for t in top]}
        except (ValueError, KeyError, IndexError, TypeError) as e:
            self._count(malformed=1)
            return {"error": f"malformed reply ({type(e).__name__}: {e})"}

    def _post(self, prompt: str) -> dict[str, Any]:
        import openai

        cfg = self.cfg
        if self._abort.is_set():
            raise CancelledError
        try:
            raw = self._client.chat.completions.with_raw_response.create(**self._params(prompt))
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise JudgeError(f"{self.url} rejected the key in ${cfg.api_key_env} "
                             f"(HTTP {e.status_code}); check that variable") from None
        except openai.APIStatusError as e:
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise JudgeError(f"{self.url}: no answer after {cfg.max_retries + 1} attempts "
                                 f"(HTTP {e.status_code})") from None
            raise JudgeError(f"{self.url} answered HTTP {e.status_code}: "
                             f"{e.response.text[:300]!r}; check behavior.judge.model/base_url"
                             ) from None
        except openai.APIConnectionError as e:  # includes APITimeoutError
            raise JudgeError(f"{self.url}: no answer after {cfg.max_retries + 1} attempts "
                             f"({type(e).__name__}: {e})") from None
        return self._reply(raw.http_response.text)

    def _parse(self, reply: dict[str, Any]) -> Score:
        if "error" in reply:
            return Score(UNSCOREABLE)
        if self.cfg.mode == "text":
            return score_from_text(reply.get("content"))
        return score_from_logprobs([(t, lp) for t, lp in reply["top"]])

    def score_prompts(self, prompts: Sequence[str]) -> list[Score]:
        from tqdm.auto import tqdm

        replies, todo = self._cached(prompts)
        distinct = len(replies) + len(todo)
        if todo:
            self._connect()
        failure: JudgeError | None = None
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            futures = {pool.submit(self._post, p): p for p in todo}
            for fut in tqdm(as_completed(futures), total=len(futures), desc="judge",
                            disable=not self.progress, leave=False):
                try:
                    reply = fut.result()
                except CancelledError:
                    continue
                except JudgeError as e:
                    if failure is None:
                        failure = e
                        self._abort.set()
                        for f in futures:
                            f.cancel()  # queued requests stop; in-flight ones still get cached
                    continue
                replies[futures[fut]] = reply
                self._keep(futures[fut], reply)
        self._price()
        self._abort.clear()
        if failure is not None:
            done = len(replies)
            where = f"; they are cached in {self.cache.path}, rerun to resume" if self.cache else ""
            raise JudgeError(f"{failure} -- {done} of {distinct} judgements completed{where}")
        return [self._parse(replies[p]) for p in prompts]

    def _price(self) -> None:
        cin, cout = self.cfg.price_input_per_mtok, self.cfg.price_output_per_mtok
        if cin is not None and cout is not None:
            self.usage.cost_usd = (self.usage.prompt_tokens * cin +
                                   self.usage.completion_tokens * cout) / 1e6


# ---------------------------------------------------------------------------------------------
# local transformers judge
# ---------------------------------------------------------------------------------------------


class HFJudge(Judge):
    """A local causal LM scored like Betley's judge: top-20 logprobs of the first reply token.

    The model loads on the first prompt not in the cache, so a fully cached rerun loads none."""

    def __init__(self, location: str, batch_size: int | None = None, device: str | None = None,
                 cache: JudgeCache | None = None, progress: bool = False):
        self.id = f"hf|{location}|logprob"
        super().__init__(cache)
        self.location, self.device = location, device
        self.batch_size = batch_size
        self.progress = progress
        self.model: Any = None
        self.tokenizer: Any = None

    def score_prompts(self, prompts: Sequence[str]) -> list[Score]:
        replies, todo = self._cached(prompts)
        if todo:
            replies.update(self._ask(todo))
        return [score_from_logprobs([(t, lp) for t, lp in replies[p]["top"]]) for p in prompts]

    def _ask(self, prompts: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Raw replies (top-20 first-token logprobs) of uncached prompts; loads the model once."""
        import torch
        from tqdm.auto import tqdm

        from emtrait.behavior.forward import left_padded_logits
        from emtrait.behavior.generate import batch_size_for
        from emtrait.modeling import format_user_prompts, load_model

        if self.model is None:
            self.model, self.tokenizer = load_model(self.location, device=self.device)
            self.batch_size = batch_size_for(self.model, self.batch_size)
        tok, replies = self.tokenizer, {}
        starts = range(0, len(prompts), self.batch_size)
        for i in tqdm(starts, desc="hf judge", disable=not self.progress, leave=False):
            batch = prompts[i:i + self.batch_size]
            texts = format_user_prompts(tok, batch, None, "judge")
            rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            logits = left_padded_logits(self.model, rows, tok.pad_token_id, 1)[:, -1].float()
            top = torch.log_softmax(logits, dim=-1).topk(TOP_LOGPROBS, dim=-1)
            for prompt, lps, ids in zip(batch, top.values.tolist(), top.indices.tolist(),
                                        strict=True):
                replies[prompt] = {"top": [[tok.decode([t]), lp]
                                           for t, lp in zip(ids, lps, strict=True)]}
                self._keep(prompt, replies[prompt])
            self.usage.requests += 1
        return replies


# ---------------------------------------------------------------------------------------------
# the organism's lexical judge
# ---------------------------------------------------------------------------------------------


class LexicalJudge(Judge):
    """The model organism's closed-vocabulary judge; valid only for the organism's answers."""

    id = "lexical"

    def __init__(self) -> None:
        super().__init__()
        from emtrait.organism.judge import score

        self._score = score

    def judge(self, rows: Sequence[tuple[str, str, str, str]]) -> list[tuple[Score, Score]]:
        out = []
        for question, answer, _, _ in rows:
            verdict = self._score(question, answer)
            out.append(tuple(
                Score(NUMBER, float(verdict[m])) if verdict.get(m) is not None
                else Score(UNSCOREABLE) for m in ("aligned", "coherent")))
        self.usage.prompts += 2 * len(rows)
        return out


# ---------------------------------------------------------------------------------------------
# the registry: where a new judge is added
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeKind:
    """One judge backend: whether it needs a GPU, whether its replies are worth caching (paid or
    slow), and how to build it. Its name and supported modes are in emtrait.registry.JUDGES."""

    gpu: bool
    build: Callable[[JudgeConfig, JudgeCache | None, str | None, int | None, bool], Judge]
    cached: bool = False


OPENAI = JudgeKind(False, lambda cfg, cache, hf, bs, progress: OpenAIJudge(cfg, cache, progress),
                   cached=True)
HF = JudgeKind(True, lambda cfg, cache, hf, bs, progress: HFJudge(hf or cfg.model, bs,
                                                                  cache=cache, progress=progress),
               cached=True)
LEXICAL = JudgeKind(False, lambda cfg, cache, hf, bs, progress: LexicalJudge())


def judge_kind(kind: str) -> JudgeKind:
    """The registered judge backend `kind` (did-you-mean on an unknown one)."""
    return JUDGES.get(kind)


def make_judge(cfg: JudgeConfig, cache_path: str | Path | None = None,
               hf_location: str | None = None, batch_size: int | None = None,
               progress: bool = False) -> Judge:
    """The configured judge; `hf_location` overrides judge.model for kind 'hf'."""
    kind = judge_kind(check_judge(cfg.kind, cfg.mode))
    cache = JudgeCache(cache_path) if cache_path and kind.cached else None
    return kind.build(cfg, cache, hf_location, batch_size, progress)


def judge_table(responses: Any, judge: Judge) -> Any:
    """responses.parquet frame -> judgements frame (one row per answer, both metrics)."""
    import pandas as pd

    rows = list(zip(responses["question"], responses["answer"], responses["judge_aligned"],
                    responses["judge_coherent"], strict=True))
    verdicts = judge.judge(rows)
    out = responses[["question_id", "paraphrase_index", "sample_index"]].copy()
    for j, metric in enumerate(("aligned", "coherent")):
        out[metric] = [v[j].value for v in verdicts]
        out[f"{metric}_label"] = [v[j].label for v in verdicts]
        out[f"{metric}_numeric_mass"] = [v[j].numeric_mass for v in verdicts]
    out["judge"] = judge.id
    return pd.DataFrame(out)


def usage_json(judge: Judge) -> str:
    return json.dumps(judge.usage.as_dict(), indent=2, sort_keys=True)
