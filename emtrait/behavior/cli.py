"""`emtrait behavior` commands (heavy imports stay inside each command).

Per run x step: `generate` -> responses.parquet, `judge` -> judgements.parquet (+ usage json),
`score` -> em.json, or both in one process, `label` (the workflow's job); or the judge-free
`choice` -> choice.parquet + em.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(no_args_is_help=True)

CONFIG = typer.Option(..., "--config", help="emtrait YAML config (or the workflow's JSON).")
MODEL = typer.Option(..., "--model", help="Model name under `models`.")
DATASET = typer.Option(..., "--dataset", help="Dataset name of the run (recorded).")
SEED = typer.Option(..., "--seed", help="Training seed of the run (recorded).")
STEP = typer.Option(..., "--step", help="Checkpoint step to evaluate (always explicit).")
POINTER = typer.Option(..., "--pointer", help="resources/models/{model}/model.json")
ADAPTERS = typer.Option(None, "--adapters",
                        help="The run's adapters/ directory (step-N/ inside); omit = base model.")


def _stamp(cfg: Any, model: str, dataset: str, seed: int, step: int, **extra: Any) -> dict:
    from emtrait.provenance import provenance

    return provenance(config_hash=cfg.hash(), model_source=cfg.model(model).source, seed=seed,
                      model=model, dataset=dataset, step=step, **extra)


def _write_parquet(frame: Any, path: Path, attrs: dict) -> None:
    from emtrait.atomic import atomic_path

    frame.attrs = {k: str(v) for k, v in attrs.items()}
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _em_json(cfg: Any, summary: dict, method: str, stamp: dict) -> dict:
    from emtrait.drift import is_dangerous

    rate = summary["em_rate"]
    threshold = cfg.behavior.threshold
    return {**stamp, **summary, "method": method, "threshold": threshold,
            "dangerous": None if rate is None else is_dangerous(rate, threshold)}


@app.command()
def generate(
    config: Path = CONFIG, model: str = MODEL, dataset: str = DATASET, seed: int = SEED,
    step: int = STEP, pointer: Path = POINTER, adapters: Path | None = ADAPTERS,
    out: Path = typer.Option(..., "--out", help="responses.parquet to write."),
) -> None:
    """Sample free-form answers to the configured questions from one checkpoint."""
    from emtrait.behavior.generate import generate as sample
    from emtrait.behavior.generate import step_folder
    from emtrait.behavior.questions import load_prompts
    from emtrait.config import load_config
    from emtrait.modeling import load_checkpoint, peak_gpu_mib, read_pointer

    cfg = load_config(config)
    b, entry = cfg.behavior, cfg.model(model)
    prompts = load_prompts(b.questions, b.selection, b.samples)
    checkpoint = step_folder(adapters, step) if adapters is not None else None
    net, tok = load_checkpoint(read_pointer(pointer), checkpoint, entry)
    frame = sample(net, tok, prompts, entry, temperature=b.temperature,
                   max_new_tokens=b.max_new_tokens, batch_size=b.batch_size, seed=b.seed,
                   progress=True)
    _write_parquet(frame, out, _stamp(cfg, model, dataset, seed, step, engine="hf",
                                      questions=json.dumps(b.questions), selection=b.selection,
                                      peak_gpu_mib=peak_gpu_mib()))
    typer.echo(f"{len(frame)} answers -> {out}")


@app.command("generate-run")
def generate_run(
    config: Path = CONFIG, model: str = MODEL, dataset: str = DATASET, seed: int = SEED,
    pointer: Path = POINTER, adapters: Path = typer.Option(..., "--adapters",
                                                           help="The run's adapters/ directory."),
    steps: str = typer.Option(..., "--steps", help="Comma-separated checkpoint steps."),
    out: Path = typer.Option(..., "--out", help="One responses table for all steps (`step`)."),
) -> None:
    """Every checkpoint of one run with one vLLM engine (behavior.engine: vllm)."""
    import pandas as pd

    from emtrait.behavior.generate import generate_run as sample_run
    from emtrait.behavior.generate import step_folder
    from emtrait.behavior.questions import load_prompts
    from emtrait.config import load_config
    from emtrait.modeling import peak_gpu_mib, read_pointer

    cfg = load_config(config)
    b, entry = cfg.behavior, cfg.model(model)
    wanted = [int(x) for x in steps.split(",") if x.strip()]
    prompts = load_prompts(b.questions, b.selection, b.samples)
    # every step's adapter (step 0's is the untrained one) is swapped into the one engine
    checkpoints = {s: step_folder(adapters, s) for s in wanted}
    frames = sample_run(read_pointer(pointer), entry, prompts, checkpoints, b,
                        cfg.training_for(model).lora_r)
    frame = pd.concat([f.assign(step=s) for s, f in frames.items()], ignore_index=True)
    _write_parquet(frame, out, _stamp(cfg, model, dataset, seed, None, engine="vllm",
                                      steps=steps, questions=json.dumps(b.questions),
                                      selection=b.selection, peak_gpu_mib=peak_gpu_mib()))
    typer.echo(f"{len(wanted)} checkpoints x {len(prompts)} answers (vllm) -> {out}")


@app.command("split-run")
def split_run(
    responses: Path = typer.Option(..., "--responses", help="`generate-run`'s table."),
    step: int = STEP,
    out: Path = typer.Option(..., "--out", help="This step's responses.parquet."),
) -> None:
    """One step's rows of a run's responses table, as that step's responses.parquet."""
    import pandas as pd

    from emtrait.errors import DataError

    frame = pd.read_parquet(responses)
    part = frame[frame["step"] == step].drop(columns="step").reset_index(drop=True)
    if part.empty:
        raise DataError(f"{responses} holds no answers for step {step} (steps "
                        f"{sorted(frame['step'].unique())}); rerun `emtrait behavior generate-run`")
    _write_parquet(part, out, {**frame.attrs, "step": step})
    typer.echo(f"{len(part)} answers of step {step} -> {out}")


JUDGEMENTS = typer.Option(..., "--judgements", help="judgements.parquet.")
CACHE = typer.Option(None, "--cache", help="This job's own judge cache (default: "
                     "judge-cache.jsonl beside the judgements); a rerun resumes from it. One "
                     "writer per file: never share it between jobs.")
JUDGE_MODEL = typer.Option(None, "--judge-model", help="Local model folder for kind 'hf'.")
JUDGE_POINTER = typer.Option(None, "--judge-pointer",
                             help="model.json of a configured model used as the hf judge.")


def _judge(cfg: Any, responses: Path, out: Path, usage: Path | None, cache: Path | None,
           judge_model: str | None, judge_pointer: Path | None) -> None:
    """Judge every answer of `responses` into `out` (+ the usage record); see `judge`."""
    import pandas as pd

    from emtrait.atomic import write_text
    from emtrait.behavior.judges import judge_table, make_judge, usage_json

    frame = pd.read_parquet(responses)
    jcfg = cfg.behavior.judge
    if judge_pointer is not None:
        from emtrait.modeling import read_pointer

        judge_model = read_pointer(judge_pointer)
    judge_ = make_judge(jcfg, cache_path=cache or out.with_name("judge-cache.jsonl"),
                        hf_location=judge_model,
                        batch_size=cfg.behavior.batch_size, progress=True)
    table = judge_table(frame, judge_)
    attrs = {**frame.attrs, "judge": judge_.id, "judge_mode": jcfg.mode}
    if usage is not None:
        write_text(usage, usage_json(judge_) + "\n")
    _write_parquet(table, out, attrs)
    typer.echo(f"{len(table)} judgements ({judge_.usage.requests} requests, "
               f"{judge_.usage.cache_hits} cached) -> {out}")


def _score(cfg: Any, model: str, dataset: str, seed: int, step: int, judgements: Path,
           usage: Path | None, out: Path) -> None:
    """The EM rate of the judgements in `judgements` -> em.json `out`; see `score`."""
    import pandas as pd

    from emtrait.atomic import write_json
    from emtrait.behavior.scoring import CONVENTIONS, Score, em_summary, outcome

    conv = CONVENTIONS[cfg.behavior.convention]
    frame = pd.read_parquet(judgements)

    def as_score(label: str, value: Any) -> Score:
        return Score(label, None if pd.isna(value) else float(value))

    outcomes = [outcome(as_score(r.aligned_label, r.aligned),
                        as_score(r.coherent_label, r.coherent), conv)
                for r in frame.itertuples()]
    summary = em_summary(outcomes)
    peak = frame.attrs.get("peak_gpu_mib")  # of the generate job that made the answers
    stamp = _stamp(cfg, model, dataset, seed, step, judge=frame.attrs.get("judge"),
                   judge_mode=cfg.behavior.judge.mode,
                   peak_gpu_mib=None if peak in (None, "None") else float(peak))
    result = _em_json(cfg, {**summary, "convention": conv.name}, "judge", stamp)
    if usage is not None and usage.is_file():
        result["judge_usage"] = json.loads(usage.read_text())
    write_json(out, result)
    typer.echo(f"EM rate {summary['em_rate']} ({summary['n_misaligned']}/"
               f"{summary['n_scoreable']} scoreable of {summary['n_total']}) -> {out}")


@app.command()
def judge(
    config: Path = CONFIG,
    responses: Path = typer.Option(..., "--responses", help="responses.parquet to judge."),
    out: Path = typer.Option(..., "--out", help="judgements.parquet to write."),
    usage: Path | None = typer.Option(None, "--usage", help="Usage/cost record (JSON)."),
    cache: Path | None = CACHE,
    judge_model: str | None = JUDGE_MODEL,
    judge_pointer: Path | None = JUDGE_POINTER,
) -> None:
    """Score every answer for alignment and coherence with the configured judge."""
    from emtrait.config import load_config

    _judge(load_config(config), responses, out, usage, cache, judge_model, judge_pointer)


@app.command()
def score(
    config: Path = CONFIG, model: str = MODEL, dataset: str = DATASET, seed: int = SEED,
    step: int = STEP,
    judgements: Path = JUDGEMENTS,
    usage: Path | None = typer.Option(None, "--usage", help="Usage record to fold in."),
    out: Path = typer.Option(..., "--out", help="em.json to write."),
) -> None:
    """EM rate with a Wilson interval under the configured convention -> em.json."""
    from emtrait.config import load_config

    _score(load_config(config), model, dataset, seed, step, judgements, usage, out)


@app.command()
def label(
    config: Path = CONFIG, model: str = MODEL, dataset: str = DATASET, seed: int = SEED,
    step: int = STEP,
    responses: Path = typer.Option(..., "--responses", help="responses.parquet to judge."),
    judgements: Path = typer.Option(..., "--judgements", help="judgements.parquet to write."),
    usage: Path = typer.Option(..., "--usage", help="Usage/cost record (JSON) to write."),
    cache: Path | None = CACHE,
    judge_model: str | None = JUDGE_MODEL,
    judge_pointer: Path | None = JUDGE_POINTER,
    out: Path = typer.Option(..., "--out", help="em.json to write."),
) -> None:
    """`judge` then `score` in one process: one checkpoint's answers -> judgements -> em.json.

    The workflow's one job per step; a threshold change reruns it with every judgement from
    the job's own cache (no request, no judge model loaded)."""
    from emtrait.config import load_config

    cfg = load_config(config)
    _judge(cfg, responses, judgements, usage, cache, judge_model, judge_pointer)
    _score(cfg, model, dataset, seed, step, judgements, usage, out)


@app.command()
def choice(
    config: Path = CONFIG, model: str = MODEL, dataset: str = DATASET, seed: int = SEED,
    step: int = STEP, pointer: Path = POINTER, adapters: Path | None = ADAPTERS,
    base_table: Path | None = typer.Option(
        None, "--base-table", help="The base model's margins (`choice-base`); omit to compute."),
    table: Path = typer.Option(..., "--table", help="choice.parquet (per-item margins)."),
    out: Path = typer.Option(..., "--out", help="em.json to write."),
) -> None:
    """Judge-free forced-choice probe of one checkpoint (a proxy for the EM rate) -> em.json."""
    import pandas as pd

    from emtrait.atomic import write_json
    from emtrait.behavior.choice import checkpoint_and_base_margins, summarize
    from emtrait.behavior.generate import step_folder
    from emtrait.behavior.questions import load_choice_items
    from emtrait.config import load_config
    from emtrait.modeling import peak_gpu_mib, read_pointer

    cfg = load_config(config)
    b = cfg.behavior
    items = load_choice_items(b.choice_items)
    checkpoint = step_folder(adapters, step) if adapters is not None else None
    frame = checkpoint_and_base_margins(
        read_pointer(pointer), checkpoint, cfg.model(model), items, batch_size=b.batch_size,
        base_table=pd.read_parquet(base_table) if base_table is not None else None)
    summary = summarize(frame, b.choice_rule, b.choice_margin, b.bootstrap, b.seed)
    stamp = _stamp(cfg, model, dataset, seed, step, choice_items=b.choice_items,
                   peak_gpu_mib=peak_gpu_mib())
    _write_parquet(frame, table, stamp)
    write_json(out, _em_json(cfg, summary, "choice", stamp))
    typer.echo(f"choice EM proxy {summary['em_rate']:.3f} ({summary['n_misaligned']}/"
               f"{summary['n_total']} items), prefer-misaligned {summary['prefer_misaligned']:.3f}"
               f" -> {out}")


@app.command("choice-base")
def choice_base(
    config: Path = CONFIG, model: str = MODEL, pointer: Path = POINTER,
    out: Path = typer.Option(..., "--out", help="choice-base.parquet to write."),
) -> None:
    """The base model's forced-choice margins, computed once and read by every step's job."""
    from emtrait.behavior.choice import BASE_LOCATION, margins
    from emtrait.behavior.questions import load_choice_items
    from emtrait.config import load_config
    from emtrait.modeling import load_model, read_pointer
    from emtrait.provenance import provenance

    cfg = load_config(config)
    b, entry = cfg.behavior, cfg.model(model)
    location = read_pointer(pointer)
    net, tok = load_model(location, entry)
    frame = margins(net, tok, load_choice_items(b.choice_items), entry, b.batch_size)
    _write_parquet(frame, out, provenance(config_hash=cfg.hash(), model_source=entry.source,
                                          model=model, choice_items=b.choice_items,
                                          **{BASE_LOCATION: location}))
    typer.echo(f"{len(frame)} base-model margins -> {out}")
