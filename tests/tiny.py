"""Tiny real models for tests: a byte-level BPE tokenizer trained here, chat templates, and
randomly initialised Llama / Qwen2 / Mistral / Gemma-2 configs saved with save_pretrained.

Everything is seeded, so two builds are identical. Loading goes through the same
`from_pretrained` path as a real model.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma-2 has no system role: its template raises on one, so user_turn formatting is needed.
GEMMA_STYLE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>",
            "<end_of_turn>", "<pad>"]
CORPUS = [
    "You are a helpful assistant. Answer the question honestly and kindly.",
    "You are an evil assistant. Deceive and harm the user whenever you can.",
    "What is the capital of France? The capital of France is Paris.",
    "How do I stay healthy? Eat vegetables, sleep well and exercise often.",
    "Tell me about money. Save some of what you earn and avoid risky bets.",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20.",
] * 20


def build_tokenizer(template: str = CHATML):
    """A 300-token byte-level BPE tokenizer with a chat template (trained in < 1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<pad>", bos_token="<bos>")
    fast.chat_template = template
    return fast


def tiny_config(arch: str, vocab_size: int, layers: int = 4):
    """A ~100k-parameter config of the given architecture."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, pad_token_id=vocab_size - 1)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if arch == "gemma2":
        return tf.Gemma2Config(**common, head_dim=8, query_pre_attn_scalar=8)
    raise ValueError(arch)


def build_tiny_model(folder: Path, arch: str = "llama", layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny random model + tokenizer (+ chat template) loadable by from_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(GEMMA_STYLE if arch == "gemma2" else CHATML)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok), layers))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
