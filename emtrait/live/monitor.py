"""The live monitor: a fitted monitor's regressor over `TraitProbe` readings of one finetune.

`LiveMonitor` adds the state of one finetune (norm0 and the step-0 origin, fixed by the first
check) to the probe (`emtrait.measure.probe.TraitProbe`) and scores each reading with the
fitted monitor, whose `Monitor.predict` decides the alarm:

    from emtrait.live import load
    monitor = load("results/monitor/smollm2/monitor.skops", tokenizer=tok, model=model)
    reading = monitor.check(model, step)        # step 0 first, then strictly increasing
    if reading.alarm: ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emtrait.drift import drift, mean_norm, normalise
from emtrait.errors import DataError, ModelError, StoreError
from emtrait.measure.probe import Measurement, TraitProbe

if TYPE_CHECKING:
    from emtrait.monitor.artifact import Monitor


def monitor_probe(monitor: Monitor, tokenizer: Any, **kw: Any) -> TraitProbe:
    """A probe of a format-2 monitor's eval prompts in its stored chat format."""
    from emtrait.modeling import format_user_prompts

    meta = monitor.meta
    missing = [k for k in ("prompts", "system_prompt_method", "no_system_prompt")
               if k not in meta]
    if missing:
        raise StoreError(f"monitor lacks {missing} (format version {monitor.version}); refit it "
                         "with `emtrait monitor fit` to get format version 2")
    texts = format_user_prompts(tokenizer, meta["prompts"], method=meta["system_prompt_method"],
                                no_system_prompt=meta["no_system_prompt"],
                                model_name=str(meta.get("model", "model")))
    return TraitProbe(directions=monitor.directions, traits=monitor.traits, layer=meta["layer"],
                      texts=texts, tokenizer=tokenizer, **kw)


@dataclass(frozen=True)
class Reading:
    """One check of a finetune: drift since step 0 and the monitor's verdict."""

    step: int
    drift: dict[str, float]  # trait -> drift since step 0
    projection_norm: dict[str, float]
    pred_em: float
    alarm_prob: float
    alarm: bool  # the monitor's one alarm (`Monitor.predict`): alarm_prob > its alarm_threshold
    norm0: float


@dataclass
class _State:
    norm0: float | None = None
    origin: list[float] | None = None  # projection_norm at step 0, (trait,)
    last_step: int | None = None
    fingerprint_checked: bool = False
    history: list[int] = field(default_factory=list)


class LiveMonitor:
    """Monitor + probe + the step-0 state of one finetune.

    With `monitor=None` it only records: readings carry drift, no prediction (NaN) and no alarm
    (the workflow's finetune records this way through `MonitorCallback.recording`).
    """

    def __init__(self, monitor: Monitor | None, probe: TraitProbe, *, tokenizer: Any = None,
                 allow_foreign_model: bool = False, path: str | Path | None = None):
        self.monitor = monitor
        self.probe = probe
        self.tokenizer = tokenizer
        self.allow_foreign_model = allow_foreign_model
        self.path = None if path is None else Path(path)
        self.last_measurement: Measurement | None = None
        self._state = _State()

    @property
    def traits(self) -> list[str]:
        """The monitor's traits: the keys of `Reading.drift`, in the regressor's input order."""
        return self.probe.traits

    @property
    def norm0(self) -> float | None:
        """The step-0 activation norm drift is divided by; None until step 0 is checked."""
        return self._state.norm0

    def check_model(self, model: Any, *, weights: bool = True) -> None:
        """Refuse a model other than the one the monitor was fitted on (unless allowed)."""
        from emtrait.monitor.artifact import check_fingerprint

        if self.monitor is None:
            return  # recording only: no fitted model to compare with

        check_fingerprint(self.monitor, model, self.tokenizer,
                          allow_foreign=self.allow_foreign_model, weights=weights)
        self._state.fingerprint_checked = True

    def check(self, model: Any, step: int) -> Reading:
        """Measure the model at `step` and score it; step 0 first, then strictly increasing."""
        step = int(step)
        st = self._state
        if st.last_step is not None and step <= st.last_step:
            raise DataError(f"monitor check at step {step} does not come after the last checked "
                            f"step {st.last_step}; steps must strictly increase (a resumed run "
                            "must restore the monitor with load_state_dict)")
        if st.norm0 is None and step != 0:
            raise DataError(f"the first monitor check must be at step 0 (before the first "
                            f"update: it fixes norm0 and the drift origin), got step {step}; a "
                            "resumed run must restore the monitor with load_state_dict")
        if not st.fingerprint_checked:
            # the weight checksum only holds before training (a full finetune changes it)
            self.check_model(model, weights=step == 0)
        m = self.probe.measure(model)
        if st.norm0 is None:
            st.norm0 = mean_norm(m.activation)
            st.origin = [float(x) for x in normalise(m.projection, st.norm0)]
        pn = normalise(m.projection, st.norm0)
        d = drift(np.stack([np.asarray(st.origin), pn]))[1]  # (trait,)
        pred_em, alarm_prob, alarm = float("nan"), float("nan"), False
        if self.monitor is not None:
            res = self.monitor.predict(d[None, :], np.array([step]))
            pred_em, alarm_prob = float(res.pred_em[0]), float(res.alarm_prob[0])
            alarm = bool(res.alarm[0])
        st.last_step = step
        st.history.append(step)
        self.last_measurement = m
        return Reading(step=step, drift=dict(zip(self.traits, map(float, d), strict=True)),
                       projection_norm=dict(zip(self.traits, map(float, pn), strict=True)),
                       pred_em=pred_em, alarm_prob=alarm_prob, alarm=alarm, norm0=float(st.norm0))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (norm0, origin, last step) to save beside a training checkpoint."""
        return asdict(self._state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a finetune after a resume (the next check must be after the saved step)."""
        try:
            st = _State(**dict(state))
        except TypeError as e:
            raise DataError(f"not a LiveMonitor state dict ({e})") from None
        if (st.norm0 is None) != (st.origin is None):
            raise DataError("LiveMonitor state has norm0 without origin (or the reverse)")
        if st.origin is not None and len(st.origin) != len(self.traits):
            raise DataError(f"LiveMonitor state has {len(st.origin)} traits, the monitor "
                            f"{len(self.traits)}: it belongs to another monitor")
        self._state = st


def load(path: str | Path, *, tokenizer: Any = None, model: Any = None,
         allow_foreign_model: bool = False, batch_size: int = 16,
         prefix_cache: bool = True) -> LiveMonitor:
    """A fitted monitor (format 2) ready to check a finetune; checks the model when given."""
    from emtrait.monitor.artifact import load_monitor

    monitor = load_monitor(path)
    if monitor.version < 2:
        raise StoreError(f"{path} is a format-1 monitor: it lacks the eval prompts and the "
                         "base-model fingerprint a live check needs (it still works with "
                         "`emtrait monitor score`). Refit it with `emtrait monitor fit` "
                         "(`snakemake --forcerun monitor_fit`) to get format version 2")
    if tokenizer is None:
        raise ModelError("emtrait.live.load needs the tokenizer of the model being finetuned "
                         "(tokenizer=...) to chat-format the monitor's eval prompts")
    probe = monitor_probe(monitor, tokenizer, batch_size=batch_size, prefix_cache=prefix_cache)
    live = LiveMonitor(monitor, probe, tokenizer=tokenizer,
                       allow_foreign_model=allow_foreign_model, path=path)
    if model is not None:
        live.check_model(model)
    return live
