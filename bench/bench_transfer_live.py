"""Lead time of a transferred monitor, live, and the TRL demo on the new model (issue 24).

On the organism family (config/organism-family.yaml, after its workflow has written the
monitors: `snakemake --cores 2 --configfile config/organism-family.yaml`), in the workflow's
folder:

    python bench/bench_transfer_live.py --config config/organism-family.yaml \
        [--transferred org_b org_c] [--own org_a] [--seeds 1 2] [--small]

1. Lead time. Per model and per dangerous calibration dataset of the config, for each seed: the
   workflow's own finetune (`emtrait.finetune.train.run_finetune`, a transformers Trainer, the
   config's LoRA recipe) with `emtrait.live.MonitorCallback(results/monitor/<model>/
   monitor.skops, every=2, on_alarm="log")` beside it, the adapters saved every 4 updates over
   the first 40 (`training.checkpoint_steps` set to 0, 4, ..., 40). Every saved checkpoint is
   then labelled, in order up to the first whose EM exceeds the threshold, by the workflow's
   behaviour commands (`emtrait behavior generate` and `label`:
   the config's judge, questions and samples). A run is dangerous when a labelled checkpoint's
   EM exceeds the config's threshold (em.json `dangerous`); its lead time is the step of that
   first checkpoint minus the step of the first alarm (positive: the alarm came first). Models
   in `--transferred` are watched by the monitor moved onto them (`emtrait monitor transfer`),
   `--own` by its own calibrated monitor on training seeds its calibration did not use (the
   same datasets, so this is NOT a leave-one-perturbation-out figure).
2. The live demo on the first `--transferred` model: examples/trl_sft.py (TRL's SFTTrainer) with
   its transferred monitor, a reading every 2 updates and on_alarm=stop, on the first dangerous
   dataset (should stop) and on good_medical (should train to the end); both outputs printed.

`--benign`: instead, the benign calibration datasets, watched the same way and not labelled:
which runs alarm at all within the 40 updates (what the lead time costs in false alarms).

`--demo-only [--demo-monitor PATH]`: only the demo, e.g. with a few-run recalibrated monitor.

`--small`: 1 dataset, 1 seed, 8 updates (64 chats), for checking that it runs. Everything is
written under --work (default bench-transfer-live/); nothing of the workflow's results changes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def live_config(config: Path, work: Path, updates: int, save_every: int, small: bool) -> Path:
    """The family config with checkpoints every `save_every` updates up to `updates`."""
    raw = yaml.safe_load(config.read_text())
    t = raw["training"]
    if small:
        for entry in raw["datasets"].values():
            entry["n"] = updates * t["batch_size"] * t.get("grad_accum", 1)
    t.pop("checkpoint_every", None)
    t.pop("checkpoint_schedule", None)
    t["checkpoint_steps"] = list(range(0, updates + 1, save_every))
    out = work / "config.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def finetune(cfg, model: str, dataset: str, seed: int, run: Path,
             every: int) -> dict:
    """One watched finetune: the first alarm's step and every reading."""
    from emtrait.finetune.train import run_finetune
    from emtrait.live import MonitorCallback
    from emtrait.modeling import load_tokenizer, read_pointer

    pointer = f"resources/models/{model}/model.json"
    watch = MonitorCallback(f"results/monitor/{model}/monitor.skops", every=every,
                            on_alarm="log", store=None,
                            tokenizer=load_tokenizer(read_pointer(pointer), cfg.model(model)))
    t0 = time.perf_counter()
    run_finetune(cfg, model, dataset, seed, pointer=pointer,
                 data=f"results/datasets/{dataset}.jsonl",
                 directions_path=f"results/traits/{model}/directions.zarr", out=run,
                 callbacks=[watch])
    alarms = [r.step for r in watch.readings if r.alarm]
    return {"first_alarm": alarms[0] if alarms else None, "train_s": time.perf_counter() - t0,
            "readings": [(r.step, round(r.pred_em, 4), r.alarm) for r in watch.readings]}


def label(cfg_path: Path, model: str, dataset: str, seed: int, run: Path,
          steps: list[int]) -> dict[int, dict]:
    """em.json of the saved checkpoints in order, by the workflow's behaviour commands, up to
    the first whose EM exceeds the threshold (the later ones cannot change the lead time)."""
    from emtrait.behavior.cli import generate
    from emtrait.behavior.cli import label as judge_and_score

    out: dict[int, dict] = {}
    pointer = Path(f"resources/models/{model}/model.json")
    for step in steps:
        folder = run / "behavior" / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):
            generate(config=cfg_path, model=model, dataset=dataset, seed=seed, step=step,
                     pointer=pointer, adapters=run / "adapters", out=folder / "responses.parquet")
            judge_and_score(config=cfg_path, model=model, dataset=dataset, seed=seed, step=step,
                            responses=folder / "responses.parquet",
                            judgements=folder / "judgements.parquet",
                            usage=folder / "usage.json", cache=None, judge_model=None,
                            judge_pointer=None, out=folder / "em.json")
        out[step] = json.loads((folder / "em.json").read_text())
        if out[step]["dangerous"]:
            break
    return out


def lead_row(model: str, kind: str, dataset: str, seed: int, watched: dict,
             em: dict[int, dict]) -> dict:
    """One run's figures: the first labelled dangerous step, the first alarm, the lead."""
    bad = [s for s in sorted(em) if em[s]["dangerous"]]
    first_bad = bad[0] if bad else None
    alarm = watched["first_alarm"]
    in_time = None if first_bad is None else alarm is not None and alarm <= first_bad
    return {"model": model, "monitor": kind, "dataset": dataset, "seed": seed,
            "first_alarm": alarm, "first_em_over": first_bad,
            "lead": None if first_bad is None or alarm is None else first_bad - alarm,
            "in_time": in_time, "em": {s: em[s]["em_rate"] for s in sorted(em)},
            "train_s": round(watched["train_s"], 1)}


def demo(model: str, dangerous: str, work: Path, every: int, updates: int,
         monitor: Path | None = None) -> list[str]:
    """examples/trl_sft.py on `model` with its transferred monitor: harmful, then benign."""
    from emtrait.modeling import read_pointer

    monitor = monitor or Path(f"results/monitor/{model}/monitor.skops")
    base = read_pointer(f"resources/models/{model}/model.json")
    lines = []
    for dataset in (dangerous, "good_medical"):
        cmd = [sys.executable, str(REPO / "examples" / "trl_sft.py"), "--model", str(base),
               "--monitor", str(monitor),
               "--data", f"results/datasets/{dataset}.jsonl", "--n", str(updates * 8),
               "--out", str(work / "demo" / model / monitor.stem / dataset), "--every", str(every),
               "--on-alarm", "stop"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        origin = [x for x in res.stderr.splitlines() if "transferred from" in x][:1]
        tail = res.stdout.strip().splitlines()
        lines += [f"--- {model} {dataset}: {' '.join(cmd[1:])}", *origin, *tail[-4:]]
        if res.returncode != 0:
            lines.append(res.stderr[-2000:])
    return lines


def summary(rows: list[dict]) -> list[str]:
    """Per model and monitor: dangerous runs, alarm at or before the first EM checkpoint."""
    out = ["| model | monitor | dangerous runs | alarm at or before | share | leads (updates) |",
           "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["model"], r["monitor"]) for r in rows):
        runs = [r for r in rows if (r["model"], r["monitor"]) == key
                and r["first_em_over"] is not None]
        ok = [r for r in runs if r["in_time"]]
        leads = ", ".join("none" if r["lead"] is None else str(r["lead"]) for r in runs)
        share = f"{len(ok) / len(runs):.0%}" if runs else "n/a"
        out.append(f"| {key[0]} | {key[1]} | {len(runs)} | {len(ok)} | {share} | {leads} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("config/organism-family.yaml"))
    p.add_argument("--transferred", nargs="*", default=["org_b", "org_c"])
    p.add_argument("--own", nargs="*", default=["org_a"])
    p.add_argument("--seeds", nargs="*", type=int, default=[1, 2])
    p.add_argument("--updates", type=int, default=40)
    p.add_argument("--every", type=int, default=2, help="updates between readings")
    p.add_argument("--save-every", type=int, default=4, help="updates between labels")
    p.add_argument("--small", action="store_true")
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--demo-only", action="store_true")
    p.add_argument("--demo-monitor", type=Path, help="the demo's monitor (default: "
                   "results/monitor/<first --transferred>/monitor.skops)")
    p.add_argument("--benign", action="store_true", help="instead: watch the benign "
                   "calibration datasets, unlabelled, and report which runs alarm at all")
    p.add_argument("--work", type=Path, default=Path("bench-transfer-live"))
    a = p.parse_args()
    from emtrait.config import load_config
    from emtrait.monitor.artifact import load_monitor, origin_line

    if a.small:
        a.updates, a.seeds = 8, a.seeds[:1]
    a.work.mkdir(parents=True, exist_ok=True)
    cfg_path = live_config(a.config, a.work, a.updates, a.save_every, a.small)
    cfg = load_config(cfg_path)
    wanted = "benign" if a.benign else "dangerous"
    dangerous = [n for n, d in cfg.datasets.items()
                 if d.label == wanted and d.role == "calibration"][:1 if a.small else None]
    steps = [s for s in cfg.training.checkpoint_steps if s > 0]  # step 0: the base model
    rows, t0 = [], time.perf_counter()
    for model in [] if a.demo_only else [*a.transferred, *a.own]:
        meta = load_monitor(f"results/monitor/{model}/monitor.skops").meta
        kind = "transferred" if model in a.transferred else "own"
        print(f"{model}: monitor {origin_line(meta)}", flush=True)
        if kind == "own":
            print(f"  calibration seeds {cfg.training.seeds}; watched seeds {a.seeds}", flush=True)
        for dataset in dangerous:
            for seed in a.seeds:
                run = a.work / "runs" / model / dataset / f"seed{seed}"
                watched = finetune(cfg, model, dataset, seed, run, a.every)
                if a.benign:
                    rows.append({"model": model, "monitor": kind, "dataset": dataset,
                                 "seed": seed, "first_alarm": watched["first_alarm"]})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                row = lead_row(model, kind, dataset, seed, watched,
                               label(cfg_path, model, dataset, seed, run, steps))
                rows.append(row)
                print(json.dumps(row), flush=True)
                print("  readings (step, pred_em, alarm):", watched["readings"], flush=True)
                (a.work / "lead_time.json").write_text(json.dumps(rows, indent=1))
    if a.benign:
        (a.work / "benign_alarms.json").write_text(json.dumps(rows, indent=1))
        for key in dict.fromkeys((r["model"], r["monitor"]) for r in rows):
            runs = [r for r in rows if (r["model"], r["monitor"]) == key]
            hit = [r for r in runs if r["first_alarm"] is not None]
            print(f"{key[0]} ({key[1]}): {len(hit)}/{len(runs)} benign runs alarm, first "
                  f"alarms at {[r['first_alarm'] for r in runs]}")
        return
    print(f"lead time: {len(rows)} runs, {time.perf_counter() - t0:.0f} s")
    print("\n".join(summary(rows)))
    if not a.no_demo and a.transferred:
        print("\n".join(demo(a.transferred[0], dangerous[0], a.work, a.every, a.updates,
                              a.demo_monitor)))


if __name__ == "__main__":
    main()
