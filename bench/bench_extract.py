"""Trait extraction on the embedded model: emtrait's capture vs the reference procedure.

Ours: right-padded batches sorted by length, every candidate layer read in one forward pass that
stops after the deepest candidate (`emtrait.capture.capture`). Reference (the paper's released
code): one prompt at a time, a full forward with output_hidden_states, one layer per pass.
Both arms run on the SAME subsample of the built-in extraction prompts, side by side in one
process, and must agree to float32 tolerance. Absolute times for the full prompt set are
extrapolated from the per-prompt cost and labelled as such.

    python bench/bench_extract.py [--prompts 40] [--threads 1] [--pointer ...] [--config ...]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wait_for(pointer: Path, timeout_s: float) -> None:
    start = time.time()
    while not pointer.is_file():
        if time.time() - start > timeout_s:
            raise SystemExit(f"{pointer} did not appear in {timeout_s:.0f} s; run "
                             "`emtrait prepare model --config config/config.yaml --model smollm2 "
                             f"--out {pointer}` first")
        time.sleep(10)


def reference(model, tokenizer, texts, layers):
    """One prompt at a time, full forward with output_hidden_states, one layer per pass."""
    import numpy as np
    import torch

    out = np.zeros((len(layers), len(texts), model.config.hidden_size), dtype=np.float32)
    for i, text in enumerate(texts):
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        for j, layer in enumerate(layers):
            with torch.no_grad():
                hs = model(**enc, output_hidden_states=True, use_cache=False).hidden_states
            out[j, i] = hs[layer + 1][0, -1].float().numpy()  # block `layer`'s output
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config/config.yaml"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--pointer", default=str(REPO / "resources/models/smollm2/model.json"))
    ap.add_argument("--prompts", type=int, default=40,
                    help="prompts subsampled (seeded) from the full set, the same in both arms")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for the pointer")
    args = ap.parse_args()

    import numpy as np
    import torch

    from emtrait.capture import capture
    from emtrait.config import load_config
    from emtrait.modeling import load_model, read_pointer
    from emtrait.traits.extract import resolve_sets, trait_prompts
    from emtrait.traits.prompts import load_prompt_set

    torch.set_num_threads(args.threads)
    pointer = Path(args.pointer)
    wait_for(pointer, args.wait)
    cfg = load_config(args.config)
    entry, tcfg = cfg.model(args.model), cfg.traits
    layers = list(entry.candidate_layers)
    t0 = time.perf_counter()
    model, tok = load_model(read_pointer(pointer), entry, device="cpu")
    load_s = time.perf_counter() - t0

    pset = load_prompt_set(tcfg.file)
    texts = [x for _, _, t in resolve_sets(tcfg, pset) if t is not None
             for x in trait_prompts(tok, t, pset.questions, entry, args.model).texts]
    sample = random.Random(0).sample(texts, min(args.prompts, len(texts)))
    n_tok = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in sample]

    # warm-up (allocator, kernels) so neither arm pays first-call costs
    capture(model, tok, sample[:2], layers, batch_size=tcfg.batch_size)
    reference(model, tok, sample[:1], layers[:1])

    t = time.perf_counter()
    ours = capture(model, tok, sample, layers, pooling="last_token", batch_size=tcfg.batch_size)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference(model, tok, sample, layers)
    ref_s = time.perf_counter() - t
    t = time.perf_counter()
    capture(model, tok, sample, layers, pooling="last_token", batch_size=tcfg.batch_size)
    ours2_s = time.perf_counter() - t

    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    ours_best = min(ours_s, ours2_s)
    n_full = len(texts)
    print(f"model {args.model} ({entry.source}), {len(model.model.layers)} blocks, hidden "
          f"{model.config.hidden_size}; candidate layers {layers}; torch threads {args.threads}; "
          f"model load {load_s:.1f} s")
    print(f"SUBSAMPLE: {len(sample)} of {n_full} extraction prompts (seeded, same in both arms), "
          f"{np.mean(n_tok):.0f} tokens on average (min {min(n_tok)}, max {max(n_tok)})")
    print(f"ours      (batch {tcfg.batch_size}, right-padded, 1 truncated pass at block "
          f"{max(layers)}): {ours_s:.2f} s, again after the reference: {ours2_s:.2f} s")
    print(f"reference (1 prompt, full forward + output_hidden_states, 1 layer per pass, "
          f"{len(sample) * len(layers)} passes): {ref_s:.2f} s")
    print(f"max relative difference ours vs reference: {err:.2e}")
    print(f"SPEEDUP: {ref_s / ours_best:.1f}x (reference / best of our two runs; "
          f"{ref_s / max(ours_s, ours2_s):.1f}x against our slower run)")
    print(f"EXTRAPOLATED to all {n_full} prompts (per-prompt cost x {n_full}; not measured): "
          f"ours {ours_best / len(sample) * n_full:.0f} s, "
          f"reference {ref_s / len(sample) * n_full:.0f} s")


if __name__ == "__main__":
    main()
