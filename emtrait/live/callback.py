"""MonitorCallback: a calibrated emtrait monitor inside transformers' Trainer (and TRL's trainers).

    from emtrait.live import MonitorCallback
    trainer = SFTTrainer(..., callbacks=[MonitorCallback("monitor.skops", every=10,
                                                         on_alarm="stop")])

A reading at step 0 (before the first update), every `every` optimizer updates and at every save.
Each reading goes through the Trainer's own logging path (`state.log_history` and every
callback's `on_log`, so TensorBoard, W&B, ... show `emtrait/drift/<trait>`, `emtrait/pred_em`,
`emtrait/alarm_prob`) and is appended to `<output_dir>/emtrait/measure.zarr`, a run store with
the workflow's contract (`emtrait monitor score` and `emtrait cube merge` read it).

Resuming: the monitor's state (norm0, the step-0 origin, the last step) is written into every
Trainer checkpoint (`checkpoint-N/emtrait_monitor.json`); a Trainer resumed from checkpoint-N
restores it and drops store steps after N, so the store never holds a step twice or misses one.

Record-only (`MonitorCallback.recording(probe, record, ...)`): readings of a probe into the run
store and the logs, with no monitor, no prediction and no alarm, at given steps (each also a
Trainer checkpoint). The workflow's `emtrait finetune` records through it: one TrainerCallback.

Distributed: every rank runs the reading (sharded models need the forward on all ranks), the
alarm decision is agreed across ranks (so all stop or save together), and only the world's
process zero writes the store and the state file. Logging goes to every rank's callbacks, as
`Trainer.log` does; the reporting integrations themselves log only on process zero.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from emtrait.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from emtrait.live.monitor import LiveMonitor, Reading
    from emtrait.measure.probe import Measurement, TraitProbe

log = logging.getLogger(__name__)

ON_ALARM = ("log", "checkpoint", "stop")
STATE_FILE = "emtrait_monitor.json"  # inside each Trainer checkpoint folder
STORE = Path("emtrait") / "measure.zarr"  # under args.output_dir


def drift_logs(drift: dict[str, float]) -> dict[str, float]:
    """Drift scalars under the names every emtrait integration logs (`emtrait/drift/<trait>`)."""
    return {f"emtrait/drift/{t}": float(v) for t, v in drift.items()}


@dataclass(frozen=True)
class RunRecord:
    """What the run store records beside each reading: the store's attrs (set with step 0) and
    each step's coordinates; `keep_activations="step0"` stores NaN activations after step 0."""

    attrs: dict[str, Any]
    prompt_categories: list[str]
    trait_sets: list[str]  # (trait,)
    directions: np.ndarray  # (trait, hidden) unit directions at l*
    keep_activations: str = "all"
    layer_directions: np.ndarray | None = None  # (layer, trait, hidden) at every measured layer

    def row(self, traits: list[str], step: int, m: Measurement, loss: float) -> xr.Dataset:
        """One step of the run store, through the workflow's `step_dataset`."""
        from emtrait.measure.store import step_dataset

        return step_dataset(step, m, traits=traits, prompt_categories=self.prompt_categories,
                            loss=loss, trait_sets=self.trait_sets, directions=self.directions,
                            keep_activation=not (self.keep_activations == "step0" and step > 0),
                            layer_directions=self.layer_directions)


def reading_logs(reading: Reading) -> dict[str, float]:
    """The scalars one reading adds to the Trainer's logs (names shown by TensorBoard/W&B)."""
    logs = drift_logs(reading.drift)
    logs["emtrait/pred_em"] = float(reading.pred_em)
    logs["emtrait/alarm_prob"] = float(reading.alarm_prob)
    logs["emtrait/alarm"] = float(bool(reading.alarm))
    return logs


class MonitorCallback(TrainerCallback):
    """Watch a finetune with a calibrated monitor and act on its alarm.

    `monitor`: a `LiveMonitor` (from `emtrait.live.load`) or the path of a monitor file.
    `every`: optimizer updates between readings (plus step 0 and every save).
    `on_alarm`: "log" (a warning), "checkpoint" (force a save at that step), "stop" (end
    training after that step, the reason in the logs and the store), or a callable
    `f(reading, state, control)` run on every rank.
    `store`: the run store's path, "auto" for `<output_dir>/emtrait/measure.zarr`, None for none.
    `tokenizer`: defaults to the Trainer's `processing_class`.
    `steps`: read at exactly these steps (besides step 0) instead of `every`, and save a Trainer
    checkpoint at each (a resumed run then continues from a reading).
    `before_reading`: `f(model, step)` run before each reading (the workflow saves adapters).
    """

    def __init__(self, monitor: LiveMonitor | str | Path, *, every: int = 10,
                 on_alarm: str | Callable[..., Any] = "log", store: str | Path | None = "auto",
                 tokenizer: Any = None, allow_foreign_model: bool = False,
                 steps: Sequence[int] | None = None,
                 before_reading: Callable[[Any, int], None] | None = None):
        if not (callable(on_alarm) or on_alarm in ON_ALARM):
            raise ConfigError(f"MonitorCallback(on_alarm={on_alarm!r}): use one of "
                              f"{', '.join(map(repr, ON_ALARM))} or a callable "
                              "f(reading, state, control)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"MonitorCallback(every={every!r}): give a positive number of "
                              "optimizer updates between readings")
        self.every = every
        self.steps = None if steps is None else {int(s) for s in steps}
        self.before_reading = before_reading
        self.record: RunRecord | None = None  # from the monitor's meta unless `recording`
        self.on_alarm = on_alarm
        self.store_option = store
        self.tokenizer = tokenizer
        self.allow_foreign_model = allow_foreign_model
        if isinstance(monitor, (str, Path)):
            from emtrait.monitor.artifact import load_monitor

            self.path: Path | None = Path(monitor)
            load_monitor(self.path)  # a missing or corrupt file fails here, before any Trainer
            self.monitor: LiveMonitor | None = None
        else:
            self.path, self.monitor = None, monitor
        self.readings: list[Reading] = []  # this process's readings, in order
        self.measure_s: list[float] = []  # wall seconds of each reading
        self.stopped_at: int | None = None
        self._store: Any = None
        self._pending: list[tuple[Reading, Any]] = []  # (reading, measurement) not yet stored
        self._stop_attrs: dict[str, Any] = {}  # the stop reason, for the store's attrs
        self.stored_steps: list[int] = []  # steps this process appended to the store
        self._stored_step = -1
        self._handler: Any = None
        self._checked = False
        self._dispatching = False

    @classmethod
    def recording(cls, probe: TraitProbe, record: RunRecord, *, store: str | Path,
                  steps: Sequence[int], before_reading: Callable[[Any, int], None] | None = None
                  ) -> MonitorCallback:
        """Record-only: `probe`'s readings at step 0 and `steps` into the run store `store` and
        the Trainer's logs (drift only), with no monitor, prediction or alarm."""
        from emtrait.live.monitor import LiveMonitor

        cb = cls(LiveMonitor(None, probe), store=store, steps=steps,
                 before_reading=before_reading)
        cb.record = record
        return cb

    # -- preparation: every check that can fail runs before the first update ------------------

    def _prepare(self, args: TrainingArguments, model: Any, processing_class: Any) -> None:
        if model is None:
            raise ConfigError("MonitorCallback got no model from the Trainer; pass it to a "
                              "transformers Trainer (or TRL trainer) as callbacks=[...]")
        if self.monitor is None:
            from emtrait.live.monitor import load

            tok = self.tokenizer or getattr(processing_class, "tokenizer", processing_class)
            if tok is None:
                raise ConfigError("MonitorCallback needs the model's tokenizer: give the Trainer "
                                  "a processing_class or pass MonitorCallback(tokenizer=...)")
            self.monitor = load(self.path, tokenizer=tok, model=model,
                                allow_foreign_model=self.allow_foreign_model)
        elif not self._checked:
            self.monitor.check_model(model)  # a foreign model is refused before training
        self._checked = True
        if self.store_option is not None and self._store is None:
            from emtrait.measure.store import RunStore

            path = (Path(args.output_dir) / STORE if self.store_option == "auto"
                    else Path(self.store_option))
            self._store = RunStore(path)
        if self.record is None:
            self.record = _monitor_record(self.monitor, self.every, self.on_alarm)
            announce(self.monitor)

    def on_init_end(self, args, state, control, model=None, processing_class=None, **kw):
        """When the Trainer is built: load the monitor and refuse another base model."""
        self._handler = trainer_handler()
        self._prepare(args, model, processing_class)

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        """Read step 0, or continue the run store when the Trainer resumes a checkpoint."""
        self._handler = trainer_handler() or self._handler
        self._prepare(args, model, processing_class)
        # process zero looks, every rank learns the answer: all raise together (no rank is
        # left waiting in a collective) and no rank sees the step-0 store rank 0 is writing
        taken = state.is_world_process_zero and self._store is not None and self._store.exists()
        if state.global_step > 0:
            self._resume(args, state)
        elif _agree(taken, args):
            raise StoreError(
                f"{self._store.path} already holds a run and this Trainer starts at step 0; "
                "use a new output_dir, delete the old store, or resume the Trainer from its "
                "checkpoint (trainer.train(resume_from_checkpoint=True))")
        else:
            self._read(args, state, control, model)

    # -- readings -------------------------------------------------------------------------------

    def on_step_begin(self, args, state, control, **kw):
        """Store the previous reading once every log of its step has happened."""
        if any(reading.step > 0 for reading, _ in self._pending):
            self._flush(state)  # every log of the reading's step has happened

    def on_step_end(self, args, state, control, model=None, **kw):
        """Read at the configured steps (record-only mode, saving there) or every `every`
        updates and at every step that saves; act on an alarm."""
        if self.steps is not None:
            if state.global_step in self.steps:
                control.should_save = True
                self._read(args, state, control, model)
        elif state.global_step % self.every == 0 or control.should_save:
            self._read(args, state, control, model)

    def on_log(self, args, state, control, logs=None, **kw):
        """Store step 0 with the first logged loss."""
        if not self._dispatching and self._stored_step < 0 and logs and "loss" in logs:
            self._flush(state)  # step 0 waits for the first logged loss (the workflow's rule)

    def on_save(self, args, state, control, model=None, **kw):
        """Read at the saved step and put the monitor's state into the checkpoint folder."""
        if not self.readings or self.readings[-1].step != state.global_step:
            self._read(args, state, control, model)  # saves outside on_step_end (epoch ends)
        self._flush(state)
        if state.is_world_process_zero:
            from emtrait import atomic

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic.write_json(folder / STATE_FILE, self._checkpoint_state())

    def on_train_end(self, args, state, control, **kw):
        """Store the last reading."""
        self._flush(state)

    def _read(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
              model: Any) -> None:
        step = state.global_step
        if self.before_reading is not None:
            self.before_reading(model, step)
        t0 = time.perf_counter()
        reading = self.monitor.check(model, step)
        self.measure_s.append(time.perf_counter() - t0)
        self.readings.append(reading)
        if self._store is not None and state.is_world_process_zero:
            # stored once its step's losses are logged (step 0: the first logged loss)
            self._pending.append((reading, self.monitor.last_measurement))
        alarm = _agree(reading.alarm, args)
        scored = self.monitor.monitor is not None
        self._log(args, state, control,
                  reading_logs(reading) if scored else drift_logs(reading.drift))
        if alarm:
            self._act(reading, args, state, control)

    def _act(self, reading: Reading, args, state, control) -> None:
        what = (f"emtrait alarm at step {reading.step}: predicted EM rate {reading.pred_em:.3f}, "
                f"alarm probability {reading.alarm_prob:.3f}")
        if callable(self.on_alarm):
            self.on_alarm(reading, state, control)
        elif self.on_alarm == "checkpoint":
            control.should_save = True
            log.warning("%s; saving a checkpoint", what)
        elif self.on_alarm == "stop":
            control.should_training_stop = True
            self.stopped_at = reading.step
            reason = f"{what}; training stopped by MonitorCallback(on_alarm='stop')"
            log.warning(reason)
            self._log(args, state, control, {"emtrait/stopped_at_step": float(reading.step),
                                             "emtrait/stop_reason": reason})
            self._stop_attrs = {"stopped_at_step": reading.step, "stop_reason": reason}
        else:
            log.warning(what)

    # -- logging through the Trainer ------------------------------------------------------------

    def _log(self, args, state, control, logs: dict[str, Any]) -> None:
        self._dispatching = True  # our own on_log ignores what we dispatch
        try:
            log_through_trainer(self._handler, args, state, control, logs)
        finally:
            self._dispatching = False

    # -- the run store ----------------------------------------------------------------------------

    def _flush(self, state: TrainerState) -> None:
        """Store the pending readings in order; a step's loss is the mean logged loss since the
        previous stored step (step 0: the first logged loss, NaN if none yet)."""
        while self._pending:
            reading, measurement = self._pending.pop(0)
            losses = [h["loss"] for h in state.log_history if "loss" in h
                      and self._stored_step < h["step"] <= max(reading.step, 0)]
            if reading.step == 0:
                losses = losses[:1] or [h["loss"] for h in state.log_history if "loss" in h][:1]
            loss = float(sum(losses) / len(losses)) if losses else math.nan
            row = self.record.row(self.monitor.traits, reading.step, measurement, loss)
            self._store.append(row, self.record.attrs, extra_attrs=self._stop_attrs)
            self._stored_step = reading.step
            self.stored_steps.append(reading.step)

    def _checkpoint_state(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict(), "stored_step": self._stored_step,
                "steps": [r.step for r in self.readings]}

    def _resume(self, args: TrainingArguments, state: TrainerState) -> None:
        import json

        step = state.global_step
        path = Path(args.output_dir) / f"checkpoint-{step}" / STATE_FILE
        if not path.is_file():
            raise StoreError(
                f"the Trainer resumes at step {step} but {path} is missing: that checkpoint was "
                "not saved with MonitorCallback, so the monitor's step-0 origin is unknown. "
                "Resume from a checkpoint saved with the callback, or start a new run")
        saved = json.loads(path.read_text())
        self.monitor.load_state_dict(saved["monitor"])
        self._stored_step = int(saved["stored_step"])
        if self._store is not None and state.is_world_process_zero and self._store.exists():
            self._store.truncate(self._stored_step)  # steps after the checkpoint are redone


def announce(live: LiveMonitor) -> None:
    """The callback's first log line: whose monitor this is and where its calibration came
    from (a transferred monitor says it was not calibrated on this model, as a warning)."""
    from emtrait.monitor.artifact import origin_line

    meta = live.monitor.meta
    line = f"emtrait monitor for {meta.get('model', '?')}: {origin_line(meta)}"
    (log.warning if "transfer" in meta else log.info)(line)


def _monitor_record(live: LiveMonitor, every: int, on_alarm: Any) -> RunRecord:
    """The run store of a monitored finetune: the workflow's run-store attrs plus where the
    readings came from; coordinates from the monitor file."""
    from emtrait.monitor.artifact import origin_line
    from emtrait.provenance import provenance

    meta = live.monitor.meta
    calib = meta.get("provenance") or {}
    attrs = provenance(config_hash=str(calib.get("config_hash", "")),
                       model_source=meta.get("model_source"), model=meta.get("model", ""),
                       dataset="live", layer=int(meta["layer"]),
                       measured_layers=[int(meta["layer"])], n_prompts=len(meta["prompts"]),
                       source="emtrait.live.MonitorCallback", every=every,
                       on_alarm=on_alarm if isinstance(on_alarm, str) else "callable",
                       monitor=str(live.path or ""), monitor_origin=origin_line(meta))
    return RunRecord(attrs=attrs,
                     prompt_categories=meta.get("prompt_categories") or [""] * len(meta["prompts"]),
                     trait_sets=[str(meta.get("trait_set", "monitor"))] * len(live.traits),
                     directions=live.monitor.directions)


def log_through_trainer(handler: Any, args: TrainingArguments, state: TrainerState,
                        control: TrainerControl, logs: dict[str, Any]) -> None:
    """What `Trainer.log` does: into `state.log_history`, then every callback's on_log (so
    TensorBoard, W&B, ... see it). `handler` comes from `trainer_handler()` (None: history only).
    """
    state.log_history.append({**logs, "step": state.global_step})
    if handler is None:
        return
    should_log = control.should_log  # CallbackHandler.on_log clears it; the step's own
    try:                              # loss log must still happen
        handler.on_log(args, state, control, logs)
    finally:
        control.should_log = should_log


def trainer_handler() -> Any:
    """The Trainer's CallbackHandler that is calling us (callbacks are not given it)."""
    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler):
            return owner
        frame = frame.f_back
    return None


def _agree(flag: bool, args: TrainingArguments) -> bool:
    """One decision for every rank (true if true on any rank), so all ranks act together."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=args.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
