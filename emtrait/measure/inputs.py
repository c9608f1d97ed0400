"""What the workflow measures with: the directions, the eval prompts, and the probe built of them.

The finetuning callback (live weights, no reload) and `emtrait measure` (checkpoints made
elsewhere) both build their probe with `run_probe`, and the reading itself is
`emtrait.live.TraitProbe.measure` (the same one the public live monitor uses), so their numbers
agree. The drift formula is `emtrait.drift`.

Shapes: directions (trait, layer, hidden) in the store; a probe holds (trait, hidden) at l* and
at any extra measured layer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import ConfigError, DataError
from emtrait.modeling import format_user_prompts
from emtrait.traits.prompts import EvalPrompt, load_prompt_set

if TYPE_CHECKING:
    import numpy as np

    from emtrait.config import Config, ModelEntry
    from emtrait.measure.probe import TraitProbe


@dataclass(frozen=True)
class Directions:
    """Unit trait directions read from a directions.zarr store (the traits stage's contract)."""

    layer: int  # chosen l*
    layers: list[int]  # every candidate layer in the store
    traits: list[str]
    trait_sets: list[str]  # set of each trait, aligned with `traits`
    vectors: np.ndarray  # (trait, layer, hidden) float32
    attrs: dict[str, Any]

    def at(self, layer: int) -> np.ndarray:
        """(trait, hidden) directions at one block."""
        return self.vectors[:, self.layers.index(layer), :]

    def stack(self, layers: Sequence[int]) -> np.ndarray:
        """(layer, trait, hidden) directions at the given blocks, in their order."""
        import numpy as np

        return np.stack([self.at(layer) for layer in layers])


def read_directions(path: str | Path) -> Directions:
    """Load every trait set of a directions.zarr store (all sets are measured)."""
    import numpy as np

    from emtrait.traits.store import load_directions

    ds = load_directions(path)  # validates the contract, naming what to fix
    d = ds["direction"].transpose("trait", "layer", "hidden")
    return Directions(
        layer=int(ds.attrs["layer"]), layers=[int(x) for x in d["layer"].values],
        traits=[str(t) for t in d["trait"].values],
        trait_sets=[str(s) for s in ds["trait_set"].values],
        vectors=np.asarray(d.values, dtype=np.float32), attrs=dict(ds.attrs),
    )


# ---------------------------------------------------------------------------------------------
# evaluation prompts
# ---------------------------------------------------------------------------------------------


def eval_prompts(cfg: Config) -> list[EvalPrompt]:
    """The measurement prompts: the trait file's eval prompts, or a YAML/JSONL prompt list."""
    spec = cfg.measurement.prompts
    if spec == "traits":
        prompts = list(load_prompt_set(cfg.traits.file).eval_prompts)
    else:
        prompts = read_prompt_file(spec)
    if not prompts:
        raise DataError(f"no evaluation prompts in {spec!r} (measurement.prompts)")
    return prompts


def read_prompt_file(path: str | Path) -> list[EvalPrompt]:
    """A YAML list (strings or {text, category}), a YAML {category: [texts]} mapping, or JSONL."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"measurement.prompts file {p} does not exist")
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    else:
        data = yaml.safe_load(p.read_text())
        if isinstance(data, dict):
            data = data.get("eval_prompts", data)
        if isinstance(data, dict):
            rows = [{"category": c, "text": t} for c, texts in data.items() for t in texts]
        else:
            rows = data or []
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            out.append(EvalPrompt("", row))
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            out.append(EvalPrompt(str(row.get("category", "")), row["text"]))
        else:
            raise DataError(f"{p}: prompt {i} is neither a string nor a {{text, category}} entry")
    return out


def format_prompts(tok: Any, prompts: list[EvalPrompt], entry: ModelEntry, model_name: str
                   ) -> list[str]:
    """The eval prompts as user-only chats in the model's convention (`format_user_prompts`)."""
    return format_user_prompts(tok, [p.text for p in prompts], entry, model_name)


def run_probe(cfg: Config, tok: Any, directions: Directions, prompts: list[EvalPrompt],
              texts: list[str], layers: list[int]) -> TraitProbe:
    """The workflow's probe: every trait at l* (and the other `layers`), config batch/prefix."""
    from emtrait.measure.probe import TraitProbe

    if not prompts:
        raise DataError("no evaluation prompts to measure with (measurement.prompts)")
    return TraitProbe(directions=directions.at(directions.layer), traits=directions.traits,
                      layer=directions.layer, texts=texts, tokenizer=tok,
                      batch_size=cfg.measurement.batch_size,
                      prefix_cache=cfg.measurement.prefix_cache,
                      extra_layers={la: directions.at(la) for la in layers
                                    if la != directions.layer})
