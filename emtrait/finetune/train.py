"""One finetuning run (model × dataset × seed) with trait measurement at every checkpoint.

HF Trainer + PEFT LoRA (or full finetuning). The public `emtrait.live.MonitorCallback`, in its
record-only mode, measures the live weights at step 0 (before the first update) and at each
configured checkpoint step with `emtrait.measure.probe.TraitProbe` (eval mode, no grad, a forward
truncated after the deepest needed block, then every module's mode is restored), so training is
bit-identical with or without measurement.

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
from emtrait.chats import ChatDataset, RightPadCollator, encode_chats, read_chats
from emtrait.config import checkpoint_steps, total_steps
from emtrait.errors import ModelError, StoreError
from emtrait.measure.inputs import (
    Directions,
    EvalPrompt,
    eval_prompts,
    format_prompts,
    read_directions,
    run_probe,
)
from emtrait.measure.store import RunStore
from emtrait.modeling import linear_module_names, peak_gpu_mib, pick_device, read_pointer
from emtrait.provenance import provenance, stable_hash

if TYPE_CHECKING:
    from emtrait.config import Config
    from emtrait.live.callback import MonitorCallback

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
    """Wall seconds per reading: training since the previous reading ended (the Trainer's own
    checkpoint save included), saving the adapters, measuring."""

    train_s: list[float] = field(default_factory=list)
    save_s: list[float] = field(default_factory=list)
    measure_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


def _measurement_layers(cfg: Config, directions: Directions) -> list[int]:
    if cfg.measurement.layers == "candidates":
        return list(directions.layers)
    return [directions.layer]


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
    """The last checkpoint whose Trainer state (with the recorder's state file), adapter and
    measured step all exist, or None.

    Anything later (an interrupted checkpoint) is removed; an unusable work folder is cleared.
    """
    from emtrait.live.callback import STATE_FILE

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
                and (paths.trainer / f"checkpoint-{s}" / STATE_FILE).is_file()
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


def run_finetune(cfg: Config, model_name: str, dataset: str, seed: int, *, pointer: str | Path,
                 data: str | Path, directions_path: str | Path, out: str | Path,
                 measure: bool = True, callbacks: list | None = None) -> dict[str, Any]:
    """Finetune, measuring every checkpoint; returns the done.json content.

    `measure=False` trains with identical settings and no measurement (for the bit-identity
    test and benchmarks); `callbacks` are extra TrainerCallbacks.
    """
    from transformers import Trainer, set_seed

    training = cfg.training_for(model_name)
    n = cfg.dataset(dataset).n
    steps = checkpoint_steps(n, training)  # raises on steps beyond the run before anything loads
    last = total_steps(n, training)
    paths = RunPaths(Path(out))
    directions = read_directions(directions_path)
    prompts: list[EvalPrompt] = eval_prompts(cfg) if measure else []
    layers = _measurement_layers(cfg, directions)

    chats = read_chats(data, cfg.dataset(dataset), dataset)
    set_seed(seed)  # LoRA init and everything before the Trainer takes over
    model, tok = _load_for_training(cfg, model_name, read_pointer(pointer))
    items = encode_chats(tok, chats, cfg.model(model_name), training, model_name, data)
    texts = format_prompts(tok, prompts, cfg.model(model_name), model_name)
    _check_directions(model, model_name, layers, directions, directions_path)

    scratch = None if measure else tempfile.mkdtemp(prefix="emtrait-unmeasured-")
    args, report_to = _training_args(training, seed, model, scratch or str(paths.trainer))
    cbs = list(callbacks or [])
    resume_at, recorder, saves = None, None, None
    if measure:
        fingerprint = _run_fingerprint(cfg, model_name, dataset, seed, directions, texts)
        (paths.out / "done.json").unlink(missing_ok=True)
        resume_at = _resume_point(paths, fingerprint, steps)
        paths.work.mkdir(parents=True, exist_ok=True)
        atomic.write_json(paths.work / "run.json", {"fingerprint": fingerprint})
        if "tensorboard" in report_to:  # our writer: the Trainer's output_dir is scratch
            cbs.append(_tensorboard(paths.out / "tensorboard"))
        saves = _AdapterSaver(paths, training.method, tok)
        attrs = _store_attrs(cfg, model_name, dataset, seed, directions, layers, prompts, steps)
        recorder = _recorder(run_probe(cfg, tok, directions, prompts, texts, layers), attrs,
                             directions, layers, prompts, training.keep_activations, paths,
                             steps, saves)
        cbs.insert(0, recorder)
        cbs.append(_drop_older_checkpoints())  # after the recorder's on_save
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
    store = RunStore(paths.live_store)
    if store.steps() != steps:
        raise StoreError(f"{paths.live_store} holds steps {store.steps()}, expected {steps}")
    timing = saves.timing(recorder, t_start)
    return _finish(paths, trainer.state.log_history, timing, wall, recorder.record.attrs, steps)


def _recorder(probe: Any, attrs: dict[str, Any], directions: Directions, layers: list[int],
              prompts: list[EvalPrompt], keep_activations: str, paths: RunPaths,
              steps: list[int], saves: _AdapterSaver) -> MonitorCallback:
    """The one TrainerCallback, record-only: the probe's readings (at every measured layer) at
    step 0 and every checkpoint into the run store, the adapters saved before each."""
    from emtrait.live.callback import MonitorCallback, RunRecord

    record = RunRecord(attrs=attrs, prompt_categories=[p.category for p in prompts],
                       trait_sets=directions.trait_sets, directions=directions.at(directions.layer),
                       keep_activations=keep_activations, layer_directions=directions.stack(layers))
    return MonitorCallback.recording(probe, record, store=paths.live_store, steps=steps,
                                     before_reading=saves)


def _check_directions(model: Any, model_name: str, layers: list[int], directions: Directions,
                      path: str | Path) -> None:
    """The measured blocks exist and the directions have the model's width."""
    from emtrait.modeling import check_layers

    check_layers(model, layers, model_name)
    if directions.vectors.shape[2] != model.config.hidden_size:
        raise StoreError(f"{path}: directions have width {directions.vectors.shape[2]}"
                         f" but {model_name} has hidden size {model.config.hidden_size}")


def _store_attrs(cfg: Config, model_name: str, dataset: str, seed: int, directions: Directions,
                 layers: list[int], prompts: list[EvalPrompt], steps: list[int]
                 ) -> dict[str, Any]:
    """The run store's attrs (and done.json's header): what the run was and how it was read."""
    training = cfg.training_for(model_name)
    return provenance(config_hash=cfg.hash(), model_source=cfg.model(model_name).source,
                      seed=seed, model=model_name, dataset=dataset, layer=directions.layer,
                      measured_layers=layers, n_prompts=len(prompts),
                      directions_prompt_hash=str(directions.attrs.get("prompt_hash", "")),
                      method=training.method, loss_on=training.loss_on, checkpoint_steps=steps)


def _training_args(training: Any, seed: int, model: Any, output_dir: str) -> tuple[Any, list]:
    """The Trainer's arguments (saves are forced at the checkpoint steps by the recorder; only
    the newest Trainer checkpoint is kept) and the resolved `report_to`."""
    import torch
    from transformers import TrainingArguments

    report_to = _report_to(training.report_to)
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum, num_train_epochs=training.epochs,
        learning_rate=training.learning_rate, weight_decay=training.weight_decay,
        logging_steps=training.logging_steps, save_strategy="no", seed=seed,  # rotation: below
        report_to=[r for r in report_to if r != "tensorboard"] or "none",
        bf16=next(model.parameters()).dtype == torch.bfloat16, remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=pick_device() == "cpu", disable_tqdm=False,
    )
    return args, report_to


class _AdapterSaver:
    """Saves the adapters (full finetuning: the model and tokenizer) before each reading, and
    times it: the recorder's `before_reading`."""

    def __init__(self, paths: RunPaths, method: str, tok: Any):
        self.paths, self.method, self.tok = paths, method, tok
        self.marks: list[tuple[int, float, float]] = []  # (step, start, end) of each save

    def __call__(self, live_model: Any, step: int) -> None:
        t0 = time.perf_counter()
        with atomic.atomic_path(self.paths.live_adapters / f"step-{step}", is_dir=True) as tmp:
            live_model.save_pretrained(tmp)
            if self.method == "full":
                self.tok.save_pretrained(tmp)
        self.marks.append((step, t0, time.perf_counter()))

    def timing(self, recorder: MonitorCallback, t_start: float) -> Timing:
        """Per reading: training since the previous reading ended, saving, measuring."""
        timing = Timing()
        done = t_start
        for (step, t0, t1), measure_s in zip(self.marks, recorder.measure_s, strict=True):
            timing.steps.append(step)
            timing.train_s.append(0.0 if step == 0 else t0 - done)
            timing.save_s.append(t1 - t0)
            timing.measure_s.append(measure_s)
            done = t1 + measure_s
        return timing


def _report_to(names: list[str]) -> list[str]:
    """training.report_to resolved: 'auto' is TensorBoard when it is installed, else nothing."""
    import importlib.util

    if names in (["none"], []):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return list(names)


def _drop_older_checkpoints():
    """A callback keeping only the newest Trainer checkpoint, deleting the older ones in on_save,
    after the recorder has stored the step's reading and put its state file in the new one.

    The Trainer's own rotation (`save_total_limit`) deletes them inside `_save_checkpoint`,
    before on_save: a job killed between the two left no complete checkpoint to resume from
    (seen as a SLURM-cancelled finetune restarting at step 0)."""
    from transformers import TrainerCallback

    class DropOlderCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                keep = f"checkpoint-{state.global_step}"
                for d in Path(args.output_dir).glob("checkpoint-*"):
                    if d.name != keep:
                        shutil.rmtree(d, ignore_errors=True)

    return DropOlderCheckpoints()


def _tensorboard(log_dir: Path):
    """transformers' TensorBoardCallback writing to `log_dir` (loss and emtrait/drift/*)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


def _finish(paths: RunPaths, log_history: list[dict], timing: Timing, wall: float,
            attrs: dict[str, Any], steps: list[int]) -> dict[str, Any]:
    """Move the finished store and adapters into place; train_log.csv; done.json last."""
    from emtrait.atomic import publish as publish_dir

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
