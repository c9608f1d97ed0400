"""Screening cost next to one finetune on the same data, and how the screen ranks finetunes.

Part 1 (cost, side by side in one run), on the same examples of one dataset of the config:
  gradient (batched JVP, the default), the same with the per-trait breakdown (seven scores),
  gradient (per-example backward, the reference),
  projection (`none`, a baseline), and a `--sample` verdict; then one finetune of the config on
  those examples (`run_finetune`, measurement off), timed around `trainer.train()`. One-off
  costs (model load, norm0 + v = ∇θR over the monitor's prompts) are printed apart; per-1000
  figures are per-example costs × 1000; ratios are screen / finetune on the same data. The JVP
  and backward scores of the same examples are compared (max relative difference).
Part 2 (accuracy), when the work folder holds a finished workflow: Spearman ρ across datasets
  between each dataset's screen score (results/screen/M/*.json) and its finetunes' final drift
  along the danger axis and final EM rate (results/cube/M.zarr), for the gradient score and for
  the projection baseline scored beside it.

Part 3 (`--known-answer`, the model organism only): the organism bars of tests/test_screen.py
  side by side for the fitted monitor's danger axis and for the hand-picked -harmlessness axis
  (same monitor, directions, layer, norm0 and prompts): dataset AUROC and whether the 95%
  intervals separate (6 calibration generators, 100 examples each, seed 1), per-example AUROC,
  precision@k with 10% and 3% bad_medical in good_medical (seed 2), the held-out travel pair.

    python bench/bench_screen.py --root WORKDIR [--config C] [--model smollm2]
        [--dataset bad_medical] [--n 48] [--backward-n 8] [--sample 200] [--threads 2]
        [--skip-cost] [--known-answer]

WORKDIR is a finished workflow of the config (its resources/models/M/model.json, results/
monitor/M/monitor.skops, results/traits/M/directions.zarr); only /tmp is written.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def pointer(root: Path, name: str) -> Path:
    """The model pointer of model `name` in a finished workflow run in `root`."""
    return root / "resources" / "models" / name / "model.json"


def load_base(root: Path, cfg, name: str):
    """(monitor, base model, tokenizer, chat format) of model `name` of a finished workflow run
    in `root`, on the CPU."""
    from emtrait.modeling import load_model, read_pointer
    from emtrait.monitor.artifact import load_monitor
    from emtrait.screen.core import ChatFormat

    monitor = load_monitor(root / "results" / "monitor" / name / "monitor.skops")
    model, tok = load_model(read_pointer(pointer(root, name)), cfg.model(name), device="cpu")
    return monitor, model, tok, ChatFormat.of_model(cfg, name)


def cost(a, cfg, root: Path, tmp: Path) -> dict:
    """Part 1: seconds of each screen and of the finetune on the same examples."""
    import numpy as np

    from emtrait.finetune.train import run_finetune
    from emtrait.prepare.dataset import prepare_dataset
    from emtrait.screen.api import gradient_scorer
    from emtrait.screen.core import iter_examples, run_screen

    n_data = max(a.n, a.sample)
    raw = cfg.model_dump(mode="json")
    raw["datasets"][a.dataset]["n"] = n_data
    # the timed finetune is shorter than the config's runs: its checkpoints are every 10 steps
    for training in (raw["training"], raw["models"][a.model].get("training") or {}):
        training.update(checkpoint_steps=None, checkpoint_schedule=None, checkpoint_every=10)
    from emtrait.config import from_dict

    cfg = from_dict(raw)
    big = tmp / f"{a.dataset}-{n_data}.jsonl"
    prepare_dataset(cfg, a.dataset, big, tmp / "stats.json")
    lines = big.read_text().splitlines(keepends=True)
    data, back = tmp / "n.jsonl", tmp / "back.jsonl"
    data.write_text("".join(lines[:a.n]))
    back.write_text("".join(lines[:a.backward_n]))
    training = cfg.training_for(a.model)
    (monitor, model, tok, fmt), load_s = _timed(lambda: load_base(root, cfg, a.model))

    def scorer(method, baseline=False, breakdown=False):
        return gradient_scorer(model, tok, monitor, fmt, training, where="bench", method=method,
                               batch_size=cfg.screen.batch_size, baseline=baseline,
                               breakdown=breakdown)

    both, v_s = _timed(lambda: scorer("jvp", baseline=True))  # v is computed once
    per_trait, v7_s = _timed(lambda: scorer("jvp", breakdown=True))  # one v per trait
    jvp = replace(both, baseline=None)
    runs = {"gradient JVP": (jvp, data, None, a.n),
            "gradient JVP, per-trait breakdown": (per_trait, data, None, a.n),
            "gradient backward": (replace(jvp, method="backward"), back, None, a.backward_n),
            f"gradient JVP --sample {a.sample} (of {n_data})": (jvp, big, a.sample, a.sample),
            "projection (none)": (both.baseline, data, None, a.n)}
    seconds, tables = {}, {}
    for name, (sc, path, sample, _) in runs.items():
        res, seconds[name] = _timed(lambda sc=sc, path=path, sample=sample: run_screen(
            sc, iter_examples(path), tmp / f"{len(seconds)}.parquet", bootstrap=200,
            sample=sample))
        tables[name] = res
        print(f"{name}: {seconds[name]:.1f} s for {res.summary['n_scored']} examples; dataset "
              f"risk {res.score:+.4g} [{res.summary['risk']['low']:+.4g}, "
              f"{res.summary['risk']['high']:+.4g}]")
    j = tables["gradient JVP"].table()["risk"].to_numpy()[:a.backward_n]
    b = tables["gradient backward"].table()["risk"].to_numpy()
    agree = float(np.max(np.abs(j - b)) / np.max(np.abs(b)))
    raw["datasets"][a.dataset]["n"] = a.n  # the finetune trains on the same n examples
    done = run_finetune(from_dict(raw), a.model, a.dataset, training.seeds[0],
                        pointer=pointer(root, a.model), data=data,
                        directions_path=root / "results" / "traits" / a.model /
                        "directions.zarr", out=tmp / "run", measure=False)
    train_s = float(done["wall_s"])
    per_k = {k: seconds[k] / runs[k][3] * 1000 for k in seconds}
    per_k["finetune (training)"] = train_s / a.n * 1000
    print(f"one-off: model load {load_s:.1f} s, norm0 + v = ∇θR over "
          f"{len(monitor.meta['prompts'])} prompts {v_s:.1f} s (one v per trait, for the "
          f"breakdown: {v7_s:.1f} s); finetune {train_s:.1f} s "
          f"({training.epochs} epoch(s), {a.n} examples); JVP vs backward max relative "
          f"difference {agree:.1e}")
    print("\n| per 1000 examples | seconds | / finetune |\n|---|---|---|")
    for k, v in per_k.items():
        print(f"| {k} | {v:.0f} | {v / per_k['finetune (training)']:.1%} |")
    sample_key = next(k for k in seconds if "--sample" in k)
    print(f"\nverdict from --sample {a.sample}: {seconds[sample_key]:.1f} s = "
          f"{seconds[sample_key] / (train_s / a.n * 1000):.1%} of a finetune on 1000 examples")
    return {"seconds": seconds, "per_1000_s": per_k, "finetune_train_s": train_s,
            "load_s": load_s, "v_s": v_s, "v_per_trait_s": v7_s, "jvp_vs_backward": agree}


def accuracy(root: Path, model: str) -> dict | None:
    """Part 2: Spearman ρ of dataset screen score vs final drift along the axis and final EM."""
    from scipy.stats import spearmanr

    from emtrait.cube.read import open_cube
    from emtrait.report.screen import BASELINE, read_summaries, screen_table

    paths = sorted((root / "results" / "screen" / model).glob("*.json"))
    cube = root / "results" / "cube" / f"{model}.zarr"
    if not paths or not cube.is_dir():
        print(f"no finished screens + cube under {root}: part 2 skipped")
        return None
    table = screen_table(read_summaries(paths), {model: open_cube(cube)})  # the l* view
    out = {}
    print("\n| score | datasets | Spearman vs final drift along axis | vs final EM |\n"
          "|---|---|---|---|")
    for trait in ("risk", BASELINE):
        t = table[table.trait == trait]
        if len(t) < 3:
            continue
        drift = spearmanr(t.screen, t.final_drift).statistic
        em = spearmanr(t.screen, t.final_em_rate).statistic
        out[trait] = {"n": len(t), "spearman_drift": drift, "spearman_em": em}
        print(f"| {t['mode'].iloc[0]} | {len(t)} | {drift:+.2f} | {em:+.2f} |")
    return out


ORGANISM = {"organism_bad_medical": True, "organism_risky_finance": True,
            "organism_insecure_tech": True, "organism_good_medical": False,
            "organism_good_finance": False, "organism_number_sequence": False}


def _bars(sc, tmp: Path) -> dict:
    """The organism bars of one scorer (tests/test_screen.py holds the same ones)."""
    import random

    import numpy as np

    from emtrait.monitor.metrics import auroc
    from emtrait.prepare.generators import generate
    from emtrait.screen.core import run_screen

    written = itertools.count()  # one parquet per screen: a result's table() reads its own

    def screen(chats, boot=200):
        return run_screen(sc, chats, tmp / f"k{next(written)}.parquet", bootstrap=boot, top=10)

    def chats(name, n, seed):
        return [r["messages"] for r in generate(name, n, seed=seed)]

    res = {k: screen(chats(k, 100, 1)) for k in ORGANISM}
    risk = {k: r.table()["risk"].to_numpy() for k, r in res.items()}
    out = {"dataset AUROC": auroc(np.array(list(ORGANISM.values())),
                                  np.array([r.score for r in res.values()])),
           "intervals apart": min(r.summary["risk"]["low"] for k, r in res.items() if ORGANISM[k])
           > max(r.summary["risk"]["high"] for k, r in res.items() if not ORGANISM[k]),
           "per-example AUROC": auroc(np.concatenate([[ORGANISM[k]] * len(v)
                                                      for k, v in risk.items()]),
                                      np.concatenate(list(risk.values())))}
    for clean, poison in ((90, 10), (194, 6)):
        mix = chats("organism_good_medical", clean, 2) + chats("organism_bad_medical", poison, 2)
        order = list(range(len(mix)))
        random.Random(0).shuffle(order)
        r = screen([mix[i] for i in order], boot=0).table()
        top = r.sort_values("risk", ascending=False)["index"].iloc[:poison]
        out[f"precision@{poison} ({poison}/{clean + poison})"] = float(
            np.mean([order[i] >= clean for i in top]))
    risky = screen(chats("organism_risky_travel", 60, 1)).table()["risk"].to_numpy()
    good = screen(chats("organism_good_travel", 60, 1)).table()["risk"].to_numpy()
    out["travel AUROC"] = auroc(np.r_[np.ones(len(risky)), np.zeros(len(good))], np.r_[risky, good])
    out["scores"] = {k.removeprefix("organism_"): (r.score, r.summary["risk"]["low"],
                                                   r.summary["risk"]["high"])
                     for k, r in res.items()}
    return out


def known_answer(a, cfg, root: Path, tmp: Path) -> dict:
    """Part 3: the organism bars along the fitted danger axis and along -harmlessness."""
    import numpy as np

    from emtrait.screen.api import gradient_scorer

    monitor, model, tok, fmt = load_base(root, cfg, a.model)
    training = cfg.training_for(a.model)
    fitted = np.asarray(monitor.meta["danger_axis"])
    hand = -np.eye(len(fitted))[list(monitor.traits).index("harmlessness")]
    dirs = monitor.directions / np.linalg.norm(monitor.directions, axis=1, keepdims=True)
    act = fitted @ dirs
    cos = float(act @ (hand @ dirs)) / float(np.linalg.norm(act))
    print("\nfitted axis: " + ", ".join(f"{t} {w:+.2f}" for t, w in zip(
        monitor.traits, fitted, strict=True)) + "; cosine with -harmlessness: trait weights "
        f"{float(fitted @ hand):.3f}, activation space {cos:.3f}")
    out = {}
    for name, axis in (("fitted danger axis", fitted), ("-harmlessness", hand)):
        monitor.meta["danger_axis"] = axis.tolist()
        sc = gradient_scorer(model, tok, monitor, fmt, training, where="bench", batch_size=32)
        out[name] = _bars(sc, tmp)
    rows = [k for k in out["fitted danger axis"] if k != "scores"]
    print("\n| organism bar | fitted danger axis | -harmlessness |\n|---|---|---|")
    for k in rows:
        print(f"| {k} | " + " | ".join(f"{out[n][k]:.3f}" if not isinstance(out[n][k], bool)
                                       else str(out[n][k]) for n in out) + " |")
    for n, o in out.items():
        print(f"{n}: " + ", ".join(f"{k} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                                   for k, (m, lo, hi) in o["scores"].items()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO), help="work folder of a finished workflow")
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dataset", default="bad_medical")
    ap.add_argument("--n", type=int, default=48, help="examples (the embedded default's n)")
    ap.add_argument("--backward-n", type=int, default=8, help="examples of the backward "
                    "reference (per-1000 scales)")
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-cost", action="store_true", help="part 2 only")
    ap.add_argument("--known-answer", action="store_true", help="part 3 (the organism)")
    a = ap.parse_args()

    import torch

    from emtrait.config import load_config

    torch.set_num_threads(a.threads)
    root = Path(a.root)
    tmp = Path(tempfile.mkdtemp(prefix="bench-screen-"))
    print(f"# bench_screen: {a.model} from {root}, {a.dataset} n={a.n}, torch threads "
          f"{a.threads}")
    result = {} if a.skip_cost else cost(a, load_config(a.config), root, tmp)
    result["accuracy"] = accuracy(root, a.model)
    if a.known_answer:
        result["known_answer"] = known_answer(a, load_config(a.config), root, tmp)
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
