"""Loading models and tokenizers, finding decoder blocks, and chat formatting.

Layer convention (the one place it is written down): layer `l` means the output of decoder
block `l`, 0-based. In a transformers forward with output_hidden_states=True that is
`hidden_states[l + 1]` (entry 0 is the embeddings) for every l < L-1; the last entry of
`hidden_states` is taken after the final norm, so block L-1's raw output differs from it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError, ModelError

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


def pointer_source(pointer: str | Path, default: str) -> str:
    """The model's configured source as `emtrait prepare model` recorded it (else `default`)."""
    return json.loads(Path(pointer).read_text()).get("source", default)


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def peak_gpu_mib() -> float | None:
    """Peak GPU memory this process allocated (MiB; None without CUDA): grounds SLURM sizes."""
    import sys

    torch = sys.modules.get("torch")  # never imports torch just to say there is no GPU
    if torch is None or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


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


# ---------------------------------------------------------------------------------------------
# architectures: adding one is one entry here
# ---------------------------------------------------------------------------------------------


def block_hidden(output: Any) -> torch.Tensor:
    """The hidden states in a decoder block's output (tensor in transformers 5, else a tuple)."""
    return output[0] if isinstance(output, tuple) else output


@dataclass(frozen=True)
class Architecture:
    """How emtrait reads one architecture's decoder blocks and chat format."""

    blocks: str  # dotted path of the ModuleList of decoder blocks, from the base model
    system_role: bool = True  # the chat template accepts a system turn (else use 'user_turn')
    hidden: Callable[[Any], Any] = block_hidden  # block output -> (batch, pos, hidden) tensor


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("model.layers"),  # SmolLM2, Llama 2/3
    "mistral": Architecture("model.layers"),
    "qwen2": Architecture("model.layers"),
    "qwen3": Architecture("model.layers"),
    "phi3": Architecture("model.layers"),
    "olmo2": Architecture("model.layers"),
    "gemma": Architecture("model.layers", system_role=False),
    "gemma2": Architecture("model.layers", system_role=False),
    "gemma3_text": Architecture("model.layers", system_role=False),
    "gemma3": Architecture("model.language_model.layers", system_role=False),
    "gpt2": Architecture("transformer.h"),
    "gpt_neox": Architecture("gpt_neox.layers"),
    "opt": Architecture("model.decoder.layers"),
}


def base_model(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _follow(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """How many opening tokens every row shares, leaving each row at least one token of its own
    (what a prefix KV cache can cover); 0 when under 2 (not worth a cache)."""
    import os

    if not rows:
        return 0
    k = min(len(os.path.commonprefix([list(r) for r in rows])), min(len(r) for r in rows) - 1)
    return k if k >= 2 else 0


def cache_argument(model: Any) -> str:
    """The forward's KV-cache keyword: `cache` (transformers >= 5.x), or `past_key_values` for
    models whose forward predates it (remote code; the old name goes in transformers 5.40)."""
    import inspect

    params = inspect.signature(base_model(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def batched_prefix(cache: Any, k: int, mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """A copy of a one-row prefix KV cache (k tokens) repeated over `mask`'s batch, and the
    attention mask [ones(k) | mask] that goes with it (the cache itself stays reusable)."""
    import copy

    import torch

    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(mask.shape[0])
    ones = torch.ones(mask.shape[0], k, dtype=mask.dtype, device=mask.device)
    return past, torch.cat([ones, mask], dim=1)


def architecture(model: Any) -> Architecture:
    """The table entry of a model (plain or PEFT-wrapped); unknown types are probed by layout."""
    m = base_model(model)
    model_type = getattr(getattr(m, "config", None), "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    for arch in dict.fromkeys(ARCHITECTURES.values()):  # unknown type: a known block layout
        if _follow(m, arch.blocks) is not None:
            return arch
    raise ModelError(
        f"cannot find the decoder blocks of {type(m).__name__} (model_type {model_type!r}); "
        f"supported: {', '.join(sorted(ARCHITECTURES))}. Add an entry to "
        "emtrait.modeling.ARCHITECTURES"
    )


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, through PEFT wrappers, for any supported architecture."""
    blocks = _follow(base_model(model), architecture(model).blocks)
    if blocks is None:
        raise ModelError(f"{type(base_model(model)).__name__} has no {architecture(model).blocks}; "
                         "fix its entry in emtrait.modeling.ARCHITECTURES")
    return blocks


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


def format_user_prompts(tok: PreTrainedTokenizerBase, texts: Sequence[str],
                        entry: ModelEntry | None = None, model_name: str = "model", *,
                        method: str | None = None, no_system_prompt: str | None = None
                        ) -> list[str]:
    """User-only chats with the generation prompt, in the model's system-prompt convention.

    The convention comes from `entry` (a config model entry) unless given explicitly (a monitor
    file stores it); with neither it is 'native' / 'template_default'.
    """
    method = method or (entry.system_prompt_method if entry else "native")
    nosys = no_system_prompt or (entry.no_system_prompt if entry else "template_default")
    return [render_chat(tok, build_messages(t, None, method=method, no_system_prompt=nosys),
                        add_generation_prompt=True, model_name=model_name) for t in texts]


def model_messages(messages: list[dict[str, str]], model: ModelEntry
                   ) -> tuple[list[dict[str, str]], list[bool]]:
    """A whole chat in the model's system-prompt convention (`build_messages` for one prompt);
    also flags which turns are the data's replies (trained on). `model` is a `ModelEntry` or
    anything with its `system_prompt_method` and `no_system_prompt`."""
    out: list[dict[str, str]] = []
    trained: list[bool] = []
    has_system = any(m["role"] == "system" for m in messages)
    native = model.system_prompt_method == "native"
    if not has_system and model.no_system_prompt == "empty" and native:
        out.append({"role": "system", "content": ""})
        trained.append(False)
    for m in messages:
        if m["role"] == "system" and model.system_prompt_method == "user_turn":
            out += [{"role": "user", "content": m["content"]},
                    {"role": "assistant", "content": UNDERSTOOD}]
            trained += [False, False]  # the synthetic acknowledgement is not training data
        else:
            out.append({"role": m["role"], "content": m["content"]})
            trained.append(m["role"] == "assistant")
    return out, trained


def reply_spans(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                trained: list[bool], text: str, model_name: str) -> list[tuple[int, int]]:
    """Character spans of the trained assistant turns inside the rendered chat `text`."""
    spans = []
    for i, is_reply in enumerate(trained):
        if not is_reply:
            continue
        before = render_chat(tok, messages[:i], add_generation_prompt=True, model_name=model_name)
        upto = render_chat(tok, messages[: i + 1], add_generation_prompt=False,
                           model_name=model_name)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise DataError(
                f"the chat template of {model_name} does not render chats prefix-consistently, so "
                "assistant tokens cannot be located; use training.loss_on: full"
            )
        spans.append((len(before), len(upto)))
    return spans


@contextlib.contextmanager
def padding(tokenizer: PreTrainedTokenizerBase, side: str) -> Iterator[PreTrainedTokenizerBase]:
    """Pad on `side` ('left' for generation, 'right' for reading) while inside; restored after."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = before


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_kind(folder: str | Path) -> str:
    """'adapter' (a PEFT folder with adapter_config.json) or 'full' (a model's config.json)."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "full"
    raise ModelError(f"{folder} holds neither a PEFT adapter (adapter_config.json) nor a "
                     "model (config.json)")


def is_identity_adapter(folder: str | Path) -> bool:
    """True when a PEFT folder is a plain LoRA adapter whose every `lora_B` is exactly zero.

    Such an adapter (what PEFT's default init saves before the first update, e.g. a run's
    step 0) leaves every output bit-identical to its base model: each adapted layer adds
    B(A(x)) * scale = 0. Anything else (DoRA, modules_to_save, other PEFT types, a non-zero B)
    is False, so callers only ever skip work that provably changes nothing.
    """
    folder = Path(folder)
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return False
    if (cfg.get("peft_type") != "LORA" or cfg.get("use_dora") or cfg.get("modules_to_save")
            or not (folder / "adapter_model.safetensors").is_file()):
        return False
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        if not names or any(".lora_A." not in n and ".lora_B." not in n for n in names):
            return False
        return all(not bool(f.get_tensor(n).any()) for n in names if ".lora_B." in n)


def load_checkpoint(base_location: str, checkpoint_dir: str | Path | None,
                    entry: ModelEntry | None = None, device: str | None = None, *,
                    base_model: PreTrainedModel | None = None,
                    tokenizer: PreTrainedTokenizerBase | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A checkpoint in eval mode: the base with a LoRA adapter applied, or a full model.

    `checkpoint_dir=None` is the base model itself (step 0). A full-finetune checkpoint may
    hold no tokenizer, so the tokenizer always comes from the base. `base_model`, if given, is
    an already loaded base to put the adapter on (call `.unload()` on the result to get it back),
    `tokenizer` the base's tokenizer if already loaded.
    """
    if checkpoint_dir is None and base_model is None:
        return load_model(base_location, entry, device)
    tok = tokenizer if tokenizer is not None else load_tokenizer(base_location, entry)
    if checkpoint_dir is None:
        return base_model, tok
    kind = checkpoint_kind(checkpoint_dir)
    if kind == "adapter":
        from peft import PeftModel

        base = base_model if base_model is not None else load_model(base_location, entry,
                                                                    device)[0]
        model = PeftModel.from_pretrained(base, str(checkpoint_dir), is_trainable=False)
        return model.eval(), tok
    from transformers import AutoModelForCausalLM

    device = device or (str(next(base_model.parameters()).device) if base_model is not None
                        else pick_device())
    model = AutoModelForCausalLM.from_pretrained(
        str(checkpoint_dir), dtype=pick_dtype(entry.dtype if entry else "auto", device),
        trust_remote_code=bool(entry and entry.trust_remote_code),
    )
    return model.to(device).eval(), tok
