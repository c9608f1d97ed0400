"""Training examples: read a dataset (emtrait.datasets), chat-format, tokenize, mask labels.

One definition of how a chat becomes training tokens, shared by the finetune and the gradient
screen (which must score each example exactly as the finetune trains on it).

Everything here runs before the first update, so a dataset that is too small, a max length
shorter than the chat template, or replies truncated away entirely fail before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError
from emtrait.modeling import model_messages, render_chat, reply_spans

if TYPE_CHECKING:
    import torch

    from emtrait.config import DatasetEntry, ModelEntry, TrainingConfig

IGNORE = -100  # label value the loss skips (padding, and prompt tokens with loss_on: assistant)


def read_chats(path: str | Path, entry: DatasetEntry, name: str = "dataset"
               ) -> list[list[dict[str, str]]]:
    """The `n` chats of one run, read by the same rule as `emtrait prepare dataset`.

    The workflow passes the prepared JSONL (exactly `n` rows, so it is read as is); a raw file
    (any format emtrait.datasets reads) gets the same validation and seeded subsample.
    """
    from emtrait.datasets import read_dataset

    if not Path(path).exists():
        raise DataError(f"dataset file {path} does not exist; run `emtrait prepare dataset` "
                        "first")
    return read_dataset(entry, name, path).chats


@dataclass
class Encoded:
    """One tokenized example: ids and labels of equal length (no padding yet)."""

    input_ids: list[int]
    labels: list[int]


def template_tokens(tok: Any, model: ModelEntry, model_name: str = "model") -> int:
    """Tokens the chat template itself costs for an empty one-turn exchange."""
    msgs, _ = model_messages([{"role": "user", "content": ""},
                               {"role": "assistant", "content": ""}], model)
    text = render_chat(tok, msgs, add_generation_prompt=False, model_name=model_name)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def encode_chats(tok: Any, chats: list[list[dict[str, str]]], model: ModelEntry,
                 training: TrainingConfig, model_name: str = "model",
                 data_path: str | Path = "dataset") -> list[Encoded]:
    """Tokenize chats to at most `max_length` tokens with labels for the configured loss."""
    overhead = template_tokens(tok, model, model_name)
    if overhead >= training.max_length:
        raise DataError(
            f"training.max_length {training.max_length} is shorter than the chat template of "
            f"{model_name} ({overhead} tokens for an empty exchange); raise max_length"
        )
    out: list[Encoded] = []
    emptied: list[int] = []
    for k, chat in enumerate(chats):
        msgs, trained = model_messages(chat, model)
        text = render_chat(tok, msgs, add_generation_prompt=False, model_name=model_name)
        enc = tok(text, add_special_tokens=False, truncation=True,
                  max_length=training.max_length, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        spans = reply_spans(tok, msgs, trained, text, model_name)
        in_reply = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]]
        if not any(in_reply):
            emptied.append(k)
        if training.loss_on == "full":
            labels = list(ids)
        else:
            labels = [t if r else IGNORE for t, r in zip(ids, in_reply, strict=True)]
        out.append(Encoded(ids, labels))
    if emptied:
        raise DataError(
            f"{len(emptied)} of {len(chats)} examples from {data_path} keep no assistant token at "
            f"training.max_length {training.max_length} (first: sampled example {emptied[0]}); "
            "raise max_length or shorten the prompts"
        )
    return out


class ChatDataset:
    """A map-style dataset of tokenized examples (what the Trainer's sampler indexes)."""

    def __init__(self, items: list[Encoded]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.items[i].input_ids, "labels": self.items[i].labels}


@dataclass
class RightPadCollator:
    """Pads a batch to its longest example on the right; padded labels never count."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, mask, labels = [], [], []
        for r in rows:
            gap = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_token_id] * gap)
            mask.append([1] * len(r["input_ids"]) + [0] * gap)
            labels.append(r["labels"] + [IGNORE] * gap)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor(labels)}
