"""Cost of the live monitor (MonitorCallback) next to the training it watches, in one run.

1. The paper's token budget on the embedded model (SmolLM2-135M-Instruct, LoRA r=16 on q,v):
   16 sequences x 512 tokens per update (batch 4 x accumulation 4), a reading every 10 updates.
   Overhead = one reading / (10 x one update); the reading is `LiveMonitor.check` on the
   monitor's 115 eval prompts, the update a real Trainer step, timed alternately.
2. A reading every update on the model organism (config/organism.yaml's finetune: LoRA r=8,
   batch 8, <=128 tokens): the same Trainer run with and without MonitorCallback(every=1),
   end to end (readings, run-store writes, logging included).
3. Extra peak memory of a reading: the highest RSS sampled every 2 ms during `check`, minus the
   RSS just before it (CPU; on a GPU, torch.cuda.max_memory_allocated instead).

    python bench/bench_live.py --smollm2 resources/models/smollm2/model.json \
        --organism resources/organisms/persona [--updates 1] [--readings 2] [--threads 2]

The monitors are format-2 files built here on each model (seeded random unit directions at l*,
the built-in 115 eval prompts, a small regressor): timing does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path


def bench_monitor(model, tok, layer: int, out: Path) -> Path:
    """A format-2 monitor of 7 random unit directions at `layer` with the 115 eval prompts."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from emtrait.monitor.artifact import NORM0_POLICY, Monitor, model_fingerprint, save_monitor
    from emtrait.traits.prompts import load_prompt_set

    prompts = load_prompt_set("builtin:emtrait").eval_prompts
    rng = np.random.default_rng(0)
    d = rng.normal(size=(7, model.config.hidden_size))
    traits = [f"t{i}" for i in range(7)]
    reg = LinearRegression().fit(rng.normal(size=(50, 8)), rng.uniform(0, 0.04, 50))
    meta = {"traits": traits, "layer": layer, "threshold": 0.05, "sigma": 0.02,
            "include_step": True, "model": "bench", "prompts": [p.text for p in prompts],
            "prompt_categories": [p.category for p in prompts], "system_prompt_method": "native",
            "no_system_prompt": "template_default", "norm0_policy": NORM0_POLICY,
            "fingerprint": model_fingerprint(model, tok), "provenance": {"bench": True}}
    save_monitor(out, Monitor(regressor=reg, directions=d / np.linalg.norm(d, axis=1,
                                                                           keepdims=True),
                              meta=meta))
    return out


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_extra_mib(fn) -> tuple[float, float]:
    """(seconds, extra peak MiB) of fn(): RSS sampled every 2 ms on a thread, minus before."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - before) / 2**20
    before, peak, done = rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)

    th = threading.Thread(target=sample)
    th.start()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    return dt, max(0.0, peak[0] - before)


def lora(model, r: int, alpha: float):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))


def random_rows(n: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab - 10, (n, length), generator=g)
    return [{"input_ids": r.tolist(), "attention_mask": [1] * length, "labels": r.tolist()}
            for r in ids]


def paper_budget(pointer: Path, updates: int, readings: int, tmp: Path) -> dict:
    """Seconds per update at 16 x 512 tokens vs seconds per reading, SmolLM2 at l* = 15."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from emtrait.live import load
    from emtrait.modeling import load_model, read_pointer

    model, tok = load_model(read_pointer(pointer), device="cpu")
    monitor = load(bench_monitor(model, tok, 15, tmp / "smollm2.skops"), tokenizer=tok,
                   model=model)
    model = lora(model, 16, 64)
    update_s: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            update_s.append(time.perf_counter() - self.t)

    reading_s, extra = [], []
    monitor.check(model, 0)  # step 0 (fixes norm0); timed readings follow each update
    for i in range(updates):
        args = TrainingArguments(output_dir=str(tmp / "sm"), per_device_train_batch_size=4,
                                 gradient_accumulation_steps=4, max_steps=1, learning_rate=4e-5,
                                 report_to="none", use_cpu=True, save_strategy="no",
                                 disable_tqdm=True, seed=i)
        Trainer(model=model, args=args, train_dataset=random_rows(16, 512, len(tok), i),
                callbacks=[Clock()]).train()
        for _ in range(readings if i == 0 else 1):
            dt, mib = peak_extra_mib(lambda: monitor.check(model, len(reading_s) + 1))
            reading_s.append(dt)
            extra.append(mib)
    u, r = statistics.mean(update_s), statistics.mean(reading_s)
    return {"update_s": update_s, "reading_s": reading_s, "extra_peak_mib": max(extra),
            "overhead_every10": r / (10 * u)}


def organism_every_update(folder: Path, steps: int, tmp: Path) -> dict:
    """Wall seconds of one organism finetune with and without MonitorCallback(every=1)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from emtrait.live import MonitorCallback, load

    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder)
    layer = 2
    mon = bench_monitor(base, tok, layer, tmp / "organism.skops")
    rows = random_rows(8 * steps, 96, len(tok), 1)
    wall, extra = {}, 0.0
    for with_monitor in (False, True, False, True):  # alternated: load drifts over time
        model = lora(AutoModelForCausalLM.from_pretrained(folder), 8, 32)
        out = tmp / f"org-{with_monitor}-{len(wall)}"
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8,
                                 max_steps=steps, learning_rate=2e-3, report_to="none",
                                 use_cpu=True, save_strategy="no", disable_tqdm=True,
                                 logging_steps=1)
        cbs = [MonitorCallback(mon, every=1)] if with_monitor else []
        t0 = time.perf_counter()
        Trainer(model=model, args=args, train_dataset=rows, processing_class=tok,
                callbacks=cbs).train()
        wall.setdefault(with_monitor, []).append(time.perf_counter() - t0)
    live = load(mon, tokenizer=tok, model=base)
    live.check(base, 0)
    _, extra = peak_extra_mib(lambda: live.check(base, 1))
    plain, watched = min(wall[False]), min(wall[True])
    return {"plain_s": wall[False], "watched_s": wall[True], "extra_peak_mib": extra,
            "overhead_every1": (watched - plain) / plain, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smollm2", type=Path, default=Path("resources/models/smollm2/model.json"))
    p.add_argument("--organism", type=Path, default=Path("resources/organisms/persona"))
    p.add_argument("--updates", type=int, default=1, help="timed updates at 16 x 512 tokens")
    p.add_argument("--readings", type=int, default=2, help="timed readings after update 1")
    p.add_argument("--organism-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["organism", "smollm2"], help="run one part only")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        if a.only != "smollm2":
            org = organism_every_update(a.organism, a.organism_steps, Path(tmp))
            print(f"organism, a reading every update ({org['steps']} updates, LoRA r8, batch 8 x "
                  f"96 tokens): plain {min(org['plain_s']):.2f} s, with MonitorCallback(every=1) "
                  f"{min(org['watched_s']):.2f} s (best of 2 each; all: {org}) -> overhead "
                  f"{100 * org['overhead_every1']:.1f}%; extra peak memory of a reading "
                  f"{org['extra_peak_mib']:.1f} MiB")
        if a.only == "organism":
            return
        sm = paper_budget(a.smollm2, a.updates, a.readings, Path(tmp))
        print(f"SmolLM2-135M, paper budget (16 x 512 tokens per update, LoRA r16 q,v): update "
              f"{statistics.mean(sm['update_s']):.1f} s {sm['update_s']}, reading (115 prompts, "
              f"l*=15) {statistics.mean(sm['reading_s']):.2f} s {sm['reading_s']} -> overhead "
              f"at a reading every 10 updates {100 * sm['overhead_every10']:.2f}% (goal <= 1%); "
              f"extra peak memory of a reading {sm['extra_peak_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
