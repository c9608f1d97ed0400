"""Left-padded scoring forwards: the one place the behaviour stage builds padded batches.

Left padding puts every row's last token in the last column, so the logits that matter (the
next token for a judge, an answer's tokens for the choice probe) sit in the last `keep`
columns and only those go through the LM head. Position ids count real tokens only, so a
padded row gets the same positions (and logits) as the row alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def prefix_cache(model: Any, prefix: Sequence[int]) -> Any:
    """KV cache of token ids every row starts with (chat template, default system prompt):
    run once, then each batch runs only its rows' remaining tokens on a copy."""
    import torch
    from transformers import DynamicCache

    from emtrait.modeling import cache_argument

    device = next(model.parameters()).device
    ids = torch.tensor([list(prefix)], device=device)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
              logits_to_keep=1, **{cache_argument(model): cache})
    return cache


def left_padded_logits(model: Any, rows: Sequence[Sequence[int]], pad_id: int, keep: int,
                       prefix: tuple[Any, int] | None = None) -> Any:
    """Logits (batch, keep, vocab) of the last `keep` positions of left-padded token rows.

    `prefix` = (`prefix_cache(...)`, its length k): the rows are what follows those k shared
    tokens; the batch reads [prefix | padding | row], with positions counted past the prefix.
    """
    import torch

    from emtrait.modeling import batched_prefix, cache_argument

    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    extra: dict[str, Any] = {"use_cache": False}
    if prefix is not None:
        cache, k = prefix
        past, mask = batched_prefix(cache, k, mask)
        position_ids = position_ids + k
        extra = {"use_cache": True, cache_argument(model): past}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                     logits_to_keep=keep, **extra).logits
