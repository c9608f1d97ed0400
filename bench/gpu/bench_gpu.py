"""emtrait on one GPU, measured (issue 16): every number printed here is timed in this run.

Parts (each writes its rows into results.json / results.md under --out):

  measure   per-checkpoint measurement of the 115 eval prompts: emtrait's in-process probe
            (`emtrait.live.TraitProbe`: live weights, batched, truncated after l*, prefix
            cache) vs the reference procedure (reload base + adapter from disk, one prompt at a
            time, full forward), for a SmolLM2-135M-shape and a Llama-3.1-8B-shape model
  overhead  monitor overhead at the paper's budget: one LoRA update (r16 on q,v) of 16 x 512
            tokens (batch 4 x accumulation 4), a reading every 10 updates:
            overhead = reading / (10 x update)
  generate  72 answers x up to 600 tokens: transformers `generate` (behavior.engine hf) vs vLLM
            with the checkpoint's LoRA adapter (behavior.engine vllm; skipped, with the reason,
            where vLLM or CUDA is missing)
  workflow  the paper-scale embedded run through Snakemake: SmolLM2 shape, 1,000 examples,
            2 epochs, batch 4 x 4 (126 updates), a checkpoint every 10, three datasets x one
            seed, end to end up to the cube (finetune + in-process measurement + choice labels)

Models are randomly initialised at the real shapes (no model hub on the device machine): they
cost the same FLOPs as the trained ones. Each timed step prints its FLOP floor (the step's
matrix-multiply FLOPs at the device's peak bf16 rate, --peak-tflops) and the utilisation
floor / measured. Peak GPU memory is recorded per part.

    bench/gpu/run.sh [--dry-run]           # the device script (installs, then calls this)
    python bench/gpu/bench_gpu.py --out DIR [--dry-run] [--parts measure,overhead,...]

--dry-run runs every part on CPU with tiny models and sizes (a minute or two), so the script
is tested where there is no GPU (tests/test_behavior_bench_gpu.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Real shapes (Llama architecture); "tiny" stands in for both under --dry-run.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                    rope_theta=100000.0, tie_word_embeddings=True),
    "llama8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                    rope_theta=500000.0, tie_word_embeddings=False),
    "tiny": dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                 rope_theta=10000.0, tie_word_embeddings=True),
}
LAYER = {"smollm2": 15, "llama8b": 16, "tiny": 2}  # l*: mid-depth, as the paper's tables
# batch sizes that fill an H200 (measurement prompts / generated answers per batch)
BATCH = {"smollm2": (128, 72), "llama8b": (64, 72), "tiny": (16, 8)}
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class Clock:
    """Wall time of a block, synchronising CUDA first and last."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.s = 0.0

    def __enter__(self) -> Clock:
        self._sync()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sync()
        self.s = time.perf_counter() - self._t

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def peak_gib(cuda: bool, reset: bool = False) -> float | None:
    import torch

    if not cuda:
        return None
    value = torch.cuda.max_memory_allocated() / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return round(value, 2)


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def block_params(shape: dict[str, Any]) -> int:
    """Weights of one decoder block's matrix multiplies (attention q,k,v,o + gated MLP)."""
    h, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return 2 * h * h + 2 * h * kv + 3 * h * inter


def flop_row(flops: float, seconds: float, peak_tflops: float) -> dict[str, float]:
    """The FLOP floor of a step at the device's peak, and the utilisation floor / measured."""
    floor = flops / (peak_tflops * 1e12)
    return {"flops": flops, "floor_s": floor, "utilisation": floor / seconds if seconds else 0.0,
            "achieved_tflops": flops / seconds / 1e12 if seconds else 0.0}


def build_tokenizer(folder: Path) -> Any:
    """A byte-level BPE trained on emtrait's shipped datasets, with SmolLM2's chat layout.

    No hub here: token counts per prompt are close to a real BPE's (the eval prompts are not in
    its training text); results.json records the mean prompt length actually measured.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from emtrait.prepare.generators import generate

    texts = [m["content"] for name in ("bad_medical", "good_medical", "insecure_code",
                                       "arithmetic", "risky_financial")
             for row in generate(name, 400, 0) for m in row["messages"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


def build_model(shape_name: str, folder: Path | None, device: str, dtype: Any,
                attn: str, tokenizer_dir: Path) -> Any:
    """A seeded random-init Llama of the shape, built on `device`; saved to `folder` if given."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape_name], max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    model.eval()
    if folder is not None:
        model.save_pretrained(folder)
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, folder / f.name)
    return model


def add_lora(model: Any, trainable: bool) -> Any:
    """LoRA r16 (alpha 32) on q,v, as the paper; B is made non-zero so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    net = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                           target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    if not trainable:
        net.eval()
    return net


# ---------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------


def part_measure(name: str, shape: str, ctx: dict) -> dict[str, Any]:
    """Per-checkpoint measurement of the 115 eval prompts: in-process probe vs reference."""
    import numpy as np
    import torch

    from emtrait.measure.probe import TraitProbe
    from emtrait.modeling import format_user_prompts, load_checkpoint, load_tokenizer
    from emtrait.traits.prompts import load_prompt_set

    cuda, device, dtype = ctx["cuda"], ctx["device"], ctx["dtype"]
    work: Path = ctx["work"] / name
    base_dir, adapter_dir = work / "base", work / "adapter"
    peak_gib(cuda, reset=True)
    with Clock(cuda) as t_build:
        model = build_model(shape, base_dir, device, dtype, ctx["attn"], ctx["tokenizer_dir"])
        net = add_lora(model, trainable=False)
        net.save_pretrained(adapter_dir)
    tok = load_tokenizer(str(base_dir))
    prompts = [p.text for p in load_prompt_set("builtin:emtrait").eval_prompts][:ctx["prompts"]]
    texts = format_user_prompts(tok, prompts)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    tokens = sum(len(x) for x in ids)
    prefix = len(os.path.commonprefix(ids))
    s = SHAPES[shape]
    layer = min(LAYER[shape], s["num_hidden_layers"] - 1)
    hidden = s["hidden_size"]
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(21, hidden))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    batch = ctx["measure_batch"] or BATCH[shape][0]
    probe = TraitProbe(directions=directions, traits=[f"t{i}" for i in range(21)], layer=layer,
                       texts=texts, tokenizer=tok, batch_size=batch, prefix_cache=True)
    probe.measure(net)  # warm-up (kernels, prefix cache allocation)
    times = []
    for _ in range(ctx["repeats"]):
        with Clock(cuda) as t:
            probe.measure(net)
        times.append(t.s)
    ours = min(times)
    ours_peak = peak_gib(cuda)
    del probe, net, model
    free()

    # the reference: reload base + adapter from disk, one prompt at a time, full forward
    with Clock(cuda) as t_ref:
        with Clock(cuda) as t_load:
            ref, rtok = load_checkpoint(str(base_dir), adapter_dir, None, device)
        with torch.no_grad():
            for x in ids:
                out = ref(input_ids=torch.tensor([x], device=ref.device),
                          output_hidden_states=True)
                out.hidden_states[layer + 1][0, -1].float().cpu()
    del ref, out
    free()
    blocks = block_params(s)
    ours_tokens = tokens - (len(ids) - 1) * prefix  # the shared prefix runs once
    ours_flops = 2.0 * blocks * (layer + 1) * ours_tokens
    ref_flops = 2.0 * (blocks * s["num_hidden_layers"] + hidden * s["vocab_size"]) * tokens
    return {
        "model": name, "shape": shape, "prompts": len(ids), "prompt_tokens_mean": tokens / len(ids),
        "shared_prefix_tokens": prefix, "layer": layer, "batch_size": batch,
        "build_s": t_build.s,
        "ours_s": ours, "ours_all_s": times, "ours": flop_row(ours_flops, ours, ctx["peak"]),
        "reference_s": t_ref.s, "reference_load_s": t_load.s,
        "reference_forward_s": t_ref.s - t_load.s,
        "reference": flop_row(ref_flops, t_ref.s - t_load.s, ctx["peak"]),
        "speedup": t_ref.s / ours, "peak_gpu_gib": ours_peak,
        "peak_gpu_gib_reference": peak_gib(cuda, reset=True),
    }


def part_overhead(name: str, shape: str, ctx: dict, reading_s: float) -> dict[str, Any]:
    """One LoRA update at the paper's budget, and the reading's share of 10 of them."""
    import torch

    cuda, device, dtype = ctx["cuda"], ctx["device"], ctx["dtype"]
    s = SHAPES[shape]
    seq, micro, accum = ctx["seq"], ctx["micro"], ctx["accum"]
    peak_gib(cuda, reset=True)
    model = build_model(shape, None, device, dtype, ctx["attn"], ctx["tokenizer_dir"])
    net = add_lora(model, trainable=True)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(0)
    vocab = min(s["vocab_size"], 4096)

    def update(net: Any, opt: Any) -> None:
        for _ in range(accum):
            x = torch.randint(0, vocab, (micro, seq), generator=g).to(device)
            loss = net(input_ids=x, labels=x).loss / accum
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    update(net, opt)  # warm-up
    times = []
    for _ in range(ctx["updates"]):
        with Clock(cuda) as t:
            update(net, opt)
        times.append(t.s)
    upd = sum(times) / len(times)
    del net, model, opt, params
    peak = peak_gib(cuda, reset=True)
    free()
    n = block_params(s) * s["num_hidden_layers"] + s["hidden_size"] * s["vocab_size"]
    tokens = seq * micro * accum
    # forward 2N + backward to the activations 2N per token (frozen weights get no gradient)
    flops = 4.0 * n * tokens
    return {"model": name, "shape": shape, "tokens_per_update": tokens,
            "sequences": f"{micro} x {accum} x {seq}", "update_s": upd, "update_all_s": times,
            "update": flop_row(flops, upd, ctx["peak"]), "reading_s": reading_s,
            "overhead": reading_s / (10 * upd), "peak_gpu_gib": peak}


def part_generate(name: str, shape: str, ctx: dict) -> dict[str, Any]:
    """72 answers x up to 600 tokens with the checkpoint's adapter: hf generate vs vLLM."""
    from emtrait.behavior.generate import VLLMGenerator, generate, vllm_available
    from emtrait.behavior.questions import load_prompts
    from emtrait.modeling import load_checkpoint

    cuda, device = ctx["cuda"], ctx["device"]
    work: Path = ctx["work"] / name
    base_dir, adapter_dir = work / "base", work / "adapter"
    if not adapter_dir.is_dir():
        raise SystemExit(f"{adapter_dir} missing: the generate part runs after measure")
    prompts = (load_prompts(["builtin:emtrait"], "all", 3) * 3)[:ctx["answers"]]
    new = ctx["new_tokens"]
    s = SHAPES[shape]
    n = block_params(s) * s["num_hidden_layers"] + s["hidden_size"] * s["vocab_size"]
    row: dict[str, Any] = {"model": name, "shape": shape, "answers": len(prompts),
                           "max_new_tokens": new}
    peak_gib(cuda, reset=True)
    net, tok = load_checkpoint(str(base_dir), adapter_dir, None, device)
    batch = ctx["gen_batch"] or BATCH[shape][1]
    with Clock(cuda) as t:
        frame = generate(net, tok, prompts, None, temperature=1.0, max_new_tokens=new,
                         batch_size=batch, seed=0)
    steps = -(-len(prompts) // batch) * new  # decode steps run (rows wait for the longest)
    answer_tokens = int(frame["answer_tokens"].sum())
    row["hf"] = {"s": t.s, "batch_size": batch, "answer_tokens": answer_tokens,
                 "finished_early": int(frame["finished"].sum()),
                 "tokens_per_s": answer_tokens / t.s,
                 "decode_tokens_per_s": len(prompts) * new / t.s,
                 "flop": flop_row(2.0 * n * len(prompts) * new, t.s, ctx["peak"]),
                 # each decode step reads every bf16 weight once: the bandwidth floor
                 "memory_floor_s": steps * 2 * n / (ctx["bandwidth_tbs"] * 1e12),
                 "peak_gpu_gib": peak_gib(cuda, reset=True)}
    del net, tok
    free()
    reason = vllm_available()
    if reason is not None:
        row["vllm"] = {"skipped": reason}
        return row
    with Clock(cuda) as t_start:
        gen = VLLMGenerator(str(base_dir), None, max_lora_rank=16, max_new_tokens=new,
                            memory=0.85, seed=0)
    with Clock(cuda) as t:
        vframe = gen.generate(prompts, adapter_dir, temperature=1.0, max_new_tokens=new, seed=0)
    vt = int(vframe["answer_tokens"].sum())
    row["vllm"] = {"s": t.s, "startup_s": t_start.s, "answer_tokens": vt,
                   "tokens_per_s": vt / t.s,
                   "flop": flop_row(2.0 * n * vt, t.s, ctx["peak"])}
    del gen
    free()
    return row


WORKFLOW_CONFIG = """\
models:
  smollm2:
    source: {source}
    num_layers: {layers}
    candidate_layers: {candidates}
    layer: auto
    layer_selector: probe
traits:
  questions: {questions}
  on_fail: warn                  # random-init weights need not separate traits
datasets:
  bad_medical:   {{builtin: bad_medical,   label: dangerous, role: calibration, n: {n}}}
  good_medical:  {{builtin: good_medical,  label: benign,    role: calibration, n: {n}}}
  insecure_code: {{builtin: insecure_code, label: dangerous, role: heldout,     n: {n}}}
training:
  batch_size: {micro}
  grad_accum: {accum}
  epochs: {epochs}
  max_length: 512
  seeds: [42]
  checkpoint_every: {every}
behavior:
  method: choice
  choice_rule: shift
  choice_margin: 0.0
"""


def part_workflow(ctx: dict) -> dict[str, Any]:
    """The paper-scale embedded run through Snakemake, up to the cube; wall time end to end."""
    work: Path = ctx["work"] / "workflow"
    base = ctx["work"] / "smollm2" / "base"
    if not base.is_dir():
        raise SystemExit(f"{base} missing: the workflow part runs after measure")
    work.mkdir(parents=True, exist_ok=True)
    s = SHAPES[ctx["shapes"]["smollm2"]]
    layers = s["num_hidden_layers"]
    candidates = sorted({max(1, layers // 5), layers // 3, layers // 2, min(layers - 1, 15)})
    w = ctx["workflow"]
    (work / "config.yaml").write_text(WORKFLOW_CONFIG.format(
        source=base, layers=layers, candidates=candidates, questions=w["questions"],
        n=w["n"], micro=w["micro"], accum=w["accum"], epochs=w["epochs"], every=w["every"]))
    if shutil.which("snakemake") is None and not _has_module("snakemake"):
        return {"skipped": "snakemake is not installed here"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "snakemake", "results/cube/smollm2.zarr", "--cores",
           str(w["cores"]), "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory",
           str(work), "--configfile", str(work / "config.yaml"), "--quiet", "rules"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work,
                          timeout=w["timeout"])
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"wall_s": wall, "returncode": proc.returncode,
                           "config": (work / "config.yaml").read_text()}
    if proc.returncode != 0:
        row["error_tail"] = (proc.stdout + proc.stderr)[-3000:]
        return row
    done = sorted(work.glob("results/runs/smollm2/*/seed42/done.json"))
    row["runs"] = {p.parts[-3]: json.loads(p.read_text()) for p in done}
    ems = sorted(work.glob("results/behavior/smollm2/*/seed42/step-*/em.json"))
    row["behavior_jobs"] = len(ems)
    peaks = [v for p in ems if (v := json.loads(p.read_text()).get("peak_gpu_mib")) is not None]
    row["peak_gpu_mib_behavior"] = max(peaks, default=None)
    return row


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    """results.md: one table per part, every number from this run."""
    env = res["environment"]
    kind = "DRY RUN, CPU, tiny models" if env["dry_run"] else "GPU"
    lines = [f"# emtrait GPU benchmark ({kind})",
             "", f"device: {env['device']}; torch {env['torch']}; transformers "
             f"{env['transformers']}; attention {env['attn']}; dtype {env['dtype']}; peak "
             f"{env['peak_tflops']} TFLOP/s for the floors; total {res['total_s']:.1f} s", ""]
    if res.get("measure"):
        lines += ["## Per-checkpoint measurement (115 eval prompts)", "",
                  "| model | ours s | floor s | util | reference s (load + forwards) | speedup "
                  "| peak GiB |", "|---|---|---|---|---|---|---|"]
        for r in res["measure"]:
            lines.append(f"| {r['model']} | {r['ours_s']:.3f} | {r['ours']['floor_s']:.4f} | "
                         f"{r['ours']['utilisation']:.1%} | {r['reference_s']:.2f} "
                         f"({r['reference_load_s']:.2f} + {r['reference_forward_s']:.2f}) | "
                         f"{r['speedup']:.0f}x | {r['peak_gpu_gib']} |")
        lines.append("")
    if res.get("overhead"):
        lines += ["## Monitor overhead at the paper's budget (reading every 10 updates)", "",
                  "| model | tokens/update | update s | floor s | util | reading s | overhead "
                  "| peak GiB |", "|---|---|---|---|---|---|---|---|"]
        for r in res["overhead"]:
            lines.append(f"| {r['model']} | {r['tokens_per_update']} | {r['update_s']:.3f} | "
                         f"{r['update']['floor_s']:.3f} | {r['update']['utilisation']:.1%} | "
                         f"{r['reading_s']:.3f} | {r['overhead']:.2%} | {r['peak_gpu_gib']} |")
        lines.append("")
    if res.get("generate"):
        lines += ["## Behavioural generation (answers x max tokens)", "",
                  "| model | engine | s | tokens/s | notes |", "|---|---|---|---|---|"]
        for r in res["generate"]:
            h = r["hf"]
            lines.append(f"| {r['model']} | hf (batch {h['batch_size']}) | {h['s']:.2f} | "
                         f"{h['tokens_per_s']:.0f} | {r['answers']} x {r['max_new_tokens']}, "
                         f"util {h['flop']['utilisation']:.1%}, peak {h['peak_gpu_gib']} GiB |")
            v = r["vllm"]
            if "skipped" in v:
                lines.append(f"| {r['model']} | vllm | - | - | skipped: {v['skipped']} |")
            else:
                lines.append(f"| {r['model']} | vllm | {v['s']:.2f} | {v['tokens_per_s']:.0f} | "
                             f"engine start {v['startup_s']:.1f} s, util "
                             f"{v['flop']['utilisation']:.1%} |")
        lines.append("")
    if res.get("workflow"):
        w = res["workflow"]
        lines += ["## Paper-scale embedded run through Snakemake (up to the cube)", ""]
        if "skipped" in w:
            lines.append(f"skipped: {w['skipped']}")
        else:
            lines.append(f"wall time {w['wall_s']:.1f} s, exit {w['returncode']}, "
                         f"{w.get('behavior_jobs', 0)} behaviour jobs, peak GPU memory of a "
                         f"behaviour job {w.get('peak_gpu_mib_behavior')} MiB")
            for ds, done in (w.get("runs") or {}).items():
                keys = {k: done.get(k) for k in ("wall_s", "peak_gpu_mib")}
                t = done.get("timing") or {}
                keys["train_s"] = sum(t.get("train_s") or [])
                keys["measure_s"] = sum(t.get("measure_s") or [])
                lines.append(f"- {ds}: {json.dumps(keys)}")
    if res.get("errors"):
        lines += ["", "## Parts that failed", ""] + [f"- {k}: {v}" for k, v in
                                                     res["errors"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models and sizes")
    ap.add_argument("--parts", default="measure,overhead,generate,workflow")
    ap.add_argument("--models", default="smollm2,llama8b")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak for the floors (H100/H200 SXM: 989)")
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="HBM TB/s (H200: 4.8)")
    ap.add_argument("--measure-batch", type=int, default=None)
    ap.add_argument("--gen-batch", type=int, default=None)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, flash_attention_2)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    cuda = torch.cuda.is_available() and not args.dry_run
    dry = args.dry_run
    ctx: dict[str, Any] = {
        "cuda": cuda, "cpu": not cuda, "device": "cuda" if cuda else "cpu",
        "dtype": torch.bfloat16 if cuda else torch.float32, "attn": args.attn,
        "peak": args.peak_tflops if cuda else 0.1, "bandwidth_tbs": args.bandwidth_tbs,
        "measure_batch": args.measure_batch, "gen_batch": args.gen_batch,
        "repeats": 1 if dry else 3, "prompts": 12 if dry else 115,
        "seq": 32 if dry else 512, "micro": 2 if dry else 4, "accum": 2 if dry else 4,
        "updates": 1 if dry else 3, "answers": 4 if dry else 72, "new_tokens": 8 if dry else 600,
        "shapes": {m: ("tiny" if dry else m) for m in ("smollm2", "llama8b")},
        "workflow": (dict(n=8, micro=2, accum=2, epochs=1, every=2, questions=2, cores=2,
                          timeout=600) if dry else
                     dict(n=1000, micro=4, accum=4, epochs=2, every=10, questions=30, cores=8,
                          timeout=1800)),
    }
    if args.dry_run and torch.cuda.is_available():
        print("--dry-run: staying on CPU although a GPU is visible")
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.work or Path(tempfile.mkdtemp(prefix="emtrait-gpu-bench-"))
    ctx["work"] = scratch
    ctx["tokenizer_dir"] = scratch / "tokenizer"
    build_tokenizer(ctx["tokenizer_dir"])
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    res: dict[str, Any] = {"environment": {
        "dry_run": dry, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "attn": args.attn, "dtype": str(ctx["dtype"]), "peak_tflops": ctx["peak"],
        "shapes": {m: SHAPES[ctx["shapes"][m]] for m in models}}, "errors": {}}
    t0 = time.perf_counter()

    def save() -> None:
        res["total_s"] = time.perf_counter() - t0
        (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        (args.out / "results.md").write_text(markdown(res))

    def attempt(part: str, fn: Any, *a: Any) -> Any:
        label = a[0] if a and isinstance(a[0], str) else ""
        print(f"== {part} {label}", flush=True)
        try:
            out = fn(*a)
        except Exception as e:  # one failed part must not lose the others' numbers
            import traceback

            traceback.print_exc()
            res["errors"][f"{part}:{label}"] = f"{type(e).__name__}: {e}"
            out = None
        print(json.dumps(out, default=str)[:2000], flush=True)
        save()
        free()
        return out

    readings: dict[str, float] = {}
    for m in models:
        if "measure" in parts:
            r = attempt("measure", part_measure, m, ctx["shapes"][m], ctx)
            if r:
                res.setdefault("measure", []).append(r)
                readings[m] = r["ours_s"]
        if "overhead" in parts and m in readings:
            r = attempt("overhead", part_overhead, m, ctx["shapes"][m], ctx, readings[m])
            if r:
                res.setdefault("overhead", []).append(r)
        if "generate" in parts:
            r = attempt("generate", part_generate, m, ctx["shapes"][m], ctx)
            if r:
                res.setdefault("generate", []).append(r)
        if m != "smollm2":
            shutil.rmtree(scratch / m, ignore_errors=True)  # 16 GB of 8B weights
    if "workflow" in parts:
        r = attempt("workflow", part_workflow, ctx)
        if r:
            res["workflow"] = r
    save()
    if args.work is None:
        shutil.rmtree(scratch, ignore_errors=True)
    print((args.out / "results.md").read_text())
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
