"""Encoders: transformers' BERT (classic, MLM + NSP heads) and ModernBERT (modern, MLM), configured from the recipe.

No modelling code of our own: `BertForPreTraining` carries both of BERT's heads (masked tokens and the
next-sentence pair label, on the pooled [CLS]), `BertForMaskedLM` only the first (RoBERTa's recipe: NSP dropped),
`ModernBertForMaskedLM` is the ModernBERT design (RoPE, GeGLU, alternating local/global attention, no biases).
`model_config` and `model_class` serve every architecture, the decoder's Llama included, so that the loop,
the planner and the export read the same whatever the recipe trains.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)

from lmtrain.config.recipe import Recipe
from lmtrain.errors import UserError
from lmtrain.model.llama import enable_activation_checkpointing, llama_config
from lmtrain.model.speed import check_speed_switches

ENCODERS = ("bert", "modernbert")


def is_encoder(recipe: Recipe) -> bool:
    return recipe.model.architecture in ENCODERS


def model_config(recipe: Recipe, special_token_ids: dict[str, int] | None = None) -> PretrainedConfig:
    """The transformers config a recipe describes, for any architecture. `special_token_ids` come from the
    tokenizer: bos/eos/pad for a decoder, and also cls/sep/mask for an encoder."""
    if recipe.model.architecture == "llama":
        return llama_config(recipe, special_token_ids)
    if recipe.model.architecture == "bert":
        return bert_config(recipe, special_token_ids)
    return modernbert_config(recipe, special_token_ids)


def bert_config(recipe: Recipe, special_token_ids: dict[str, int] | None = None) -> BertConfig:
    """BERT (Devlin et al. 2018): learned absolute positions, post-LayerNorm, GELU MLP of `intermediate_size`,
    two token types (segments A and B). Dropout 0.1 as the original unless model.dropout says otherwise."""
    m, ids = recipe.model, special_token_ids or {}
    dropout = {} if m.dropout is None else {"hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.dropout}
    return BertConfig(
        vocab_size=recipe.tokenizer.vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings or recipe.data.seq_len,
        type_vocab_size=2,
        initializer_range=m.initializer_range,
        pad_token_id=ids.get("pad", 0),
        tie_word_embeddings=True,
        **dropout,
    )


def modernbert_config(recipe: Recipe, special_token_ids: dict[str, int] | None = None) -> ModernBertConfig:
    """ModernBERT (Warner et al. 2024): RoPE, GeGLU of `intermediate_size`, pre-norm without biases, a global
    attention layer every third layer and sliding windows of `model.local_attention` tokens between them.
    Classification pools the mean of the tokens: the packed MLM blocks hold no [CLS] to learn a summary in."""
    m, ids = recipe.model, special_token_ids or {}
    dropout = (
        {} if m.dropout is None else dict.fromkeys(("embedding_dropout", "mlp_dropout", "attention_dropout"), m.dropout)
    )
    return ModernBertConfig(
        vocab_size=recipe.tokenizer.vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings or recipe.data.seq_len,
        local_attention=m.local_attention,
        initializer_range=m.initializer_range,
        norm_eps=m.rms_norm_eps,
        pad_token_id=ids.get("pad"),
        eos_token_id=ids.get("sep"),
        bos_token_id=ids.get("cls"),
        cls_token_id=ids.get("cls"),
        sep_token_id=ids.get("sep"),
        classifier_pooling="mean",
        tie_word_embeddings=True,
        **dropout,
    )


def model_class(recipe: Recipe) -> type:
    """The transformers class that trains the recipe's objective."""
    if recipe.model.architecture == "llama":
        return AutoModelForCausalLM
    if recipe.model.architecture == "bert":
        return BertForPreTraining if recipe.objective.nsp else BertForMaskedLM
    return ModernBertForMaskedLM


def build_encoder(recipe: Recipe, config: PretrainedConfig) -> PreTrainedModel:
    """A freshly initialized encoder, fp32 master weights (under ZeRO-3, built partitioned as the decoder)."""
    check_speed_switches(recipe.model)
    cls, m = model_class(recipe), recipe.model
    if m.init_from:
        model = _load_matching(cls, m.init_from, config, m.attn_implementation)
    else:
        model = cls._from_config(config, attn_implementation=m.attn_implementation, dtype=torch.float32)
    if recipe.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


def _load_matching(cls: type, path: str, config: PretrainedConfig, attn_implementation: str) -> PreTrainedModel:
    """The weights of `path` (continued pretraining), refused unless its shape is the recipe's."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"model.init_from: {path} is not a model directory (no config.json)")
    loaded = AutoConfig.from_pretrained(path)
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    mismatches = [f"{k}: recipe {getattr(config, k)}, model {getattr(loaded, k, None)}" for k in keys
                  if getattr(config, k) != getattr(loaded, k, None)]  # fmt: skip
    if mismatches:
        raise UserError(f"model.init_from: {path} does not match the recipe's model: " + "; ".join(mismatches))
    return cls.from_pretrained(path, attn_implementation=attn_implementation, dtype=torch.float32)


def recipe_parameter_count(recipe: Recipe) -> int:
    """Exact parameter count of the recipe's model, on the meta device (nothing allocated)."""
    config = model_config(recipe)
    with torch.device("meta"):
        if recipe.model.architecture == "llama":
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = model_class(recipe)._from_config(config)
    return sum(p.numel() for p in model.parameters())
