"""The saved monitor: a fitted regressor plus everything needed to apply it to a new run.

Format: one skops archive (a zip of JSON + NumPy arrays; nothing is unpickled) holding
`{"format": "emtrait-monitor", "version": 2, "meta_json": ..., "directions": ..., "regressor":
...}`. Loading trusts only the sklearn types on `TRUSTED` and refuses anything else, a file that
is not a skops archive, or an archive that is not a monitor.

Version 2 makes the file usable alone inside someone else's training loop (`emtrait.live`):
besides the regressor, traits, l*, threshold and alarm sigma (version 1), `meta` holds the raw
eval prompts and their chat format (`prompts`, `prompt_categories`, `system_prompt_method`,
`no_system_prompt`), the norm0 policy, calibration provenance (`provenance`, `calibration`) and
a `fingerprint` of the base model (`model_fingerprint`). Version-1 files still load (for
`monitor score`); the live API refuses them with how to refit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emtrait.errors import ConfigError, DataError, ModelError, StoreError
from emtrait.stores import artifact_error

if TYPE_CHECKING:
    from emtrait.config import Config
    from emtrait.monitor.protocol import Prediction

__all__ = ["FORMAT", "NORM0_POLICY", "VERSION", "ModelMismatchError", "Monitor",
           "check_fingerprint", "live_meta", "load_monitor", "model_fingerprint", "origin_line",
           "run_drift",
           "save_monitor", "stored_model_fingerprint"]

FORMAT = "emtrait-monitor"
"""The archive's `format` field: what marks a skops file as an emtrait monitor."""
VERSION = 2
"""The format version `save_monitor` writes (version-1 files still load for `monitor score`)."""
# meta keys a format-2 monitor has beyond version 1
V2_KEYS = ("prompts", "prompt_categories", "system_prompt_method", "no_system_prompt",
           "fingerprint", "norm0_policy", "provenance")
# rows of the input embedding hashed by the fingerprint (evenly spaced over the vocabulary)
FINGERPRINT_ROWS = 256
# Types skops does not trust by default that a monitor's regressors legitimately contain.
TRUSTED = {"sklearn.tree._tree.Tree"}
MONITOR_RULE = "monitor_fit"  # the rule that writes monitor.skops (named in errors)
NORM0_POLICY = "mean per-prompt L2 norm of the activation at step 0 of the run being scored"
"""How drift is normalised (stored in every format-2 monitor as `meta["norm0_policy"]`)."""


@dataclass
class Monitor:
    """A fitted drift-to-EM monitor; `meta` is plain JSON (traits, layer, thresholds, ...).

    Its gates (`meta["threshold"]`, `meta["alarm_threshold"]`, `meta["sigma"]`) must be finite
    numbers in range, checked when it is made: a NaN gate would never raise an alarm."""

    regressor: Any
    directions: np.ndarray  # (trait, hidden) unit directions at meta["layer"], float32
    meta: dict
    version: int = VERSION  # format version of the file it was loaded from

    def __post_init__(self) -> None:
        from emtrait.errors import check_number

        for key, low, high in (("threshold", 0.0, 1.0), ("alarm_threshold", 0.0, 1.0),
                               ("sigma", 0.0, None)):
            if key in self.meta:
                check_number(self.meta[key], f"Monitor meta['{key}']", low=low, high=high)

    @property
    def traits(self) -> list[str]:
        """The traits the regressor reads, in the order of `directions`' rows."""
        return list(self.meta["traits"])

    def predict(self, drift: np.ndarray, steps: np.ndarray) -> Prediction:
        """The verdict per row of drift (row, trait): predicted EM, alarm probability and the
        alarm at the stored `alarm_threshold`."""
        from emtrait.monitor.protocol import verdict

        x = np.asarray(drift, float)
        if "drift_scale" in self.meta:  # a transferred monitor's few-run recalibration
            x = x * np.asarray(self.meta["drift_scale"], float)
        if self.meta["include_step"]:
            x = np.column_stack([x, np.asarray(steps, float)])
        pred = np.clip(self.regressor.predict(x), 0.0, 1.0)
        return verdict(pred, threshold=self.meta["threshold"], sigma=self.meta["sigma"],
                       alarm_threshold=self.meta["alarm_threshold"])


def origin_line(meta: dict) -> str:
    """Where a monitor's calibration comes from, in words: "calibrated on M" or, for a monitor
    made by `emtrait monitor transfer`, "transferred from A, not calibrated on B" (and what a
    few-run recalibration refitted)."""
    transfer = meta.get("transfer")
    if transfer:
        return str(transfer["statement"])
    return f"calibrated on {meta.get('model', '?')}"


def save_monitor(path: str | os.PathLike, monitor: Monitor) -> None:
    """Write the monitor archive atomically (format 2 when meta has every `V2_KEYS` entry)."""
    import skops.io as sio

    from emtrait.atomic import atomic_path

    # without the live fields (`live_meta`) it is a version-1 monitor: `score` only
    version = VERSION if all(k in monitor.meta for k in V2_KEYS) else 1
    obj = {"format": FORMAT, "version": version, "meta_json": json.dumps(monitor.meta),
           "directions": np.asarray(monitor.directions, dtype="float32"),
           "regressor": monitor.regressor}
    with atomic_path(path) as tmp:
        sio.dump(obj, tmp)


def load_monitor(path: str | os.PathLike) -> Monitor:
    """Load a monitor archive without executing code; refuse anything that is not one."""
    import skops.io as sio

    p = Path(path)
    if not p.is_file():
        raise artifact_error(p, "the monitor does not exist (fit one with `emtrait monitor "
                             "fit`)", MONITOR_RULE)
    try:
        untrusted = sio.get_untrusted_types(file=p)
    except Exception as e:  # zipfile/json errors: not a skops archive at all
        raise artifact_error(p, f"not an emtrait monitor (not a skops archive: {e}); pass the "
                             "monitor.skops written by `emtrait monitor fit`",
                             MONITOR_RULE) from None
    foreign = sorted(set(untrusted) - TRUSTED)
    if foreign:
        raise StoreError(f"{p}: refusing to load types outside the monitor's allow-list: "
                         f"{foreign}; this file was not written by `emtrait monitor fit`")
    obj = sio.load(p, trusted=list(untrusted))
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise artifact_error(p, f"a skops archive but not an emtrait monitor (no "
                             f"format='{FORMAT}'); pass the monitor.skops of `emtrait monitor "
                             "fit`", MONITOR_RULE)
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise StoreError(f"{p}: monitor format version {version!r} is newer than this emtrait "
                         f"reads ({VERSION}); upgrade emtrait")
    try:
        return Monitor(regressor=obj["regressor"], directions=np.asarray(obj["directions"]),
                       meta=json.loads(obj["meta_json"]), version=version)
    except (ConfigError, KeyError, ValueError) as e:
        raise artifact_error(p, f"a damaged monitor ({e})", MONITOR_RULE) from None


def run_drift(monitor: Monitor, store: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(steps, drift (step, trait)) of a run store for the monitor's traits.

    Uses the store's `drift` when it has every monitor trait; otherwise recomputes it from
    `activation(step, prompt, hidden)` with the monitor's directions and norm0 policy.
    """
    from emtrait.drift import drift as drift_from
    from emtrait.drift import mean_norm, normalise
    from emtrait.stores import open_artifact

    ds = open_artifact(store, rule="finetune", what="run store", load=False,
                       variables={"step": ("step",)})
    layer = ds.attrs.get("layer")
    if layer is not None and int(layer) != int(monitor.meta["layer"]):
        raise DataError(f"{store} was measured at layer {layer} but the monitor was fitted at "
                        f"layer {monitor.meta['layer']}; measure the run at the monitor's layer")
    steps = ds["step"].values.astype(int)
    traits = monitor.traits
    if "drift" in ds and "trait" in ds.coords and set(traits) <= set(map(str, ds.trait.values)):
        drift = ds["drift"].sel(trait=traits).values.astype(float)
    elif "activation" in ds:
        act = ds["activation"].values.astype(float)  # (step, prompt, hidden)
        if 0 not in steps:
            raise DataError(f"{store}: no step 0, so norm0 and the drift origin are undefined")
        if act.shape[-1] != monitor.directions.shape[1]:
            raise DataError(f"{store}: hidden size {act.shape[-1]} differs from the monitor's "
                            f"{monitor.directions.shape[1]} (a different model?)")
        base = int(np.flatnonzero(steps == 0)[0])
        proj = (act @ monitor.directions.T.astype(float)).mean(axis=1)  # (step, trait)
        drift = drift_from(normalise(proj, mean_norm(act[base])), origin=base)
    else:
        raise DataError(f"{store} has neither drift for traits {traits} nor activations to "
                        "recompute it from")
    ok = np.isfinite(drift).all(axis=1)
    return steps[ok], drift[ok]


# ---------------------------------------------------------------------------------------------
# format 2: what a monitor needs to run alone, and the base model it belongs to
# ---------------------------------------------------------------------------------------------


class ModelMismatchError(ModelError):
    """The model a monitor is attached to is not the base model it was fitted on."""


def model_fingerprint(model: Any, tokenizer: Any) -> dict[str, Any]:
    """What identifies a base model, identical on CPU and GPU and in fp32 or bf16.

    Architecture, hidden size, block count, a hash of the tokenizer vocabulary, and a hash of
    256 evenly spaced rows of the input embedding (LoRA leaves it untouched), rounded to
    bfloat16 first so a model loaded in fp32 and one loaded in bf16 hash the same.
    """
    import torch

    from emtrait.modeling import base_model, decoder_layers

    base = base_model(model)
    emb = base.get_input_embeddings().weight  # (vocab, hidden)
    rows = _fingerprint_rows(emb.shape[0])
    with torch.no_grad():
        sample = emb.detach().index_select(0, torch.tensor(rows, device=emb.device))
    return _fingerprint(type(base).__name__, base.config, len(decoder_layers(base)), tokenizer,
                        int(emb.shape[0]), sample)


def stored_model_fingerprint(location: str, entry: Any = None) -> dict[str, Any]:
    """`model_fingerprint` of a saved model, reading 256 embedding rows instead of the weights.

    `monitor fit` then needs no memory for a 9B model. The skeleton is built on the meta device;
    the rows come from the safetensors file holding the embedding. A checkpoint laid out
    otherwise (renamed keys, no safetensors) is loaded whole instead.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from emtrait.modeling import decoder_layers, load_model, load_tokenizer

    trust = bool(entry and entry.trust_remote_code)
    revision = entry.revision if entry else None
    tok = load_tokenizer(location, entry)
    config = AutoConfig.from_pretrained(location, trust_remote_code=trust, revision=revision)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    emb = skeleton.get_input_embeddings().weight
    name = next(n for n, p in skeleton.named_parameters(remove_duplicate=False) if p is emb)
    rows = _fingerprint_rows(emb.shape[0])
    sample = _read_rows(location, revision, name, rows)
    if sample is None:  # keys renamed on load, or not safetensors: load the model itself
        model, tok = load_model(location, entry, device="cpu")
        return model_fingerprint(model, tok)
    return _fingerprint(type(skeleton).__name__, skeleton.config, len(decoder_layers(skeleton)),
                        tok, int(emb.shape[0]), sample)


def _fingerprint_rows(n: int) -> list[int]:
    return sorted({round(i * (n - 1) / (FINGERPRINT_ROWS - 1)) for i in range(FINGERPRINT_ROWS)})


def _read_rows(location: str, revision: str | None, name: str, rows: list[int]) -> Any:
    """Rows of one tensor straight from the safetensors file that holds it, or None."""
    import torch
    from safetensors import safe_open
    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        return cached_file(location, filename, revision=revision,
                           _raise_exceptions_for_missing_entries=False)

    index = find("model.safetensors.index.json")
    if index:
        shard = json.loads(Path(index).read_text())["weight_map"].get(name)
        path = find(shard) if shard else None
    else:
        path = find("model.safetensors")
    if not path:
        return None
    with safe_open(path, framework="pt") as f:
        if name not in f.keys():
            return None
        tensor = f.get_slice(name)
        return torch.cat([tensor[r:r + 1] for r in rows])


def _fingerprint(architecture: str, config: Any, n_layers: int, tokenizer: Any,
                 embedding_rows: int, sample: Any) -> dict[str, Any]:
    import hashlib

    import torch

    vocab = sorted(tokenizer.get_vocab().items())
    rounded = sample.to(torch.bfloat16).to(torch.float32).cpu().numpy()  # (256, hidden)
    return {
        "model_type": str(getattr(config, "model_type", "")),
        "architecture": architecture,
        "hidden_size": int(config.hidden_size),
        "n_layers": int(n_layers),
        "vocab_size": len(vocab),
        "vocab_sha256": hashlib.sha256(json.dumps(vocab).encode()).hexdigest(),
        "embedding_rows": embedding_rows,
        "embedding_sha256": hashlib.sha256(rounded.tobytes()).hexdigest(),
    }


FINGERPRINT_NAMES = {
    "model_type": "model type", "architecture": "architecture", "hidden_size": "hidden size",
    "n_layers": "decoder block count", "vocab_size": "tokenizer vocabulary size",
    "vocab_sha256": "tokenizer vocabulary", "embedding_rows": "input embedding rows",
    "embedding_sha256": "input embedding weights",
}


def check_fingerprint(monitor: Monitor, model: Any, tokenizer: Any, *,
                      allow_foreign: bool = False, weights: bool = True) -> list[str]:
    """Raise ModelMismatchError naming what differs from the monitor's base model.

    `allow_foreign=True` (a deliberate transfer experiment) returns the differences instead.
    `weights=False` skips the embedding checksum (a full finetune past step 0 changes it).
    """
    want = monitor.meta.get("fingerprint")
    if not want:
        raise StoreError("this monitor has no base-model fingerprint (format version "
                         f"{monitor.version}); refit it with `emtrait monitor fit`")
    if tokenizer is None:
        raise ModelError("checking the monitor's base model needs the tokenizer (tokenizer=...)")
    have = model_fingerprint(model, tokenizer)
    keys = [k for k in FINGERPRINT_NAMES if weights or not k.startswith("embedding_sha")]
    diff = [f"{FINGERPRINT_NAMES[k]}: monitor {_short(want.get(k))}, model {_short(have[k])}"
            for k in keys if want.get(k) != have[k]]
    if diff and not allow_foreign:
        raise ModelMismatchError(
            f"this monitor was fitted on {monitor.meta.get('model', '?')} "
            f"({want.get('architecture')}) and the model it is attached to differs: "
            + "; ".join(diff) + ". Attach it to the model it was fitted on, fit a monitor for "
            "this model with the workflow, or pass allow_foreign_model=True for a deliberate "
            "transfer experiment"
        )
    return diff


def _short(v: Any) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) > 16 else repr(v)


def live_meta(cfg: Config, model_name: str, pointer: str | os.PathLike) -> dict[str, Any]:
    """The format-2 meta a fitted monitor needs to run alone (prompts, chat format, fingerprint).

    The fingerprint reads the model's config, tokenizer and 256 embedding rows, not its weights.
    """
    from emtrait.measure.inputs import eval_prompts
    from emtrait.modeling import read_pointer

    entry = cfg.model(model_name)
    prompts = eval_prompts(cfg)
    return {
        "prompts": [p.text for p in prompts],
        "prompt_categories": [p.category for p in prompts],
        "system_prompt_method": entry.system_prompt_method,
        "no_system_prompt": entry.no_system_prompt,
        "norm0_policy": NORM0_POLICY,
        "fingerprint": stored_model_fingerprint(read_pointer(pointer), entry),
        "model_source": entry.source,
    }
