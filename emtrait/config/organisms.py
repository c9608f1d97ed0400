"""The `organisms` section: tiny persona-conditioned Llamas built locally."""

from __future__ import annotations

from pydantic import Field, model_validator

from emtrait.config.base import Section


class OrganismEntry(Section):
    """A tiny persona-conditioned Llama built locally with a known answer (`emtrait organism`)."""

    seed: int = Field(0, description="Seed of the corpus, tokenizer order, init and batches.")
    corpus_size: int = Field(20000, ge=100, description="Synthetic pretraining chats.")
    vocab_size: int = Field(1024, ge=300, description="Byte-level BPE vocabulary size.")
    hidden_size: int = Field(128, ge=8, description="Residual-stream width.")
    intermediate_size: int = Field(352, ge=8, description="MLP width.")
    num_layers: int = Field(4, ge=1, description="Decoder blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    max_length: int = Field(128, ge=16, description="Tokens per pretraining chat (truncated).")
    steps: int = Field(400, ge=1, description="Pretraining optimizer steps (loss ~0.27 by 400).")
    batch_size: int = Field(32, ge=1, description="Chats per pretraining step.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate (cosine decay).")
    threads: int = Field(1, ge=1, description="CPU threads (results depend on it bit-wise).")

    @model_validator(mode="after")
    def _heads_divide(self) -> OrganismEntry:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must divide by num_heads {self.num_heads}, "
                f"and num_heads by num_kv_heads {self.num_kv_heads}"
            )
        return self
