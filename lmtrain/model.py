"""The model: transformers' Llama, configured from the recipe, plus its size arithmetic."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from lmtrain.config import Recipe


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


def build_model(config: LlamaConfig, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Fresh, randomly initialised weights (fp32 master copy; mixed precision is Accelerate's job)."""
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)


def count_parameters(config: LlamaConfig) -> int:
    """Exact parameter count, computed on the meta device: no memory is allocated, even for a 7B."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
