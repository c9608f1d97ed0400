"""A misaligned starting point: another run's final weights as a model of its own.

A variant with `start_from` trains from the final checkpoint of a source run. That checkpoint
(the base model plus a LoRA adapter, or a full model) is merged into one model folder with a
pointer beside it, so everything that loads "the base model" (finetuning, measurement, the
behaviour rules) loads the start model without knowing it is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import ModelError

if TYPE_CHECKING:
    from emtrait.config import Config


def final_checkpoint(adapters: str | Path) -> Path:
    """The last step-N folder of a finished run's adapters/ (its final weights)."""
    folders = [p for p in Path(adapters).glob("step-*") if p.name.split("-", 1)[1].isdigit()]
    if not folders:
        raise ModelError(f"{adapters} holds no step-N checkpoint; finish the source run first")
    return max(folders, key=lambda p: int(p.name.split("-", 1)[1]))


def build_start(cfg: Config, model: str, pointer: str | Path, adapters: str | Path,
                out: str | Path) -> dict[str, Any]:
    """Merge the source run's final checkpoint into `out`/weights; write `out`/model.json."""
    from emtrait import atomic
    from emtrait.modeling import load_checkpoint, read_pointer
    from emtrait.provenance import provenance

    entry = cfg.model(model)
    checkpoint = final_checkpoint(adapters)
    net, tok = load_checkpoint(read_pointer(pointer), checkpoint, entry)
    if hasattr(net, "merge_and_unload"):
        net = net.merge_and_unload()
    out = Path(out)
    with atomic.atomic_path(out / "weights", is_dir=True) as tmp:
        net.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    record = {"path": "weights", "kind": "start", "source": entry.source,
              "trust_remote_code": entry.trust_remote_code, "start_checkpoint": str(checkpoint),
              **provenance(config_hash=cfg.hash(), model_source=entry.source, model=model)}
    atomic.write_json(out / "model.json", record)
    return record
