"""`emtrait measure`: the in-process measurement, for checkpoints made elsewhere.

Accepts PEFT adapter folders (adapter_config.json; e.g. an HF Trainer checkpoint of a LoRA run
or emtrait's adapters/step-N) and full model folders (config.json). The base model loads once;
adapters are attached, measured and detached in turn, so nothing reloads per checkpoint.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from emtrait.atomic import publish as publish_dir
from emtrait.errors import StoreError
from emtrait.measure.inputs import eval_prompts, format_prompts, read_directions, run_probe
from emtrait.measure.store import RunStore, step_dataset
from emtrait.modeling import checkpoint_kind, load_checkpoint, load_model, read_pointer
from emtrait.provenance import provenance

if TYPE_CHECKING:
    import xarray as xr

    from emtrait.config import Config


def checkpoints_in(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step-N` folder of a run's adapters/, by step."""
    found = []
    for d in Path(folder).iterdir():
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    if not found:
        raise StoreError(f"{folder} holds no step-N folders; pass --checkpoint/--step instead")
    return sorted(found)


def measure_checkpoints(cfg: Config, model_name: str, *, pointer: str | Path,
                        directions_path: str | Path, checkpoints: list[tuple[int, Path]],
                        out: str | Path, dataset: str = "external", seed: int = 0
                        ) -> xr.Dataset:
    """Measure each (step, checkpoint) and write a measure.zarr (loss is NaN: not known here)."""
    entry = cfg.model(model_name)
    steps = [s for s, _ in checkpoints]
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise StoreError(f"checkpoint steps {steps} must be strictly increasing")
    for _, path in checkpoints:
        checkpoint_kind(path)
    directions = read_directions(directions_path)
    layers = ([directions.layer] if cfg.measurement.layers == "chosen"
              else list(directions.layers))
    prompts = eval_prompts(cfg)
    location = read_pointer(pointer)
    base, tok = load_model(location, entry)
    texts = format_prompts(tok, prompts, entry, model_name)
    probe = run_probe(cfg, tok, directions, prompts, texts, layers)
    attrs = provenance(config_hash=cfg.hash(), model_source=entry.source, seed=seed,
                       model=model_name, dataset=dataset, layer=directions.layer,
                       measured_layers=layers, n_prompts=len(prompts),
                       directions_prompt_hash=str(directions.attrs.get("prompt_hash", "")),
                       checkpoints=[str(p) for _, p in checkpoints])
    todo = list(checkpoints) if steps and steps[0] == 0 else [(0, None), *checkpoints]
    out = Path(out)
    building = out.parent / f".{out.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    try:
        store = RunStore(building)
        for step, path in todo:
            kind = None if path is None else checkpoint_kind(path)
            model, _ = load_checkpoint(location, path, entry, base_model=base if kind != "full"
                                       else None, tokenizer=tok,
                                       device=str(next(base.parameters()).device))
            store.append(step_dataset(
                step, probe.measure(model), traits=directions.traits,
                trait_sets=directions.trait_sets, prompt_categories=[p.category for p in prompts],
                directions=directions.at(directions.layer),
                layer_directions=directions.stack(probe.layers)), attrs)
            if kind == "adapter":
                base = model.unload()  # the base model without the LoRA layers, for the next one
            del model
        result = store.load()
        publish_dir(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return result
