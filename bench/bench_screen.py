"""Screening cost on the embedded model (SmolLM2-135M-Instruct) next to one finetune, in one run.

On the same examples of one built-in dataset of config/config.yaml (same max length):
1. `emtrait screen` in `none` mode: each example's assistant tokens, one truncated forward;
2. `emtrait screen` in `generated` mode: plus the base model's greedy reply (screen.reply_tokens)
   and a second truncated forward over it;
3. one finetune of the embedded default on those examples (`run_finetune`, measurement off:
   the finetune's own cost), timed around `trainer.train()`.
The one-off costs (model load, norm0 over the eval prompts) are printed apart; the per-1000
figures are per-example costs times 1000, and the ratios are screen / finetune on the same data.

    python bench/bench_screen.py [--dataset bad_medical] [--n 48] [--generated-n 8] [--threads 2]

Directions come from results/traits/smollm2/directions.zarr when it exists, else seeded random
unit directions at l* = 15 (the values do not change any timing; bench_measure does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from bench_measure import directions_store, wait_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--pointer", default=None, help="model.json (default resources/models/M/)")
    ap.add_argument("--dataset", default="bad_medical")
    ap.add_argument("--n", type=int, default=48, help="examples (the embedded default's n)")
    ap.add_argument("--generated-n", type=int, default=None, help="examples screened in "
                    "generated mode (default --n; fewer keeps the bench short, per-1000 scales)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for the pointer")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from emtrait.config import from_dict, load_config
    from emtrait.finetune.train import run_finetune
    from emtrait.measure.inputs import eval_prompts, read_directions
    from emtrait.modeling import load_model, read_pointer
    from emtrait.prepare.dataset import prepare_dataset
    from emtrait.screen.core import ChatFormat, Scorer, base_norm0, iter_examples, run_screen

    pointer = Path(a.pointer or REPO / "resources" / "models" / a.model / "model.json")
    wait_for(pointer, a.wait)
    raw = load_config(a.config).model_dump(mode="json")
    raw["datasets"][a.dataset]["n"] = a.n
    cfg = from_dict(raw)
    tmp = Path(tempfile.mkdtemp(prefix="bench-screen-"))
    data = tmp / f"{a.dataset}.jsonl"
    prepare_dataset(cfg, a.dataset, data, tmp / "stats.json")
    location = read_pointer(pointer)
    training = cfg.training_for(a.model)

    t0 = time.perf_counter()
    model, tok = load_model(location, cfg.model(a.model), device="cpu")
    load_s = time.perf_counter() - t0
    dpath, dkind = directions_store(cfg, a.model, model.config.hidden_size, tmp)
    dirs = read_directions(dpath)
    entry = cfg.model(a.model)
    fmt = ChatFormat(entry.system_prompt_method, entry.no_system_prompt,
                     cfg.screen.max_length or training.max_length, a.model)
    t0 = time.perf_counter()
    norm0 = base_norm0(model, tok, [p.text for p in eval_prompts(cfg)], dirs.at(dirs.layer),
                       dirs.layer, fmt, cfg.measurement.batch_size)
    norm0_s = time.perf_counter() - t0
    print(f"# bench_screen: {a.model}, {a.dataset} n={a.n}, max length {fmt.max_length}, layer "
          f"{dirs.layer}, {len(dirs.traits)} traits ({dkind}), torch threads {a.threads}")
    print(f"one-off: model load {load_s:.1f} s, norm0 over {len(eval_prompts(cfg))} eval "
          f"prompts {norm0_s:.1f} s")

    seconds, counts = {}, {"none": a.n, "generated": a.generated_n or a.n}
    gen_data = tmp / "generated.jsonl"
    gen_data.write_text("".join(data.read_text().splitlines(keepends=True)[:counts["generated"]]))
    for mode in ("none", "generated"):
        scorer = Scorer(model=model, tokenizer=tok, directions=dirs.at(dirs.layer),
                        traits=dirs.traits, layer=dirs.layer, norm0=norm0, fmt=fmt, mode=mode,
                        batch_size=cfg.screen.batch_size, reply_tokens=cfg.screen.reply_tokens)
        t0 = time.perf_counter()
        res = run_screen(scorer, iter_examples(data if mode == "none" else gen_data),
                         tmp / f"{mode}.parquet",
                         bootstrap=cfg.screen.bootstrap, reply_cache=tmp / f"{mode}.replies.jsonl")
        seconds[mode] = time.perf_counter() - t0
        print(f"screen {mode:>9}: {seconds[mode]:.1f} s for {res.summary['n']} examples "
              f"({res.summary['n_scored']} scored)")
    del model

    t0 = time.perf_counter()
    done = run_finetune(cfg, a.model, a.dataset, training.seeds[0], pointer=pointer, data=data,
                        directions_path=dpath, out=tmp / "run", measure=False)
    wall = time.perf_counter() - t0
    train_s = float(done["wall_s"])  # trainer.train() alone: no measurement, no saving
    print(f"finetune: {train_s:.1f} s training ({training.epochs} epoch(s), batch "
          f"{training.batch_size} x {training.grad_accum}, max length {training.max_length}), "
          f"{wall:.1f} s wall with model loading")

    per_k = {k: v / counts[k] * 1000 for k, v in seconds.items()}
    per_k["finetune"] = train_s / a.n * 1000
    print("\n| per 1000 examples | seconds | / finetune |\n|---|---|---|")
    for k in ("none", "generated", "finetune"):
        print(f"| {'screen ' + k if k != 'finetune' else 'finetune (training)'} | "
              f"{per_k[k]:.0f} | {per_k[k] / per_k['finetune']:.1%} |")
    print(json.dumps({"n": a.n, "seconds": seconds, "finetune_train_s": train_s,
                      "finetune_wall_s": wall, "load_s": load_s, "norm0_s": norm0_s,
                      "per_1000_s": per_k,
                      "ratio_none": per_k["none"] / per_k["finetune"],
                      "ratio_generated": per_k["generated"] / per_k["finetune"]}))


if __name__ == "__main__":
    main()
