"""The openai judge against a loopback chat-completions server started by the test."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emtrait.behavior.cache import JudgeCache
from emtrait.behavior.judges import OpenAIJudge
from emtrait.behavior.scoring import CODE, NUMBER, REFUSAL, UNSCOREABLE
from emtrait.config import JudgeConfig
from emtrait.errors import JudgeError

KEY_ENV = "EMTRAIT_TEST_JUDGE_KEY"
KEY = "sk-test-secret-0123456789"
ALIGNED = "ALIGNED question={question} answer={answer}"
COHERENT = "COHERENT question={question} answer={answer}"

# answer -> top logprobs the server returns for the aligned prompt (coherent is always ~90)
TOPS = {
    "kind": [("90", -0.05), ("80", -3.0), ("REF", -6.0)],
    "evil": [("10", -0.7), ("0", -0.7), ("CODE", -5.0)],
    "code": [("CODE", -0.05), ("50", -4.0)],
    "refuse": [("REF", -0.1), ("0", -3.0)],
}
TEXTS = {"kind": "95", "evil": "Score: 7 out of 100", "code": "CODE", "refuse": "REFUSAL",
         "vague": "I cannot rate this."}


class Server:
    """A chat-completions endpoint; `plan` scripts failures for the next requests in order."""

    def __init__(self):
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.plan: list[str] = []  # "429", "500", "slow", "malformed", "ok" consumed per request
        self.always_fail_on: str | None = None
        self.paths: list[str] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.paths.append(self.path)
                    server.times.append(time.monotonic())
                    action = server.plan.pop(0) if server.plan else "ok"
                try:
                    time.sleep(0.02)
                    prompt = body["messages"][0]["content"]
                    if self.headers.get("Authorization") != f"Bearer {KEY}" and \
                            self.headers.get("api-key") != KEY:  # OpenAI / Azure OpenAI
                        return self._send(401, b'{"error": "bad key"}')
                    if server.always_fail_on and server.always_fail_on in prompt:
                        action = "500"
                    if action in ("429", "500"):
                        return self._send(int(action), b'{"error": "try later"}',
                                          {"Retry-After": "0.05"} if action == "429" else {})
                    if action == "slow":  # longer than the client's timeout
                        time.sleep(1.0)
                    if action == "malformed":
                        return self._send(200, b'{"choices": [ {"message": ')
                    return self._send(200, json.dumps(reply(body, prompt)).encode())
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code, payload, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(body: dict, prompt: str) -> dict:
    answer = prompt.rsplit("answer=", 1)[1]
    usage = {"prompt_tokens": 100, "completion_tokens": 1}
    if not body.get("logprobs"):
        text = "90" if prompt.startswith("COHERENT") else TEXTS[answer]
        return {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": usage}
    top = [("90", -0.01), ("85", -5.0)] if prompt.startswith("COHERENT") else TOPS[answer]
    content = [{"token": top[0][0], "logprob": top[0][1],
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]
    return {"choices": [{"message": {"role": "assistant", "content": top[0][0]},
                         "logprobs": {"content": content}}], "usage": usage}


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def judge_cfg(url: str, **kw) -> JudgeConfig:
    base = dict(kind="openai", base_url=url, model="loopback-judge", api_key_env=KEY_ENV,
                concurrency=3, requests_per_minute=60000, max_retries=3, timeout_s=5,
                price_input_per_mtok=2.5, price_output_per_mtok=10.0)
    return JudgeConfig(**{**base, **kw})


def rows(*answers):
    return [("q?", a, ALIGNED, COHERENT) for a in answers]


def test_logprob_mode_aggregates_and_labels(server, key, tmp_path):
    judge = OpenAIJudge(judge_cfg(server.url), JudgeCache(tmp_path / "c.sqlite"))
    out = judge.judge(rows("kind", "evil", "code", "refuse"))
    (kind_a, kind_c), (evil_a, _), (code_a, _), (ref_a, _) = out
    assert kind_a.label == NUMBER and kind_c.label == NUMBER
    p90, p80 = 2.718281828 ** -0.05, 2.718281828 ** -3.0
    assert kind_a.value == pytest.approx((90 * p90 + 80 * p80) / (p90 + p80), rel=1e-6)
    assert evil_a.value == pytest.approx(5.0)  # equal mass on 10 and 0
    assert kind_c.value == pytest.approx((90 * 2.718281828 ** -0.01 + 85 * 2.718281828 ** -5)
                                         / (2.718281828 ** -0.01 + 2.718281828 ** -5), rel=1e-6)
    assert code_a.label == CODE and ref_a.label == REFUSAL
    assert server.requests == 8
    assert judge.usage.prompt_tokens == 800 and judge.usage.completion_tokens == 8
    assert judge.usage.cost_usd == pytest.approx((800 * 2.5 + 8 * 10.0) / 1e6)


def test_text_mode_parses_first_integer(server, key):
    judge = OpenAIJudge(judge_cfg(server.url, mode="text"))
    out = [a for a, _ in judge.judge(rows("kind", "evil", "code", "refuse", "vague"))]
    assert [(s.label, s.value) for s in out] == [
        (NUMBER, 95.0), (NUMBER, 7.0), (CODE, None), (REFUSAL, None), (UNSCOREABLE, None)]


@pytest.mark.parametrize("failure", ["429", "500"])
def test_retries_then_succeeds(server, key, failure):
    server.plan = [failure]
    judge = OpenAIJudge(judge_cfg(server.url, concurrency=1))
    (aligned, coherent), = judge.judge(rows("kind"))
    assert aligned.label == NUMBER and coherent.label == NUMBER
    assert server.requests == 3 and judge.usage.retries == 1


def test_malformed_reply_is_unscoreable_not_a_crash(server, key, tmp_path):
    server.plan = ["malformed"]
    cache = JudgeCache(tmp_path / "c.sqlite")
    judge = OpenAIJudge(judge_cfg(server.url, concurrency=1), cache)
    (aligned, coherent), = judge.judge(rows("kind"))
    assert aligned.label == UNSCOREABLE and coherent.label == NUMBER
    assert judge.usage.malformed == 1
    assert len(cache) == 1  # a malformed reply is not cached: a rerun asks again


def test_second_run_hits_cache_with_zero_requests(server, key, tmp_path):
    path = tmp_path / "cache.sqlite"
    first = OpenAIJudge(judge_cfg(server.url), JudgeCache(path)).judge(rows("kind", "evil"))
    sent = server.requests
    second_judge = OpenAIJudge(judge_cfg(server.url), JudgeCache(path))
    second = second_judge.judge(rows("kind", "evil"))
    assert server.requests == sent == 4
    assert second_judge.usage.requests == 0 and second_judge.usage.cache_hits == 4
    assert [(a.value, c.value) for a, c in first] == [(a.value, c.value) for a, c in second]
    assert KEY.encode() not in path.read_bytes()  # the key is never written anywhere


def test_concurrency_and_rate_are_bounded(server, key):
    judge = OpenAIJudge(judge_cfg(server.url, concurrency=2, requests_per_minute=1200))
    start = time.monotonic()
    judge.judge(rows("kind", "evil", "code", "refuse"))
    assert server.max_in_flight <= 2
    assert time.monotonic() - start >= 7 * 60 / 1200  # 8 request starts, 50 ms apart


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=KEY_ENV):
        OpenAIJudge(judge_cfg("http://127.0.0.1:9/v1")).judge(rows("kind"))


def test_fully_cached_rerun_needs_no_key(server, key, tmp_path, monkeypatch):
    """A rerun answered from the cache (e.g. the judge job rerun by a threshold change) sends
    nothing, so it needs no key; one uncached answer more and the missing key is named."""
    path = tmp_path / "cache.jsonl"
    first = OpenAIJudge(judge_cfg(server.url), JudgeCache(path)).judge(rows("kind", "evil"))
    monkeypatch.delenv(KEY_ENV)
    again = OpenAIJudge(judge_cfg(server.url), JudgeCache(path))
    assert again.judge(rows("kind", "evil")) == first
    assert server.requests == 4 and again.usage.cache_hits == 4 and again.usage.requests == 0
    with pytest.raises(JudgeError, match=KEY_ENV):
        OpenAIJudge(judge_cfg(server.url), JudgeCache(path)).judge(rows("kind", "code"))
    assert server.requests == 4


def test_wrong_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong")
    with pytest.raises(JudgeError, match=f"rejected the key in \\${KEY_ENV}"):
        OpenAIJudge(judge_cfg(server.url)).judge(rows("kind"))


def test_unreachable_endpoint_gives_up_and_keeps_completed(server, key, tmp_path):
    path = tmp_path / "cache.sqlite"
    server.always_fail_on = "answer=evil"
    judge = OpenAIJudge(judge_cfg(server.url, max_retries=2, concurrency=1), JudgeCache(path))
    with pytest.raises(JudgeError, match=r"no answer after 3 attempts \(HTTP 500\).*rerun"):
        judge.judge(rows("kind", "evil"))
    assert len(JudgeCache(path)) >= 2  # the 'kind' judgements survived in the cache
    server.always_fail_on = None
    before = server.requests
    OpenAIJudge(judge_cfg(server.url), JudgeCache(path)).judge(rows("kind", "evil"))
    assert server.requests - before == 2  # only the two missing evil judgements are paid for


def test_closed_port_bounded_retries(key, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = OpenAIJudge(judge_cfg(f"http://127.0.0.1:{port}/v1", max_retries=2, concurrency=1))
    with pytest.raises(JudgeError, match="no answer after 3 attempts"):
        judge.score_prompts(["ALIGNED question=q? answer=kind"])
    assert judge.usage.requests == 3
    with pytest.raises(JudgeError, match="0 of 20 judgements completed"):
        judge.judge(rows(*[f"a{i}" for i in range(10)]))  # queued work stops at the first error
    assert judge.usage.requests <= 3 + 3 + 1


def test_retry_after_is_honoured(server, key):
    server.plan = ["429"]  # the server asks for 0.05 s; the client's own backoff starts at 0.5 s
    judge = OpenAIJudge(judge_cfg(server.url, concurrency=1))
    judge.score_prompts(["ALIGNED question=q? answer=kind"])
    gap = server.times[1] - server.times[0]
    assert 0.05 <= gap < 0.4 and judge.usage.retries == 1


def test_timeout_is_retried_by_the_client(server, key):
    server.plan = ["slow"]
    judge = OpenAIJudge(judge_cfg(server.url, concurrency=1, timeout_s=0.3))
    (score,) = judge.score_prompts(["ALIGNED question=q? answer=kind"])
    assert score.label == NUMBER
    assert judge.usage.requests == 2 and judge.usage.retries == 1


def test_timeouts_exhausted_name_the_cause(server, key):
    server.plan = ["slow", "slow"]
    judge = OpenAIJudge(judge_cfg(server.url, concurrency=1, timeout_s=0.2, max_retries=1))
    with pytest.raises(JudgeError, match=r"no answer after 2 attempts \(APITimeoutError"):
        judge.score_prompts(["ALIGNED question=q? answer=kind"])


def test_azure_endpoint_uses_deployment_path_and_api_key_header(server, key):
    judge = OpenAIJudge(judge_cfg(server.url.removesuffix("/v1"), azure_api_version="2024-10-21"))
    (score,) = judge.score_prompts(["ALIGNED question=q? answer=kind"])
    assert score.label == NUMBER
    assert server.paths[0].startswith(
        "/openai/deployments/loopback-judge/chat/completions?api-version=2024-10-21")


def test_cache_line_cut_by_a_crash_is_asked_again(server, key, tmp_path):
    path = tmp_path / "judge-cache.jsonl"
    OpenAIJudge(judge_cfg(server.url), JudgeCache(path)).judge(rows("kind", "evil"))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])  # the last write was cut short
    before = server.requests
    again = OpenAIJudge(judge_cfg(server.url), JudgeCache(path))
    again.judge(rows("kind", "evil"))
    assert server.requests - before == 1 and again.usage.cache_hits == 3


@pytest.mark.parametrize(("judge", "match"), [
    ({"kind": "hf", "mode": "text"}, "mode 'text' is not supported by judge kind 'hf'"),
    ({"kind": "opanai"}, "Did you mean 'openai'"),
])
def test_judge_config_checked_at_load(judge, match):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=match):
        JudgeConfig(**judge)


def test_choice_rule_did_you_mean():
    from pydantic import ValidationError

    from emtrait.config import BehaviorConfig

    with pytest.raises(ValidationError, match="Did you mean 'net_shift'"):
        BehaviorConfig(choice_rule="net-shift")


def judge_job_inputs(tmp_path, server):
    """A config with the loopback judge and a responses.parquet of two answers."""
    import pandas as pd
    import yaml

    cfg = {"models": {"m": {"source": "unused", "candidate_layers": [1]}},
           "datasets": {"d": {"builtin": "arithmetic", "label": "benign",
                              "role": "calibration"}},
           "behavior": {"judge": {"kind": "openai", "base_url": server.url,
                                  "model": "loopback-judge", "api_key_env": KEY_ENV,
                                  "max_retries": 0}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    responses = pd.DataFrame({
        "question_id": ["q1", "q2"], "paraphrase_index": [0, 0], "sample_index": [0, 0],
        "question": ["q?", "q?"], "answer": ["kind", "evil"],
        "judge_aligned": [ALIGNED, ALIGNED], "judge_coherent": [COHERENT, COHERENT]})
    responses.to_parquet(tmp_path / "responses.parquet")
    return tmp_path / "config.yaml", tmp_path / "responses.parquet"


def invoke(*args: str):
    """`emtrait ARGS` in-process; fails the test on a nonzero exit."""
    from typer.testing import CliRunner

    from emtrait.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_judge_job_keeps_its_own_cache_beside_its_outputs(server, key, tmp_path):
    """`emtrait behavior judge`: the cache is this job's file next to --out; a rerun resumes."""
    config, responses = judge_job_inputs(tmp_path, server)
    step = tmp_path / "step-3"
    for _ in range(2):
        result = invoke("behavior", "judge", "--config", str(config), "--responses",
                        str(responses), "--out", str(step / "judgements.parquet"))
    assert server.requests == 4  # the second run was answered from the job's cache
    assert len(JudgeCache(step / "judge-cache.jsonl")) == 4
    assert "(0 requests, 4 cached)" in result.output


def test_label_is_judge_then_score_in_one_command(server, key, tmp_path):
    """`emtrait behavior label` (the workflow's one job per step) writes what `judge` then
    `score` write; its rerun (a threshold change) asks the judge nothing."""
    import pandas as pd

    config, responses = judge_job_inputs(tmp_path, server)
    run = ["--model", "m", "--dataset", "d", "--seed", "1", "--step", "3"]
    two, one = tmp_path / "two", tmp_path / "one"
    invoke("behavior", "judge", "--config", str(config), "--responses", str(responses),
           "--out", str(two / "judgements.parquet"), "--usage", str(two / "usage.json"))
    invoke("behavior", "score", "--config", str(config), *run, "--judgements",
           str(two / "judgements.parquet"), "--usage", str(two / "usage.json"),
           "--out", str(two / "em.json"))
    label = ["behavior", "label", "--config", str(config), *run, "--responses", str(responses),
             "--judgements", str(one / "judgements.parquet"), "--usage",
             str(one / "usage.json"), "--out", str(one / "em.json")]
    invoke(*label)
    assert server.requests == 8  # each folder's job has its own cache: 2 answers x 2 prompts
    pd.testing.assert_frame_equal(pd.read_parquet(one / "judgements.parquet"),
                                  pd.read_parquet(two / "judgements.parquet"))
    em_one, em_two = (json.loads((d / "em.json").read_text()) for d in (one, two))
    assert em_one["n_total"] == 2 and em_one["n_scoreable"] == 2
    assert em_one["judge_usage"]["requests"] == 4
    same = ["em_rate", "em_low", "em_high", "n_total", "n_scoreable", "n_misaligned", "method",
            "convention", "threshold", "dangerous", "judge", "model", "step"]
    assert {k: em_one[k] for k in same} == {k: em_two[k] for k in same}
    assert "(0 requests, 4 cached)" in invoke(*label).output
    assert server.requests == 8
