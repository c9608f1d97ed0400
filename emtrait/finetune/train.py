"""One finetuning run (model × dataset × seed) with trait measurement at every checkpoint.

HF Trainer + PEFT LoRA (or full finetuning). A TrainerCallback measures the live weights at
step 0 (before the first update) and at each configured checkpoint step with
`emtrait.live.TraitProbe` (eval mode, no grad, a forward truncated after the deepest needed
block, then every module's mode is restored), so training is bit-identical with or without
measurement.

While running, everything lives in `<out>/.inprogress/` (Snakemake deletes declared outputs of
failed jobs, so resume state must sit beside them): `measure.zarr` grows one complete step per
checkpoint, `adapters/step-N/`, and the Trainer's own last checkpoint. A run started again after
a kill resumes from the last checkpoint that has all three; on success the store and adapters
move to `<out>/`, then `train_log.csv`, and `done.json` last.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait import atomic
from emtrait.config import checkpoint_steps, total_steps
from emtrait.errors import ModelError, StoreError
from emtrait.finetune.data import ChatDataset, RightPadCollator, encode_chats, read_chats
from emtrait.finetune.measure import (
    Directions,
    EvalPrompt,
    eval_prompts,
    format_prompts,
    read_directions,
    run_probe,
)
from emtrait.finetune.store import RunStore, step_dataset
from emtrait.modeling import linear_module_names, peak_gpu_mib, pick_device, read_pointer
from emtrait.provenance import provenance, stable_hash

if TYPE_CHECKING:
    from emtrait.config import Config

WORK = ".inprogress"


@dataclass
class RunPaths:
    out: Path

    @property
    def work(self) -> Path:
        return self.out / WORK

    @property
    def live_store(self) -> Path:
        return self.work / "measure.zarr"

    @property
    def live_adapters(self) -> Path:
        return self.work / "adapters"

    @property
    def trainer(self) -> Path:
        return self.work / "trainer"


@dataclass
class Timing:
    """Wall seconds per checkpoint: training since the previous one, saving, measuring."""

    train_s: list[float] = field(default_factory=list)
    save_s: list[float] = field(default_factory=list)
    measure_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


def _measurement_layers(cfg: Config, directions: Directions) -> list[int]:
    if cfg.measurement.layers == "candidates":
        return list(directions.layers)
    return [directions.layer]


def _losses_between(log_history: list[dict], after: int, upto: int) -> float:
    """Mean logged training loss over steps in (after, upto]; NaN if none was logged."""
    vals = [h["loss"] for h in log_history if "loss" in h and after < h["step"] <= upto]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def _load_for_training(cfg: Config, model_name: str, location: str):
    """Model + tokenizer in the training dtype, LoRA-wrapped unless full finetuning."""
    import torch

    from emtrait.modeling import load_model

    entry = cfg.model(model_name)
    training = cfg.training_for(model_name)
    device = pick_device()
    model, tok = load_model(location, entry, device="cpu")  # the Trainer moves it
    # precision 'auto' = bf16 on GPU (the paper), fp32 on CPU; LoRA weights stay fp32 (peft)
    bf16 = training.precision == "bf16" or (training.precision == "auto" and device != "cpu")
    model.to(torch.bfloat16 if bf16 else torch.float32)
    if training.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        available = linear_module_names(model)
        absent = [t for t in training.target_modules if t not in available]
        if absent:
            raise ModelError(
                f"LoRA target modules {absent} are not in {model_name}; its linear modules are "
                f"{available}. Set training.target_modules (or models.{model_name}.training."
                "target_modules) to names from that list"
            )
        model = get_peft_model(model, LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=training.lora_r, lora_alpha=training.lora_alpha,
            lora_dropout=training.lora_dropout, target_modules=list(training.target_modules),
        ))
    return model, tok


def _run_fingerprint(cfg: Config, model_name: str, dataset: str, seed: int,
                     directions: Directions, texts: list[str]) -> str:
    """Everything a run's numbers depend on: a resume only continues an identical run."""
    import hashlib

    vectors = hashlib.sha256(directions.vectors.tobytes()).hexdigest()
    return stable_hash({
        "directions": [vectors, directions.traits, directions.layers, directions.layer],
        "prompts": texts,
        "training": cfg.training_for(model_name).model_dump(mode="json", exclude={"report_to"}),
        "measurement": cfg.measurement.model_dump(mode="json"),
        "model": cfg.model(model_name).model_dump(mode="json"),
        "dataset": cfg.dataset(dataset).model_dump(mode="json"),
        "traits_file": cfg.traits.file, "seed": seed,
    })


def _resume_point(paths: RunPaths, fingerprint: str, planned: list[int]) -> int | None:
    """The last checkpoint whose Trainer state, adapter and measured step all exist, or None.

    Anything later (an interrupted checkpoint) is removed; an unusable work folder is cleared.
    """
    marker = paths.work / "run.json"
    if not paths.work.exists():
        return None
    try:
        same = json.loads(marker.read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        same = False
    store = RunStore(paths.live_store)
    try:
        measured = store.steps() if same else []
    except Exception:  # noqa: BLE001 - an unreadable partial store means: start over
        measured = []
    complete = [s for s in measured if s > 0 and s in planned
                and (paths.trainer / f"checkpoint-{s}" / "trainer_state.json").is_file()
                and (paths.live_adapters / f"step-{s}").is_dir()]
    if not complete:
        shutil.rmtree(paths.work, ignore_errors=True)
        return None
    last = max(complete)
    if measured[-1] != last:
        store.truncate(last)
    for d in paths.trainer.glob("checkpoint-*"):
        if d.name != f"checkpoint-{last}":
            shutil.rmtree(d, ignore_errors=True)
    for d in paths.live_adapters.glob("step-*"):
        if int(d.name.split("-", 1)[1]) > last:
            shutil.rmtree(d, ignore_errors=True)
    return last


def make_callback(*, steps: list[int], measure_fn, save_fn, store: RunStore,
                  attrs: dict[str, Any], timing: Timing, resumed: bool, traits: list[str]):
    """The TrainerCallback measuring at step 0 and each checkpoint (built lazily: heavy import)."""
    from transformers import TrainerCallback

    from emtrait.live.callback import drift_logs, log_through_trainer, trainer_handler

    class MeasureCallback(TrainerCallback):
        def __init__(self):
            self.handler = None  # the Trainer's CallbackHandler: readings reach report_to
            self.pending0 = None  # step 0 waits for the first logged loss (made before update 1)
            self.t_mark = time.perf_counter()
            self.t_step_end = self.t_mark
            self.prev_step = 0

        def _log_drift(self, args, state, control, full) -> None:
            """The newest stored step's drift, logged as the live monitor logs it."""
            row = full["drift"].isel(step=-1)
            log_through_trainer(self.handler, args, state, control, drift_logs(
                {str(t): float(v) for t, v in zip(row["trait"].values, row.values, strict=True)}))

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.handler = trainer_handler()
            if resumed:
                self.prev_step = state.global_step
            else:
                t0 = time.perf_counter()
                save_fn(model, 0)
                t1 = time.perf_counter()
                self.pending0 = measure_fn(model, 0)
                t2 = time.perf_counter()
                timing.steps.append(0)
                timing.train_s.append(0.0)
                timing.save_s.append(t1 - t0)
                timing.measure_s.append(t2 - t1)
                # drift at step 0 is zero by definition: dashboards start at the origin
                log_through_trainer(self.handler, args, state, control,
                                    drift_logs(dict.fromkeys(traits, 0.0)))
            self.t_mark = time.perf_counter()

        def _flush0(self, loss: float) -> None:
            if self.pending0 is not None:
                store.append(self.pending0(loss), attrs)
                self.pending0 = None

        def on_step_end(self, args, state, control, **kw):
            self.t_step_end = time.perf_counter()
            if state.global_step in steps:
                control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self._flush0(float(logs["loss"]))

        def on_save(self, args, state, control, model=None, **kw):
            step = state.global_step
            self._flush0(float("nan"))
            t0 = time.perf_counter()
            save_fn(model, step)
            t1 = time.perf_counter()
            make_row = measure_fn(model, step)
            t2 = time.perf_counter()
            loss = _losses_between(state.log_history, self.prev_step, step)
            self._log_drift(args, state, control, store.append(make_row(loss)))
            for d in Path(args.output_dir).glob("checkpoint-*"):
                if d.name != f"checkpoint-{step}":  # only the newest complete one is kept
                    shutil.rmtree(d, ignore_errors=True)
            timing.steps.append(step)
            timing.train_s.append(self.t_step_end - self.t_mark)
            timing.save_s.append(t0 - self.t_step_end + t1 - t0)
            timing.measure_s.append(t2 - t1)
            self.prev_step = step
            self.t_mark = time.perf_counter()

    return MeasureCallback()


def run_finetune(cfg: Config, model_name: str, dataset: str, seed: int, *, pointer: str | Path,
                 data: str | Path, directions_path: str | Path, out: str | Path,
                 measure: bool = True, callbacks: list | None = None) -> dict[str, Any]:
    """Finetune, measuring every checkpoint; returns the done.json content.

    `measure=False` trains with identical settings and no measurement (for the bit-identity
    test and benchmarks); `callbacks` are extra TrainerCallbacks.
    """
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    entry = cfg.model(model_name)
    training = cfg.training_for(model_name)
    n = cfg.dataset(dataset).n
    steps = checkpoint_steps(n, training)  # raises on steps beyond the run before anything loads
    last = total_steps(n, training)
    paths = RunPaths(Path(out))
    location = read_pointer(pointer)
    directions = read_directions(directions_path)
    prompts: list[EvalPrompt] = eval_prompts(cfg) if measure else []
    layers = _measurement_layers(cfg, directions)

    chats = read_chats(data, cfg.dataset(dataset), dataset)
    set_seed(seed)  # LoRA init and everything before the Trainer takes over
    model, tok = _load_for_training(cfg, model_name, location)
    items = encode_chats(tok, chats, entry, training, model_name, data)
    texts = format_prompts(tok, prompts, entry, model_name)
    from emtrait.modeling import check_layers

    check_layers(model, layers, model_name)
    if directions.vectors.shape[2] != model.config.hidden_size:
        raise StoreError(f"{directions_path}: directions have width {directions.vectors.shape[2]}"
                         f" but {model_name} has hidden size {model.config.hidden_size}")

    resume_at = None
    if measure:
        fingerprint = _run_fingerprint(cfg, model_name, dataset, seed, directions, texts)
        (paths.out / "done.json").unlink(missing_ok=True)
        resume_at = _resume_point(paths, fingerprint, steps)
        paths.work.mkdir(parents=True, exist_ok=True)
        atomic.write_json(paths.work / "run.json", {"fingerprint": fingerprint})

    store = RunStore(paths.live_store)
    attrs = provenance(config_hash=cfg.hash(), model_source=entry.source, seed=seed,
                       model=model_name, dataset=dataset, layer=directions.layer,
                       measured_layers=layers, n_prompts=len(prompts),
                       directions_prompt_hash=str(directions.attrs.get("prompt_hash", "")),
                       method=training.method, loss_on=training.loss_on,
                       checkpoint_steps=steps)
    probe = run_probe(cfg, tok, directions, prompts, texts, layers) if measure else None

    def measure_fn(live_model, step):
        m = probe.measure(live_model)
        # all-NaN activation chunks are not written: long runs keep only step 0's
        keep = not (training.keep_activations == "step0" and step > 0)
        return lambda loss: step_dataset(
            step, m, traits=directions.traits, trait_sets=directions.trait_sets,
            prompt_categories=[p.category for p in prompts], loss=loss,
            directions=directions.at(directions.layer), keep_activation=keep,
            layer_directions=directions.stack(m.layers))

    def save_fn(live_model, step):
        with atomic.atomic_path(paths.live_adapters / f"step-{step}", is_dir=True) as tmp:
            live_model.save_pretrained(tmp)
            if training.method == "full":
                tok.save_pretrained(tmp)

    timing = Timing()
    report_to = _report_to(training.report_to)
    use_bf16 = next(model.parameters()).dtype == torch.bfloat16
    scratch = None if measure else tempfile.mkdtemp(prefix="emtrait-unmeasured-")
    args = TrainingArguments(
        output_dir=scratch or str(paths.trainer), per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum, num_train_epochs=training.epochs,
        learning_rate=training.learning_rate, weight_decay=training.weight_decay,
        logging_steps=training.logging_steps, save_strategy="no", seed=seed,
        report_to=[r for r in report_to if r != "tensorboard"] or "none",
        bf16=use_bf16, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=pick_device() == "cpu", disable_tqdm=False,
    )
    cbs = list(callbacks or [])
    if measure and "tensorboard" in report_to:  # our writer: the Trainer's output_dir is scratch
        cbs.append(_tensorboard(paths.out / "tensorboard"))
    if measure:
        cbs.insert(0, make_callback(steps=steps, measure_fn=measure_fn, save_fn=save_fn,
                                    store=store, attrs=attrs, timing=timing,
                                    resumed=resume_at is not None,
                                    traits=directions.traits))
    trainer = Trainer(model=model, args=args, train_dataset=ChatDataset(items),
                      data_collator=RightPadCollator(tok.pad_token_id), callbacks=cbs)
    t_start = time.perf_counter()
    resume_dir = paths.trainer / f"checkpoint-{resume_at}" if resume_at else None
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    wall = time.perf_counter() - t_start
    if trainer.state.global_step != last:
        raise RuntimeError(f"Trainer ran {trainer.state.global_step} updates, emtrait planned "
                           f"{last}: the step arithmetic in emtrait.config is out of date")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        return {"model": trainer.model, "log_history": trainer.state.log_history, "wall_s": wall}
    if store.steps() != steps:
        raise StoreError(f"{paths.live_store} holds steps {store.steps()}, expected {steps}")
    return _finish(paths, trainer.state.log_history, timing, wall, attrs, steps)


def _report_to(names: list[str]) -> list[str]:
    """training.report_to resolved: 'auto' is TensorBoard when it is installed, else nothing."""
    import importlib.util

    if names in (["none"], []):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return list(names)


def _tensorboard(log_dir: Path):
    """transformers' TensorBoardCallback writing to `log_dir` (loss and emtrait/drift/*)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def _finish(paths: RunPaths, log_history: list[dict], timing: Timing, wall: float,
            attrs: dict[str, Any], steps: list[int]) -> dict[str, Any]:
    """Move the finished store and adapters into place; train_log.csv; done.json last."""
    from emtrait.finetune.store import publish_dir

    for name, live in (("measure.zarr", paths.live_store), ("adapters", paths.live_adapters)):
        target = paths.out / name
        if target.exists():
            publish_dir(live, target)
        else:
            live.rename(target)
    rows = [h for h in log_history if "loss" in h]
    keys = ["step", "epoch", "loss", "learning_rate", "grad_norm"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(paths.out / "train_log.csv", buf.getvalue())
    shutil.rmtree(paths.work, ignore_errors=True)
    done = {
        **{k: v for k, v in attrs.items() if k != "created"},
        "steps": steps, "wall_s": wall,
        "timing": {"steps": timing.steps, "train_s": timing.train_s, "save_s": timing.save_s,
                   "measure_s": timing.measure_s},
        "resumed": 0 not in timing.steps, "peak_gpu_mib": peak_gpu_mib(),
        **provenance(config_hash=attrs["config_hash"]),
    }
    atomic.write_json(paths.out / "done.json", done)
    return done
