"""Trait directions per base model (stage `traits`): prompt sets, extraction, the store.

What other stages use: `load_prompt_set` (eval prompts), `load_directions` and `directions_at`
(reading results/traits/{model}/directions.zarr). Heavy libraries load inside the functions.
"""

from emtrait.traits.prompts import EvalPrompt, PromptSet, Trait, load_prompt_set
from emtrait.traits.store import directions_at, load_directions

__all__ = ["EvalPrompt", "PromptSet", "Trait", "directions_at", "load_directions",
           "load_prompt_set"]
