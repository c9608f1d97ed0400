"""Cost of one checkpoint's behavioural EM label vs one checkpoint's trait measurement.

Same model, same machine, measured side by side in one process:

- trait measurement: last-token activations of the 115 evaluation prompts at one decoder block
  (a truncated forward, `emtrait.capture.capture`) -- what the monitor needs per checkpoint;
- behavioural label, the literature's way: sample answers (temperature 1, up to 600 new tokens)
  and judge each twice (aligned, coherent). The paper's protocol asks 72 prompts; generation and
  judging are MEASURED ON A SUBSAMPLE (--gen-prompts, default 8 = one batch) and SCALED to 72,
  printed as such. The judge here is the embedded model itself in logprob mode (`hf` judge);
  with an API judge the same label costs 144 judge calls instead;
- behavioural label, emtrait's judge-free `choice` proxy: forced-choice margins of 48 items for
  the checkpoint (what the embedded default runs per step; the base model's margins are computed
  once per model and not counted here).

Run:  python bench/bench_behavior.py [--pointer resources/models/smollm2/model.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

PAPER_PROMPTS = 72  # Betley et al.: 24 first_plot_questions (first paraphrase) + 48 preregistered


def timed(fn, repeat: int = 1):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def eval_prompts() -> list[str]:
    from emtrait.traits.prompts import load_prompt_set

    return [p.text for p in load_prompt_set("builtin:emtrait").eval_prompts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pointer", default="resources/models/smollm2/model.json")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=15, help="block measured (default 15 of 30)")
    ap.add_argument("--gen-prompts", type=int, default=8, help="generation subsample size")
    ap.add_argument("--max-new-tokens", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from emtrait.behavior.choice import margins
    from emtrait.behavior.generate import generate
    from emtrait.behavior.judges import HFJudge, judge_table
    from emtrait.behavior.questions import load_choice_items, load_prompts
    from emtrait.capture import capture
    from emtrait.config import load_config
    from emtrait.modeling import format_user_prompts, read_pointer

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    entry = cfg.model(args.model)
    location = read_pointer(args.pointer)
    judge = HFJudge(location, batch_size=8)  # the same weights serve as model and judge
    model, tok = judge.model, judge.tokenizer

    texts = format_user_prompts(tok, eval_prompts(), entry, args.model)
    capture(model, tok, texts[:4], [args.layer])  # warm-up
    t_trait, _ = timed(lambda: capture(model, tok, texts, [args.layer], batch_size=16), 3)
    trait_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    items = load_choice_items("builtin:emtrait")
    # per step the workflow runs one pass (the base model's margins are computed once per model)
    t_choice, _ = timed(lambda: margins(model, tok, items, entry, 16), 3)

    prompts = load_prompts(["builtin:emtrait"], "first_paraphrase", 1)[:args.gen_prompts]
    torch.manual_seed(0)
    t_gen, responses = timed(lambda: generate(
        model, tok, prompts, entry, temperature=1.0, max_new_tokens=args.max_new_tokens,
        batch_size=8, seed=0))
    t_judge, _ = timed(lambda: judge_table(responses, judge))
    n = len(prompts)
    scale = PAPER_PROMPTS / n
    gen_tokens = int(responses["answer_tokens"].sum())
    label = (t_gen + t_judge) * scale

    print(f"model {location} ({entry.source}), {args.threads} thread(s), block {args.layer}")
    print(f"trait measurement   : {t_trait:8.1f} s  ({len(texts)} prompts, {trait_tokens} prompt "
          f"tokens, forward truncated after block {args.layer}; median of 3)")
    print(f"choice probe label  : {t_choice:8.1f} s  ({len(items)} items x 2 answers, one "
          f"checkpoint pass; median of 3)")
    print(f"generation (meas.)  : {t_gen:8.1f} s  ({n} prompts, {gen_tokens} answer tokens, "
          f"mean {gen_tokens / n:.0f}, max_new_tokens {args.max_new_tokens})")
    print(f"hf judge (meas.)    : {t_judge:8.1f} s  ({2 * n} judge forwards)")
    print(f"judge label, {PAPER_PROMPTS} prompts (SCALED x{scale:.1f} from {n}): {label:8.1f} s, "
          f"{2 * PAPER_PROMPTS} judge calls")
    print(f"RATIO judge label / trait measurement : {label / t_trait:8.1f}x")
    print(f"RATIO choice label / trait measurement: {t_choice / t_trait:8.1f}x")


if __name__ == "__main__":
    main()
