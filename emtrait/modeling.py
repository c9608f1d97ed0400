"""Loading models and tokenizers, finding decoder blocks, and chat formatting.

Layer convention (the one place it is written down): layer `l` means the output of decoder
block `l`, 0-based. In a transformers forward with output_hidden_states=True that is
`hidden_states[l + 1]` (entry 0 is the embeddings) for every l < L-1; the last entry of
`hidden_states` is taken after the final norm, so block L-1's raw output differs from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emtrait.config import ModelEntry

UNDERSTOOD = "Understood. I will follow these instructions."


def read_pointer(pointer: str | Path) -> str:
    """The loadable location (local folder or hub id) recorded by `emtrait prepare model`."""
    p = Path(pointer)
    if not p.is_file():
        raise ModelError(f"model pointer {p} is missing; run `emtrait prepare model` first")
    data = json.loads(p.read_text())
    if data.get("kind") == "hub":
        return data["path"]
    return str((p.resolve().parent / data["path"]).resolve())  # local paths: relative to p


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str) -> torch.dtype:
    """'auto' is bfloat16 on GPU and float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(location: str, entry: ModelEntry | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token (eos if it has none) and right padding by default."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        location, trust_remote_code=bool(entry and entry.trust_remote_code),
        revision=entry.revision if entry else None,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(location: str, entry: ModelEntry | None = None, device: str | None = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode; never trusts remote code unless asked."""
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    dtype = pick_dtype(entry.dtype if entry else "auto", device)
    model = AutoModelForCausalLM.from_pretrained(
        location, dtype=dtype, trust_remote_code=bool(entry and entry.trust_remote_code),
        revision=entry.revision if entry else None,
    )
    model.to(device).eval()
    return model, load_tokenizer(location, entry)


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, through PEFT wrappers, for any supported architecture."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
                 "model.language_model.layers"):
        obj = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise ModelError(
        f"cannot find the decoder blocks of {type(m).__name__}; supported layouts: "
        "model.layers (Llama, Qwen2, Mistral, Gemma-2, Phi-3), transformer.h, gpt_neox.layers"
    )


def check_layers(model: Any, layers: list[int], model_name: str = "model") -> None:
    """Raise a ModelError naming the model and the valid range if a layer does not exist."""
    n = len(decoder_layers(model))
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ModelError(
            f"layers {bad} are outside {model_name}'s decoder blocks 0..{n - 1} ({n} blocks); "
            f"fix candidate_layers under models.{model_name}"
        )


def linear_module_names(model: Any) -> list[str]:
    """Distinct leaf names of the model's Linear modules (what LoRA target_modules may name)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear)}
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# chat formatting
# ---------------------------------------------------------------------------------------------


def build_messages(user: str, system: str | None = None, *, method: str = "native",
                   no_system_prompt: str = "template_default") -> list[dict[str, str]]:
    """Messages for one prompt, honouring the model's system-prompt method.

    `user_turn` (models without a system role, e.g. Gemma-2) puts the system prompt in a user
    turn answered by the assistant with UNDERSTOOD, before the real question. With no system
    prompt, `no_system_prompt='empty'` adds an empty system turn so templates that inject a
    default one (SmolLM2) do not.
    """
    if system is None:
        if no_system_prompt == "empty" and method == "native":
            return [{"role": "system", "content": ""}, {"role": "user", "content": user}]
        return [{"role": "user", "content": user}]
    if method == "native":
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if method == "user_turn":
        return [
            {"role": "user", "content": system},
            {"role": "assistant", "content": UNDERSTOOD},
            {"role": "user", "content": user},
        ]
    raise ModelError(f"unknown system_prompt_method '{method}' (use 'native' or 'user_turn')")


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                add_generation_prompt: bool = True, model_name: str = "model") -> str:
    """Chat-format messages to text; a tokenizer without a chat template is an error."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"the tokenizer of {model_name} has no chat template; emtrait needs an instruct "
            "model (set tokenizer.chat_template, or save one as chat_template.jinja)"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
