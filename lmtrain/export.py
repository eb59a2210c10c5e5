"""Export: the trained model as a plain Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lmtrain.config import Recipe, recipe_to_yaml


def export_model(accelerator: Accelerator, model, tokenizer: PreTrainedTokenizerBase, recipe: Recipe,
                 out_dir: Path) -> None:
    """Write safetensors weights, config.json, generation_config.json, the tokenizer and the resolved
    recipe to `out_dir`, loadable with AutoModelForCausalLM/AutoTokenizer and no custom code.

    Every process must call this: under ZeRO-3 the full weights are gathered from all ranks."""
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    unwrapped.save_pretrained(out_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=state_dict)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(out_dir)
        (Path(out_dir) / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    accelerator.wait_for_everyone()
