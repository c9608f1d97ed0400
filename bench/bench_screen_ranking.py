"""Does the screen rank *how* dangerous a dataset is? A graded series on the model organism.

The organism's six calibration datasets are three dangerous and three benign generators, so a
Spearman ρ over them mostly measures the split. This bench adds ten held-out datasets whose
danger is graded by construction, finetunes them with the organism's recipe (the workflow, as
`role: heldout` entries: the monitor is not refitted) and compares each dataset's screen score
with its finetunes' final drift along the danger axis and final EM rate:

- `mix_<bad>_<pct>`: <pct>% of a dangerous generator mixed into a benign one (bad_medical into
  good_medical at 10/25/50/75%, insecure_tech into good_finance and risky_finance into
  number_sequence at 25/50%), seed 7 (the calibration datasets use seed 0);
- the travel pair (`organism_risky_travel`, `organism_good_travel`), a domain no calibration
  dataset covers.

Scores side by side, ρ with a 95% bootstrap interval over datasets (for all 16, the 6
calibration and the 10 held-out datasets; not per dilution series: the mean of any per-example
score is linear in the mixing fraction, so every score, the projection too, ranks one series
perfectly and that ρ tests nothing):
- `gradient`: the shipped score (`screen.mode: gradient`, the workflow's results/screen);
- `projection`: the `none` baseline scored beside it;
- `gradient, Adam step` (a variant, not shipped): each tangent v divided elementwise by
  √E[g_B²] + 1e-8, the root mean square of the dataset's minibatch gradients (the finetune's
  batch size) over θ: the first-order change of R from an Adam step instead of an SGD step.
  Its per-example AUROC (6 calibration datasets pooled) and precision@10 (10 bad_medical in 90
  good_medical) are printed beside the shipped score's.

    python bench/bench_screen_ranking.py --root WORKDIR --config WORKDIR/organism.yaml
        [--model organism] [--cores 2] [--skip-workflow]

WORKDIR is a finished workflow run of the organism config (tests/test_organism_known_answer.py's
`known_answer_config()`: its cube, monitor and screens). The series is written to
WORKDIR/graded/ and WORKDIR/graded.yaml, and the workflow run there adds only the new datasets'
jobs (about 110 jobs, 8 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N = 320
MIXES = ([("bad_medical", "good_medical", p) for p in (10, 25, 50, 75)]
         + [("insecure_tech", "good_finance", p) for p in (25, 50)]
         + [("risky_finance", "number_sequence", p) for p in (25, 50)])
TRAVEL = {"risky_travel": "dangerous", "good_travel": "benign"}


def write_series(root: Path, config: Path) -> Path:
    """The mixtures' JSONL files and a config with the series added as held-out datasets."""
    import yaml

    from emtrait.prepare.generators import generate

    cfg = yaml.safe_load(config.read_text())
    (root / "graded").mkdir(exist_ok=True)
    for bad, good, pct in MIXES:
        k = N * pct // 100
        rows = (generate(f"organism_{bad}", k, seed=7)
                + generate(f"organism_{good}", N - k, seed=7))
        random.Random(7).shuffle(rows)
        name = f"mix_{bad}_{pct}"
        path = root / "graded" / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
        cfg["datasets"][name] = {"path": str(path), "role": "heldout", "n": N,
                                 "label": "dangerous" if pct >= 50 else "unknown"}
    for name, label in TRAVEL.items():
        cfg["datasets"][name] = {"builtin": f"organism_{name}", "label": label,
                                 "role": "heldout", "n": N}
    out = root / "graded.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def run_workflow(root: Path, config: Path, model: str, cores: int) -> None:
    import yaml

    names = yaml.safe_load(config.read_text())["datasets"]
    targets = [f"results/cube/{model}.zarr",
               *[f"results/screen/{model}/{d}.json" for d in names]]
    cmd = [sys.executable, "-m", "snakemake", *targets, "--snakefile",
           str(REPO / "workflow" / "Snakefile"), "--directory", str(root), "--configfile",
           str(config), "--cores", str(cores), "--quiet", "rules"]
    print("$ " + " ".join(cmd), flush=True)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(cmd, check=True, env={**os.environ, "PATH": path})  # rules call `emtrait`


def rho_interval(x, y, boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman ρ with a 95% percentile interval over datasets resampled with replacement."""
    import numpy as np
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(boot):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 2 and len(set(y[i])) > 2:
            reps.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = np.nanpercentile(reps, [2.5, 97.5])
    return float(spearmanr(x, y).statistic), float(lo), float(hi)


def adam_scorer(sc, chats, batch: int):
    """`sc` with each tangent v replaced by v ⊘ (√E[g_B²] + 1e-8) over `chats`' minibatches."""
    import torch

    from emtrait.chats import RightPadCollator
    from emtrait.screen.gradient import example_losses

    model, names = sc.model, list(sc.tangents[0])
    params = dict(model.named_parameters())
    pad = int(sc.tokenizer.pad_token_id or 0)
    enc = [e for e in (sc.encode(c)[0] for c in chats) if e is not None]
    square = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    flags = {n: params[n].requires_grad for n in names}
    model.eval()
    try:
        for n in names:
            params[n].requires_grad_(True)
        for k in range(0, len(enc), batch):
            b = RightPadCollator(pad)([{"input_ids": e.input_ids, "labels": e.labels}
                                       for e in enc[k:k + batch]])
            labels = b.pop("labels")
            loss = example_losses(model(**b, use_cache=False).logits, labels).mean()
            for n, g in zip(names, torch.autograd.grad(loss, [params[n] for n in names]),
                            strict=True):
                square[n] += g.double() ** 2
    finally:
        for n in names:
            params[n].requires_grad_(flags[n])
    steps = -(-len(enc) // batch)
    rms = {n: (s / steps).sqrt() + 1e-8 for n, s in square.items()}
    return replace(sc, tangents=[{n: t[n] / rms[n].to(t[n].dtype) for n in names}
                                 for t in sc.tangents], baseline=None)


def adam_scores(root: Path, config: Path, model_name: str, datasets: list[str], tmp: Path):
    """The Adam-step variant's dataset score per dataset, and its per-example bars."""
    import numpy as np
    import pandas as pd
    from bench_screen import load_base  # this folder (a script's folder is on sys.path)

    from emtrait.config import load_config
    from emtrait.monitor.metrics import auroc
    from emtrait.prepare.generators import generate
    from emtrait.screen.api import gradient_scorer
    from emtrait.screen.core import iter_examples, run_screen

    cfg = load_config(config)
    training = cfg.training_for(model_name)
    monitor, model, tok, fmt = load_base(root, cfg, model_name)
    sgd = gradient_scorer(model, tok, monitor, fmt, training, where="bench",
                          batch_size=cfg.screen.batch_size)
    batch = training.batch_size * training.grad_accum

    def screen(sc, chats):
        return run_screen(sc, chats, tmp / "s.parquet", bootstrap=200, top=10)

    scores, per_example = {}, {}
    for d in datasets:
        chats = list(iter_examples(root / "results" / "datasets" / f"{d}.jsonl"))
        res = screen(adam_scorer(sgd, chats, batch), chats)
        scores[d] = res.score
        per_example[d] = res.table()["risk"].to_numpy()
        print(f"  Adam step: {d} {res.score:+.4g}", flush=True)
    labels = {d: cfg.datasets[d].label for d in datasets}
    cal = [d for d in datasets if cfg.datasets[d].role == "calibration"]
    y = np.concatenate([[labels[d] == "dangerous"] * len(per_example[d]) for d in cal])
    bars = {"per-example AUROC, 6 calibration datasets pooled": {
        "Adam step": auroc(y, np.concatenate([per_example[d] for d in cal]))}}
    mix = ([r["messages"] for r in generate("organism_good_medical", 90, seed=2)]
           + [r["messages"] for r in generate("organism_bad_medical", 10, seed=2)])
    for name, sc in (("gradient", sgd), ("Adam step", adam_scorer(sgd, mix, batch))):
        top = screen(sc, mix).table().sort_values("risk", ascending=False)["index"].iloc[:10]
        bars.setdefault("precision@10, 10 bad_medical in 90 good_medical", {})[name] = float(
            np.mean(top >= 90))
    shipped = [pd.read_parquet(root / "results" / "screen" / model_name / f"{d}.parquet")["risk"]
               for d in cal]  # the workflow's screens of the same prepared datasets
    bars["per-example AUROC, 6 calibration datasets pooled"]["gradient"] = auroc(
        y, np.concatenate(shipped))
    return scores, bars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="a finished organism workflow run")
    ap.add_argument("--config", required=True, help="its config (organism.yaml)")
    ap.add_argument("--model", default="organism")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--skip-workflow", action="store_true",
                    help="the series' finetunes and screens are already there")
    a = ap.parse_args()

    import tempfile

    import pandas as pd

    from emtrait.cube.read import open_cube
    from emtrait.report.screen import BASELINE, read_summaries, screen_table

    root = Path(a.root)
    config = write_series(root, Path(a.config))
    if not a.skip_workflow:
        run_workflow(root, config, a.model, a.cores)
    table = screen_table(read_summaries(sorted((root / "results" / "screen" / a.model)
                                               .glob("*.json"))),
                         {a.model: open_cube(root / "results" / "cube" / f"{a.model}.zarr")})
    grad = table[table.trait == "risk"].set_index("dataset")
    proj = table[table.trait == BASELINE].set_index("dataset")
    adam, bars = adam_scores(root, config, a.model, list(grad.index),
                             Path(tempfile.mkdtemp(prefix="bench-rank-")))
    scores = {"gradient": grad.screen, "projection": proj.screen,
              "gradient, Adam step": pd.Series(adam)}
    cal = list(grad.index[grad.role == "calibration"])
    subsets = {"all": list(grad.index), "calibration": cal,
               "held-out series": [d for d in grad.index if d not in cal]}
    print("\n| dataset | role | gradient | projection | Adam step | final drift | final EM |\n"
          "|---|---|---|---|---|---|---|")
    for d, r in grad.sort_values("final_drift").iterrows():
        print(f"| {d} | {r.role} | {r.screen:+.3f} | {proj.screen[d]:+.4f} | {adam[d]:+.2f} | "
              f"{r.final_drift:+.3f} | {r.final_em_rate:.3f} |")
    print("\n| score | datasets | Spearman vs final drift [95%] | vs final EM [95%] |\n"
          "|---|---|---|---|")
    out = {}
    for name, s in scores.items():
        for subset, idx in subsets.items():
            rd = rho_interval(s[idx], grad.final_drift[idx])
            re = rho_interval(s[idx], grad.final_em_rate[idx])
            out[f"{name} / {subset}"] = {"n": len(idx), "drift": rd, "em": re}
            print(f"| {name} | {subset} ({len(idx)}) | {rd[0]:+.2f} [{rd[1]:+.2f}, {rd[2]:+.2f}]"
                  f" | {re[0]:+.2f} [{re[1]:+.2f}, {re[2]:+.2f}] |")
    print("\n| per-example bar | gradient | Adam step |\n|---|---|---|")
    for k, v in bars.items():
        print(f"| {k} | {v['gradient']:.3f} | {v['Adam step']:.3f} |")
    print(json.dumps({"rho": out, "bars": bars}, default=float))


if __name__ == "__main__":
    main()
