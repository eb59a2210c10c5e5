"""The model: transformers' Llama, configured from the recipe, plus its size arithmetic."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from lmtrain.config.recipe import Recipe
from lmtrain.errors import UserError
from lmtrain.model.speed import apply_speed_switches, check_speed_switches


def llama_config(recipe: Recipe, special_token_ids: dict[str, int] | None = None) -> LlamaConfig:
    """The LlamaConfig a recipe describes. `special_token_ids` (bos/eos/pad) come from the tokenizer."""
    m = recipe.model
    ids = special_token_ids or {}
    return LlamaConfig(
        vocab_size=recipe.tokenizer.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads or m.num_heads,
        max_position_embeddings=m.max_position_embeddings or recipe.data.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
        rms_norm_eps=m.rms_norm_eps,
        initializer_range=m.initializer_range,
        tie_word_embeddings=m.tie_word_embeddings,
        bos_token_id=ids.get("bos"),
        eos_token_id=ids.get("eos"),
        pad_token_id=ids.get("pad"),
        use_cache=True,
    )


def build_model(recipe: Recipe, config: LlamaConfig) -> PreTrainedModel:
    """The model to train: fresh weights, or `model.init_from`'s. fp32 master weights; mixed precision is
    Accelerate's job. Under DeepSpeed ZeRO-3 (Accelerator created first) transformers builds it
    partitioned across ranks with zero.Init, so no host ever holds the whole model. The speed switches this machine
    cannot honour are refused first; Liger and FP8 are applied to the built model (lmtrain/model/speed.py)."""
    m = recipe.model
    check_speed_switches(m)
    if m.init_from:
        model = _load_matching(m.init_from, config, m.attn_implementation)
    else:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=m.attn_implementation, dtype=torch.float32)
    if m.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return apply_speed_switches(model, m)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant: works with frozen inputs and LoRA)."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


_ARCHITECTURE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


def _load_matching(path: str, config: LlamaConfig, attn_implementation: str) -> PreTrainedModel:
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"model.init_from: {path} is not a model directory (no config.json)")
    loaded = AutoConfig.from_pretrained(path)
    mismatches = [
        f"{key}: recipe {getattr(config, key)}, model {getattr(loaded, key, None)}"
        for key in _ARCHITECTURE_KEYS
        if getattr(config, key) != getattr(loaded, key, None)
    ]
    if mismatches:
        raise UserError(
            f"model.init_from: {path} does not match the recipe's model/tokenizer: " + "; ".join(mismatches)
        )
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation, dtype=torch.float32)


def parameter_count(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Parameters of a live model, whole even when ZeRO-3 holds only a shard of each on this rank."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad or not trainable_only)


def count_parameters(config: LlamaConfig) -> int:
    """Exact parameter count, computed on the meta device: no memory is allocated, even for a 7B."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
