"""Monitor cost on the embedded model (SmolLM2-135M-Instruct): overhead and speedup, side by side.

1. Per checkpoint, ours vs the reference procedure, on the same prompts and the same adapter:
   ours = live weights, batches sorted by length, forward truncated after l*;
   reference (the paper's released code) = reload base + adapter, one prompt at a time, full
   forward. Two ablations of ours (batch 1; full forward) say what the speedup comes from.
2. Monitor overhead = measuring time / training time between two checkpoints:
   (a) the paper's token budget: 16 sequences x 512 tokens per update (batch 4 x accumulation 4),
       a checkpoint every 10 updates; the update time is the mean of `--updates` timed updates
       (the first included: at minutes per update its warm-up is noise), times 10;
   (b) the embedded default's own settings (config/config.yaml): a real `run_finetune` of one
       dataset end to end, whose done.json records train/measure seconds per checkpoint.
3. Time for that embedded-default run end to end (finetune + in-process measurement).
4. `--layer-cost`: only the cost of `measurement.layers: candidates` (one forward cut after the
   deepest candidate, every candidate read) against l* only (cut after l*), per checkpoint, for
   each candidate as l*, on the embedded default and the organism side by side (arms
   alternated, min of `--repeats`), with the run store's bytes per step.

    python bench/bench_measure.py [--threads 1] [--prompts 115] [--repeats 2] [--updates 1]
    python bench/bench_measure.py --layer-cost [--repeats 3]

Directions come from results/traits/smollm2/directions.zarr when it exists; otherwise seeded
random unit directions at the model's candidate layers (l* = the deepest) are written to a
temporary store: the values of the directions do not change any timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wait_for(pointer: Path, timeout_s: float) -> None:
    start = time.time()
    while not pointer.is_file():
        if time.time() - start > timeout_s:
            raise SystemExit(f"{pointer} did not appear; run `emtrait prepare model --config "
                             f"config/config.yaml --model smollm2 --out {pointer}` first")
        time.sleep(10)


def directions_store(cfg, model_name: str, hidden: int, tmp: Path) -> tuple[Path, str]:
    import numpy as np

    from emtrait.traits.store import build_dataset, write_directions

    real = REPO / "results" / "traits" / model_name / "directions.zarr"
    if real.is_dir():
        return real, "extracted directions"
    layers = cfg.model(model_name).candidate_layers
    names = [f"t{i}" for i in range(21)]
    sets = ["alignment7"] * 7 + ["semantic7"] * 7 + ["random7"] * 7
    v = np.random.default_rng(0).normal(size=(21, len(layers), hidden))
    ds = build_dataset(names=names, sets=sets, layers=layers,
                       directions=v / np.linalg.norm(v, axis=-1, keepdims=True),
                       probe_accuracy=np.full((21, len(layers)), np.nan),
                       selection_score=np.zeros(len(layers)),
                       attrs={"layer": max(layers), "selector": "fixed",
                              "pooling": "last_token", "prompt_hash": "bench",
                              "model": model_name})
    write_directions(ds, tmp / "directions.zarr")
    return tmp / "directions.zarr", (f"random unit directions at l*={max(layers)} "
                                     "(timing-equivalent)")


def reference_checkpoint(location: str, adapter: Path, tok, texts: list[str], layer: int,
                         vectors):
    """The reference procedure for one checkpoint: reload, then one full forward per prompt."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from emtrait.modeling import decoder_layers

    t0 = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    t1 = time.perf_counter()
    acts = []
    grabbed = {}
    handle = decoder_layers(model)[layer].register_forward_hook(
        lambda _m, _i, out: grabbed.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        for text in texts:
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                model(**ids, use_cache=False)  # full forward, as the reference does
            acts.append(grabbed["h"][0, -1].float().numpy())
    finally:
        handle.remove()
    acts = np.stack(acts)
    proj = (acts.astype(np.float64) @ vectors.astype(np.float64).T).mean(axis=0)
    t2 = time.perf_counter()
    return acts, proj, t1 - t0, t2 - t1


def ours_variant(model, tok, texts, layer, batch_size: int, truncate: bool) -> float:
    """Time one measurement with batching/truncation switched as asked (ablations)."""
    import torch

    from emtrait.capture import _batches_by_length, encode, forward_blocks, pool
    from emtrait.measure.probe import frozen_for_measuring

    t0 = time.perf_counter()
    with frozen_for_measuring(model):
        for idx in _batches_by_length(tok, texts, batch_size):
            enc = encode(tok, [texts[i] for i in idx], "cpu")
            store = forward_blocks(model, enc["input_ids"], enc["attention_mask"], [layer],
                                   stop=truncate)
            pool(store[layer], enc["attention_mask"], "last_token").to(torch.float32)
    return time.perf_counter() - t0


def padding_share(tok, texts, batch_size: int) -> float:
    from emtrait.capture import _batches_by_length

    lengths = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
    real = padded = 0
    for idx in _batches_by_length(tok, texts, batch_size):
        width = max(lengths[i] for i in idx)
        real += sum(lengths[i] for i in idx)
        padded += width * len(idx)
    return 1 - real / padded


def paper_budget_update_s(model, tok, updates: int) -> list[float]:
    """Seconds per optimizer update at 4 x 4 sequences of 512 tokens, through the HF Trainer."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from emtrait.chats import ChatDataset, Encoded, RightPadCollator

    g = torch.Generator().manual_seed(0)
    items = [Encoded(ids, list(ids)) for ids in
             torch.randint(10, len(tok) - 10, (16 * updates, 512), generator=g).tolist()]
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=4,
                                 gradient_accumulation_steps=4, max_steps=updates,
                                 learning_rate=4e-5, weight_decay=0.01, save_strategy="no",
                                 report_to="none", use_cpu=True, logging_steps=1,
                                 remove_unused_columns=False, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=ChatDataset(items),
                data_collator=RightPadCollator(tok.pad_token_id), callbacks=[Clock()]).train()
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]  # first one included


def layer_cost(config: str, model_name: str, repeats: int, threads: int, wait: float) -> dict:
    """Per-checkpoint seconds: every candidate (what the workflow now measures) vs l* only."""
    import torch
    from emtrait.finetune.measure import eval_prompts, format_prompts, read_directions
    from emtrait.live.probe import TraitProbe

    from emtrait.config import load_config
    from emtrait.finetune.train import _load_for_training
    from emtrait.modeling import decoder_layers, read_pointer

    torch.set_num_threads(threads)
    cfg = load_config(config)
    pointer = REPO / "resources" / "models" / model_name / "model.json"
    wait_for(pointer, wait)
    model, tok = _load_for_training(cfg, model_name, read_pointer(pointer))
    tmp = Path(tempfile.mkdtemp(prefix="bench-layers-"))
    directions = read_directions(directions_store(cfg, model_name, model.config.hidden_size,
                                                  tmp)[0])
    layers = list(directions.layers)
    texts = format_prompts(tok, eval_prompts(cfg), cfg.model(model_name), model_name)

    def probe(star: int, extra: list[int]) -> TraitProbe:  # tokenised once, outside the timing
        return TraitProbe(directions=directions.at(star), traits=directions.traits, layer=star,
                          texts=texts, tokenizer=tok, batch_size=cfg.measurement.batch_size,
                          prefix_cache=cfg.measurement.prefix_cache,
                          extra_layers={la: directions.at(la) for la in extra})

    arms = {"candidates": probe(max(layers), [la for la in layers if la != max(layers)]),
            **{f"l*={la}": probe(la, []) for la in layers}}
    arms["candidates"].measure(model)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for name, p in arms.items():
            t0 = time.perf_counter()
            m = p.measure(model)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    step_bytes = {"l* only": m.activation.nbytes,
                  "candidates": m.activation.nbytes * (len(layers) + 1)}  # + activation_layers
    print(f"\n## {model_name}: {len(texts)} eval prompts, candidates {layers} of "
          f"{len(decoder_layers(model))} blocks, min of {repeats} alternated repeats")
    print(f"every candidate (one forward cut after block {max(layers)}): "
          f"{best['candidates']:.3f} s   [runs: "
          f"{', '.join(f'{x:.3f}' for x in times['candidates'])}]")
    for la in layers:
        t = best[f"l*={la}"]
        print(f"l* = {la} only (cut after block {la}): {t:.3f} s -> candidates cost "
              f"{best['candidates'] / t:.2f}x   [runs: "
              f"{', '.join(f'{x:.3f}' for x in times[f'l*={la}'])}]")
    print(f"activations stored per step (float32): l* only {step_bytes['l* only'] / 1e6:.2f} MB,"
          f" candidates {step_bytes['candidates'] / 1e6:.2f} MB")
    return {"model": model_name, "layers": layers, "seconds": best,
            "ratio": {la: best["candidates"] / best[f"l*={la}"] for la in layers},
            "bytes_per_step": step_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config/config.yaml"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dataset", default="bad_medical")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=115, help="eval prompts in both arms of 1.")
    ap.add_argument("--updates", type=int, default=1, help="timed updates at the paper budget")
    ap.add_argument("--repeats", type=int, default=2, help="alternated repeats of each arm")
    ap.add_argument("--skip-run", action="store_true", help="skip the end-to-end default run")
    ap.add_argument("--wait", type=float, default=1800, help="seconds to wait for the model")
    ap.add_argument("--layer-cost", action="store_true", help="only section 4: every candidate "
                    "layer vs l* only, on the embedded default and the organism")
    ap.add_argument("--organism-config", default=str(REPO / "config/organism.yaml"))
    a = ap.parse_args()
    if a.layer_cost:
        rows = [layer_cost(c, m, a.repeats, a.threads, a.wait)
                for c, m in ((a.config, a.model), (a.organism_config, "organism"))]
        print(json.dumps(rows, default=str))
        return

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from emtrait.config import load_config
    from emtrait.finetune.train import _load_for_training, run_finetune
    from emtrait.measure.inputs import eval_prompts, format_prompts, read_directions
    from emtrait.measure.probe import TraitProbe
    from emtrait.modeling import decoder_layers, read_pointer

    pointer = REPO / "resources" / "models" / a.model / "model.json"
    wait_for(pointer, a.wait)
    cfg = load_config(a.config)
    location = read_pointer(pointer)
    tmp = Path(tempfile.mkdtemp(prefix="bench-measure-"))
    model, tok = _load_for_training(cfg, a.model, location)  # LoRA r16 on q,v (paper)
    dpath, dkind = directions_store(cfg, a.model, model.config.hidden_size, tmp)
    directions = read_directions(dpath)
    layer = directions.layer
    prompts = eval_prompts(cfg)[: a.prompts]
    texts = format_prompts(tok, prompts, cfg.model(a.model), a.model)
    print(f"# bench_measure: {a.model}, {len(texts)} eval prompts, layer {layer} of "
          f"{len(decoder_layers(model))}, {len(directions.traits)} traits "
          f"({dkind}), torch threads {a.threads}")

    # a checkpoint that differs from the base: nudge the LoRA B matrices, save the adapter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3, generator=torch.Generator().manual_seed(1))
    adapter = tmp / "adapter"
    model.save_pretrained(adapter)

    # -- 1. per checkpoint: ours vs reference, alternated so both see the same load ----------
    all_texts = format_prompts(tok, eval_prompts(cfg), cfg.model(a.model), a.model)
    batch = cfg.measurement.batch_size

    def probe_of(some_texts):  # built once per run (tokenises the prompts), outside the timing
        return TraitProbe(directions=directions.at(layer), traits=directions.traits, layer=layer,
                          texts=some_texts, tokenizer=tok, batch_size=batch, prefix_cache=True)

    probe, probe_all = probe_of(texts), probe_of(all_texts)
    probe_of(texts[:4]).measure(model)  # warm-up
    ours, refs, nopfx, b1s, fulls = [], [], [], [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        snap = probe.measure(model)
        ours.append(time.perf_counter() - t0)
        refs.append(reference_checkpoint(location, adapter, tok, texts, layer,
                                         directions.at(layer)))
        nopfx.append(ours_variant(model, tok, texts, layer, batch, truncate=True))
        b1s.append(ours_variant(model, tok, texts, layer, 1, truncate=True))
        fulls.append(ours_variant(model, tok, texts, layer, batch, truncate=False))
    ours_s = min(ours)
    plain = min(nopfx)
    ref_acts, ref_proj, _, _ = refs[0]
    ref_load = min(r[2] for r in refs)
    ref_fwd = min(r[3] for r in refs)
    ref_s = ref_load + ref_fwd
    batch1, full = min(b1s), min(fulls)
    diff = float(np.abs(ref_acts - snap.activation).max())
    pdiff = float(np.abs(ref_proj - snap.projection).max())
    pad = padding_share(tok, texts, batch)
    t0 = time.perf_counter()
    probe_all.measure(model)
    ours_all = time.perf_counter() - t0
    ref_all = ref_load + ref_fwd / len(texts) * len(all_texts)
    print(f"\n## per checkpoint: {len(texts)} prompts in both arms, min of {a.repeats} "
          "alternated repeats, same adapter")
    print(f"ours (live weights, batch {batch}, truncated after block {layer}): {ours_s:.2f} s"
          f"   [runs: {', '.join(f'{x:.2f}' for x in ours)}]")
    print(f"reference (reload base+adapter {ref_load:.2f} s + {len(texts)} full forwards "
          f"{ref_fwd:.2f} s): {ref_s:.2f} s   [runs: "
          f"{', '.join(f'{r[2] + r[3]:.2f}' for r in refs)}]")
    print(f"speedup per checkpoint: {ref_s / ours_s:.1f}x   (agreement: max |dh| {diff:.2e}, "
          f"max |d projection| {pdiff:.2e})")
    print("what it comes from (factors switched off one at a time):")
    print(f"  reload avoided: {ref_load:.2f} s of the reference's {ref_s:.2f} s")
    print(f"  shared-prefix KV cache off (batch {batch}, truncated): {plain:.2f} s "
          f"({plain / ours_s:.2f}x ours)")
    print(f"  ... and batch 1 instead of {batch}: {batch1:.2f} s ({batch1 / plain:.2f}x the "
          "previous line)")
    print(f"  ... or a full forward instead of truncated: {full:.2f} s ({full / plain:.2f}x the "
          "line before the previous)")
    print(f"  padding share of our batched tokens (sorted by length): {pad:.1%}")
    print(f"all {len(all_texts)} prompts: ours {ours_all:.2f} s measured; reference "
          f"{ref_all:.1f} s extrapolated from its per-prompt cost -> {ref_all / ours_all:.1f}x")
    summary = {"prompts_compared": len(texts), "ours_s": ours_s, "reference_s": ref_s,
               "speedup": ref_s / ours_s, "ours_all_prompts_s": ours_all,
               "reference_all_prompts_s_extrapolated": ref_all}
    ours_s = ours_all  # the overheads below use the real per-checkpoint cost (all prompts)

    # -- 2a. overhead at the paper's token budget ------------------------------------------
    upd = paper_budget_update_s(model, tok, a.updates)
    upd_s = statistics.mean(upd)
    interval = 10 * upd_s
    print("\n## monitor overhead (a): paper budget, 16 x 512 tokens per update, checkpoint "
          "every 10 updates")
    print(f"update time: {upd_s:.1f} s (mean of {len(upd)} timed updates: "
          f"{', '.join(f'{x:.1f}' for x in upd)}; extrapolated x10 = {interval:.0f} s)")
    print(f"measure {ours_s:.2f} s / train {interval:.0f} s = {ours_s / interval:.2%}")
    del model

    # -- 2b + 3. the embedded default, end to end ------------------------------------------
    if a.skip_run:
        return
    data = REPO / "results" / "datasets" / f"{a.dataset}.jsonl"
    out = tmp / "run"
    t0 = time.perf_counter()
    done = run_finetune(cfg, a.model, a.dataset, cfg.training_for(a.model).seeds[0],
                        pointer=pointer, data=data, directions_path=dpath, out=out)
    total = time.perf_counter() - t0
    t = done["timing"]
    tr = cfg.training_for(a.model)
    pairs = [(m, s) for m, s, step in zip(t["measure_s"], t["train_s"], t["steps"], strict=True)
             if step > 0]
    print(f"\n## monitor overhead (b): embedded default ({a.dataset}, n="
          f"{cfg.dataset(a.dataset).n}, batch {tr.batch_size} x {tr.grad_accum}, max_length "
          f"{tr.max_length}, checkpoints {done['steps']})")
    for (m, s), step in zip(pairs, [x for x in t["steps"] if x > 0], strict=True):
        print(f"  step {step:>3}: measure {m:.2f} s / train {s:.1f} s = {m / s:.1%}")
    msum, tsum = sum(m for m, _ in pairs), sum(s for _, s in pairs)
    print(f"  all checkpoints: measure {msum:.1f} s / train {tsum:.1f} s = {msum / tsum:.1%} "
          f"(+ step 0: {t['measure_s'][0]:.1f} s; adapter saves {sum(t['save_s']):.1f} s)")
    print(f"\n## embedded-default run end to end: {total:.0f} s (load + {len(done['steps'])} "
          f"measurements + {done['steps'][-1]} updates + saves); Trainer wall "
          f"{done['wall_s']:.0f} s")
    print(json.dumps({**summary, "overhead_paper_budget": ours_s / interval,
                      "overhead_default": msum / tsum, "run_s": total}))


if __name__ == "__main__":
    main()
