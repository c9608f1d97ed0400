"""Left-padded scoring forwards: the one place the behaviour stage builds padded batches.

Left padding puts every row's last token in the last column, so the logits that matter (the
next token for a judge, an answer's tokens for the choice probe) sit in the last `keep`
columns and only those go through the LM head. Position ids count real tokens only, so a
padded row gets the same positions (and logits) as the row alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def left_padded_logits(model: Any, rows: Sequence[Sequence[int]], pad_id: int, keep: int
                       ) -> Any:
    """Logits (batch, keep, vocab) of the last `keep` positions of left-padded token rows."""
    import torch

    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                     use_cache=False, logits_to_keep=keep).logits
