"""Fine-tune a pretrained model from a YAML recipe: instruction tuning (SFT) or classification.

    python finetune.py recipes/smoke/sft.yaml [key.path=value ...]
    python finetune.py recipes/smoke/classify.yaml lora.enabled=true run_dir=runs/smoke-classify-lora
    python finetune.py recipes/llama-7b/sft.yaml --dry-run
    accelerate launch --config_file recipes/accelerate/<launch>.yaml finetune.py recipes/llama-7b/sft.yaml

A LoRA run (lora.enabled=true) exports the adapter; merge it into a plain model directory with
    python finetune.py merge runs/smoke-sft-lora/final runs/smoke-sft-lora/merged [--base BASE_MODEL_DIR]

The base model (base_model) comes from pretraining: `make smoke` writes runs/smoke/final.
"""

import sys

from lmtrain.cli import recipe_parser, run


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "merge":
        return merge(sys.argv[2:])
    parser = recipe_parser(__doc__)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe, base model and data; print what would be trained; train nothing",
    )
    args = parser.parse_intermixed_args()  # flags may follow the overrides
    from lmtrain.config.finetune import FinetuneRecipe
    from lmtrain.config.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides, schema=FinetuneRecipe)
    from lmtrain.finetune import finetune_task

    task = finetune_task(recipe)
    if args.dry_run:
        from lmtrain.config.recipe import recipe_to_yaml

        print(recipe_to_yaml(recipe))
        print(task.describe())
        return
    from lmtrain.training.loop import fit

    fit(recipe, task)  # its last line names the best step when train.best_metric is set


def merge(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="finetune.py merge",
        description="Merge a LoRA adapter into its base model and write a plain Hugging "
        "Face model directory (safetensors, config, tokenizer).",
    )
    parser.add_argument("adapter_dir", help="the adapter: final/ or best/ of a run with lora.enabled=true")
    parser.add_argument("out_dir", help="where to write the merged model")
    parser.add_argument("--base", help="the base model directory (default: the one recorded in the adapter)")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists and is not empty")
    args = parser.parse_args(argv)
    from lmtrain.finetune.base import merge_adapter

    out = merge_adapter(args.adapter_dir, args.out_dir, args.base, args.overwrite)
    print(
        f"merged {args.adapter_dir} into its base model → {out} (load it with AutoModelForCausalLM / "
        "AutoModelForSequenceClassification)"
    )


if __name__ == "__main__":
    run(main)
