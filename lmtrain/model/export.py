"""Export: the trained model as a plain Hugging Face model directory (or, with LoRA, a peft adapter
directory that generate.py loads and `finetune.py merge` turns into a plain one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lmtrain.config.recipe import recipe_to_yaml
from lmtrain.model.adapters import LABELS_FILE, is_peft


def export_model(
    accelerator: Accelerator,
    model,
    tokenizer: PreTrainedTokenizerBase,
    recipe,
    out_dir: Path,
    generation_config: GenerationConfig | None = None,
    labels: list[str] | None = None,
) -> None:
    """Write safetensors weights (or the adapter), config.json, generation_config.json, the tokenizer and the
    resolved recipe to `out_dir`, loadable with plain transformers classes and no custom code. A classifier
    has no generation config; `labels` are written next to a classification adapter, whose config does
    not hold them.

    Every process must call this: under ZeRO-3 the full weights are gathered from all ranks. A bf16 run exports
    bf16 weights (what it computed with, half the download); the shards are at most `recipe.hub.max_shard_size`."""
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    main, adapter = accelerator.is_main_process, is_peft(unwrapped)
    bf16 = accelerator.mixed_precision == "bf16" and not adapter
    if bf16 and main:
        state_dict = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state_dict.items()}
    out_dir = Path(out_dir)
    if main and out_dir.exists():
        shutil.rmtree(out_dir)
    accelerator.wait_for_everyone()
    if generation_config is not None and not adapter:
        unwrapped.generation_config = generation_config
    unwrapped.save_pretrained(
        out_dir,
        is_main_process=main,
        state_dict=state_dict,
        **({} if adapter else {"save_function": accelerator.save, "max_shard_size": recipe.hub.max_shard_size}),
    )
    if main:
        if bf16:  # save_pretrained writes the dtype of the model's own (fp32) parameters; the weights are bf16
            config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
            (out_dir / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}, indent=2) + "\n")
        tokenizer.save_pretrained(out_dir)
        if adapter and generation_config is not None:
            generation_config.save_pretrained(out_dir)
        if adapter and labels is not None:
            (out_dir / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=1) + "\n", encoding="utf-8")
        (out_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    accelerator.wait_for_everyone()
