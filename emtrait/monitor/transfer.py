"""Move a calibrated monitor onto another base model without that model's own grid.

The seven traits are named axes: a drift vector means the same thing on any model that has its
own directions for them. `transfer_monitor` keeps what calibration learned on model A (the
regressor, threshold, alarm width and danger axis) and swaps in what belongs to model B: B's
trait directions at B's l* (B's directions.zarr, or extracted here by the traits stage's own
`emtrait.traits.extract.extract` with the config's trait prompts; l* by B's configured
selector either way), the chat format of B's eval prompts, B's fingerprint, and B's step-0
activation norm on the monitor's eval prompts (`norm0_base`, recorded; drift itself keeps the
per-run norm0 policy). Its provenance says plainly that it was transferred, not calibrated on B
(`origin_line`, repeated by `emtrait monitor score`, the live callback and the report).

`recalibrate` refits one thing on a few labelled runs of B (one dangerous, one benign), never
the regressor: a per-trait drift scale (`meta["drift_scale"]`, applied by `Monitor.predict`) or
the EM threshold the alarm is taken at (`meta["threshold"]`). docs/transfer.md says which one
the organism family supports and why.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from emtrait.errors import DataError, EmtraitError, ModelError, StoreError
from emtrait.monitor.artifact import Monitor, origin_line

if TYPE_CHECKING:
    from emtrait.config import Config

__all__ = ["METHODS", "SameModelError", "labelled_runs", "recalibrate", "transfer_monitor",
           "transfer_with_directions"]

METHODS = ("scale", "threshold")
"""What `recalibrate` may refit: a per-trait drift scale, or the alarm's EM threshold."""


class SameModelError(EmtraitError):
    """The target model is the monitor's own base model: there is nothing to transfer."""


def _check_source(monitor: Monitor, path: str) -> None:
    missing = [k for k in ("prompts", "fingerprint", "system_prompt_method") if k not in
               monitor.meta]
    if missing:
        raise StoreError(f"{path} lacks {missing} (format version {monitor.version}); a "
                         "transfer needs a format-2 monitor: refit it with `emtrait monitor fit`")


def _same_model(monitor: Monitor, model_name: str, fingerprint: dict[str, Any], path: str) -> None:
    same_weights = fingerprint == monitor.meta["fingerprint"]
    if same_weights or model_name == monitor.meta.get("model"):
        why = "the same base model (fingerprint)" if same_weights else f"model '{model_name}'"
        raise SameModelError(
            f"{path} was calibrated on {why} already: transferring it onto itself changes "
            "nothing and nothing was written; use the monitor as it is")


def _check_candidates(entry: Any, model_name: str, n_blocks: int,
                      layers: list[int] | None = None, directions: Any = None) -> None:
    """B's candidate layers exist in B (and, given a store, are the layers it holds)."""
    outside = [la for la in entry.candidate_layers if not 0 <= la < n_blocks]
    if outside or (layers is not None and not set(layers) <= set(entry.candidate_layers)):
        held = f", but {directions} holds layers {layers}" if layers is not None else ""
        raise ModelError(
            f"{model_name} has {n_blocks} decoder blocks and candidate layers "
            f"{entry.candidate_layers}{held}"
            + (f" (layers {outside} do not exist in {model_name})" if outside else "")
            + f": fix models.{model_name}.candidate_layers and re-extract its directions")


def _directions_for(monitor: Monitor, ds: Any, where: str, cfg: Config, model_name: str,
                    n_blocks: int) -> tuple[int, np.ndarray, dict[str, Any]]:
    """B's l* and its (trait, hidden) directions in the monitor's trait order."""
    from emtrait.traits.store import directions_at

    _check_candidates(cfg.model(model_name), model_name, n_blocks,
                      [int(v) for v in ds["layer"].values], where)
    if str(ds.attrs.get("model")) != model_name:
        raise DataError(f"{where} holds the directions of '{ds.attrs.get('model')}', not "
                        f"'{model_name}'; pass results/traits/{model_name}/directions.zarr")
    names, vectors = directions_at(ds, monitor.meta["trait_set"])
    missing = [t for t in monitor.traits if t not in names]
    if missing:
        raise DataError(f"{where} lacks the monitor's traits {missing} (trait set "
                        f"'{monitor.meta['trait_set']}'); extract {model_name}'s directions with "
                        "the monitor's trait prompts (traits.file, traits.sets)")
    order = [names.index(t) for t in monitor.traits]
    info = {"selector": str(ds.attrs["selector"]), "prompt_hash": str(ds.attrs["prompt_hash"]),
            "directions": where}
    return int(ds.attrs["layer"]), vectors[order], info


def _extract(monitor: Monitor, cfg: Config, model_name: str, pointer: str | os.PathLike,
             model: Any, tok: Any) -> Any:
    """B's directions store, extracted here with the traits stage's own extraction.

    The prompts are the config's traits file and sets; the monitor's trait set must be among
    them (checked by `_directions_for`). B's l* is chosen by `models.B.layer_selector`.
    """
    from emtrait.modeling import pointer_source
    from emtrait.traits.extract import extract, to_dataset

    if cfg.traits.monitor_set != monitor.meta["trait_set"]:
        raise DataError(f"the monitor reads trait set '{monitor.meta['trait_set']}' but "
                        f"traits.monitor_set is '{cfg.traits.monitor_set}'; extract with the "
                        "config the monitor was built from")
    source = pointer_source(pointer, cfg.model(model_name).source)
    return to_dataset(extract(model, tok, cfg, model_name), cfg, model_name, source)


def _eval_texts(monitor: Monitor, tok: Any, entry: Any, model_name: str) -> list[str]:
    """The monitor's eval prompts in B's chat format, or a ModelError naming the fix."""
    from jinja2 import TemplateError

    from emtrait.modeling import format_user_prompts

    try:
        return format_user_prompts(tok, monitor.meta["prompts"], entry, model_name)
    except TemplateError as e:
        raise ModelError(f"the chat template of {model_name} cannot render the monitor's eval "
                         f"prompts ({e}); models without a system role need "
                         f"models.{model_name}.system_prompt_method: user_turn") from None


def _norm0_base(monitor: Monitor, model: Any, tok: Any, layer: int, directions: np.ndarray,
                texts: list[str]) -> float:
    """B's mean per-prompt activation norm at l* on the monitor's eval prompts, B's chat format."""
    from emtrait.drift import mean_norm
    from emtrait.measure.probe import TraitProbe

    probe = TraitProbe(directions=directions, traits=monitor.traits, layer=layer, texts=texts,
                       tokenizer=tok)
    return float(mean_norm(probe.measure(model).activation))


def transfer_monitor(monitor: Monitor, cfg: Config, model_name: str,
                     pointer: str | os.PathLike, directions: str | os.PathLike | None = None,
                     source: str | os.PathLike = "monitor",
                     directions_out: str | os.PathLike | None = None) -> Monitor:
    """A format-2 monitor for `model_name` made from `monitor` (calibrated on another model).

    Keeps the monitor's regressor, threshold, alarm width, eval prompts and danger axis; takes
    B's chat format from `cfg.models[model_name]`, B's fingerprint and step-0 norm
    (`norm0_base`) from the model behind `pointer`, and B's directions and l* from
    `directions` (B's directions.zarr, written by `emtrait traits extract`) or, when that is
    None, from an extraction run here on B with the config's trait prompts and B's selector
    (`directions_out`: also keep that store). Raises `SameModelError` for the monitor's own
    model, `ModelError` for a B whose chat template cannot render the prompts or that lacks its
    candidate layers; nothing is written then.
    """
    moved, ds = transfer_with_directions(monitor, cfg, model_name, pointer, directions, source)
    if directions_out is not None:
        from emtrait.traits.store import write_directions

        write_directions(ds, directions_out)
    return moved


def transfer_with_directions(monitor: Monitor, cfg: Config, model_name: str,
                             pointer: str | os.PathLike,
                             directions: str | os.PathLike | None = None,
                             source: str | os.PathLike = "monitor") -> tuple[Monitor, Any]:
    """`transfer_monitor`'s monitor and B's directions store (read or extracted), unwritten."""
    from emtrait.modeling import decoder_layers, load_model, read_pointer
    from emtrait.monitor.artifact import model_fingerprint
    from emtrait.provenance import provenance
    from emtrait.traits.store import load_directions

    path = str(source)
    _check_source(monitor, path)
    entry = cfg.model(model_name)
    model, tok = load_model(read_pointer(pointer), entry, device="cpu")
    fingerprint = model_fingerprint(model, tok)
    _same_model(monitor, model_name, fingerprint, path)
    texts = _eval_texts(monitor, tok, entry, model_name)  # fails fast, before any extraction
    n_blocks = len(decoder_layers(model))
    _check_candidates(entry, model_name, n_blocks)
    if directions is None:
        ds, where = _extract(monitor, cfg, model_name, pointer, model, tok), "extracted here"
    else:
        ds, where = load_directions(directions), str(directions)
    layer, vectors, info = _directions_for(monitor, ds, where, cfg, model_name, n_blocks)
    norm0 = _norm0_base(monitor, model, tok, layer, vectors, texts)
    a = monitor.meta
    meta = copy.deepcopy(a)
    meta.update(
        model=model_name, layer=layer, fingerprint=fingerprint, model_source=entry.source,
        system_prompt_method=entry.system_prompt_method, no_system_prompt=entry.no_system_prompt,
        norm0_base=norm0,
        transfer={"from_model": a["model"], "from_monitor": path, "from_layer": a["layer"],
                  "from_architecture": a["fingerprint"].get("architecture"),
                  "from_hidden_size": a["fingerprint"].get("hidden_size"),
                  "from_provenance": a.get("provenance"), "recalibration": None,
                  "statement": f"transferred from {a['model']}, not calibrated on {model_name}",
                  **info},
        provenance=provenance(config_hash=cfg.hash(), model_source=entry.source,
                              transferred_from=a["model"], monitor=path),
    )
    return Monitor(regressor=monitor.regressor, directions=vectors, meta=meta), ds


def labelled_runs(cube: Any, runs: list[tuple[str, int]] | None, where: str):
    """(checkpoints, row indices) of the chosen labelled runs of a cube; both classes needed.

    Raises a DataError when a run is absent or the runs hold only one class.
    """
    from emtrait.cube.read import checkpoints

    cp = checkpoints(cube)
    keep = ~cp.rows.em_missing.values.astype(bool)
    if runs:
        key = [(str(d), int(s)) for d, s in zip(cp.rows.dataset.values, cp.rows.seed.values,
                                                 strict=True)]
        have = set(key)
        absent = [r for r in runs if r not in have]
        if absent:
            raise DataError(f"{where} has no runs {absent}; it has {sorted(have)}")
        keep &= np.array([k in set(runs) for k in key])
    classes = set(cp.rows.label.values[keep])
    if classes != {"dangerous", "benign"}:
        raise DataError(f"recalibration needs at least one dangerous and one benign labelled run "
                        f"of the new model; the runs given in {where} are "
                        f"{sorted(classes) or 'none'} only. Add a run of the other class")
    return cp, np.flatnonzero(keep)


def recalibrate(monitor: Monitor, cube: Any, *, runs: list[tuple[str, int]] | None = None,
                method: Literal["scale", "threshold"] = "scale", where: str = "cube") -> Monitor:
    """Refit one scale of a transferred monitor on a few labelled runs of its new model.

    `cube`: the new model's cube (`emtrait.cube.read.open_cube`); `runs`: (dataset, seed) pairs
    to use (default: every run in it). They must hold a dangerous and a benign run (the
    datasets' labels). `scale`: per trait, the ratio of the RMS drift the regressor was
    calibrated on (`meta["drift_rms"]`) to the RMS drift of these runs; `threshold`: the EM
    threshold on the predicted EM that best separates these checkpoints' labels (Youden's J).
    The regressor is never refitted.
    """
    from emtrait.drift import is_dangerous

    if method not in METHODS:
        raise DataError(f"recalibration method '{method}' is not one of {list(METHODS)}")
    if "transfer" not in monitor.meta:
        raise DataError("only a transferred monitor is recalibrated (`emtrait monitor transfer` "
                        "first); a model's own monitor is refitted with `emtrait monitor fit`")
    if str(cube.attrs["model"]) != monitor.meta["model"]:
        raise DataError(f"{where} is the cube of '{cube.attrs['model']}', but the monitor "
                        f"watches '{monitor.meta['model']}'")
    cp, idx = labelled_runs(cube, runs, where)
    missing = [t for t in monitor.traits if t not in cp.traits]
    if missing:
        raise DataError(f"{where} lacks the monitor's traits {missing}")
    x = cp.drift[idx][:, [cp.traits.index(t) for t in monitor.traits]]
    steps = cp.rows.step.values[idx]
    out = Monitor(regressor=monitor.regressor, directions=monitor.directions,
                  meta=copy.deepcopy(monitor.meta))
    used = sorted({(str(d), int(s)) for d, s in
                   zip(cp.rows.dataset.values[idx], cp.rows.seed.values[idx], strict=True)})
    if method == "scale":
        rms_a = monitor.meta.get("drift_rms")
        if rms_a is None:
            raise StoreError("this monitor does not record the RMS drift it was calibrated on "
                             "(drift_rms); refit the source monitor with `emtrait monitor fit`")
        rms_b = np.sqrt(np.mean(np.square(x[steps != 0]), axis=0))
        out.meta["drift_scale"] = (np.asarray(rms_a) / np.maximum(rms_b, 1e-12)).tolist()
    else:
        y = is_dangerous(cp.rows.em_rate.values[idx], float(monitor.meta["em_threshold"]))
        pred = out.predict(x, steps).pred_em
        out.meta["threshold"] = _youden(pred, y, float(monitor.meta["threshold"]))
    out.meta["transfer"]["recalibration"] = {"method": method, "runs": [list(r) for r in used],
                                             "n_checkpoints": len(idx), "source": where}
    out.meta["transfer"]["statement"] += (f"; {method} refitted on {len(used)} labelled runs of "
                                          f"{monitor.meta['model']}")
    return out


def _youden(pred: np.ndarray, y: np.ndarray, default: float) -> float:
    """The cut on `pred` maximising TPR - FPR (midpoint between neighbours), or `default`."""
    if y.all() or not y.any():
        return default
    cuts = np.unique(pred)
    mids = (cuts[:-1] + cuts[1:]) / 2 if len(cuts) > 1 else cuts
    j = [(pred[y] > c).mean() - (pred[~y] > c).mean() for c in mids]
    return float(mids[int(np.argmax(j))])


def describe(monitor: Monitor) -> str:
    """One line for the CLI: what was written and where it came from."""
    m = monitor.meta
    return (f"monitor for {m['model']} (layer {m['layer']}, {len(monitor.traits)} traits, "
            f"{m['regressor_name']}): {origin_line(m)}")

