"""Pretrain a Llama-architecture language model from a YAML recipe.

    python train.py recipes/smoke/pretrain.yaml [key.path=value ...]
    python train.py recipes/llama-7b/pretrain.yaml --dry-run
    accelerate launch --config_file recipes/accelerate/<launch>.yaml train.py recipes/llama-7b/pretrain.yaml

The tokenizer and the packed data come first (same recipe):
    python tokenizer/train_tokenizer.py RECIPE && python data_prep/prepare.py RECIPE
"""

from lmtrain.cli import recipe_parser, run
from lmtrain.config import load_recipe


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved recipe, parameter count and batch arithmetic; build no weights")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)

    from lmtrain.distributed import launch_world_size
    if args.dry_run:
        from lmtrain.plan import dry_run_report
        print(dry_run_report(recipe, launch_world_size()))
        return
    from lmtrain.trainer import fit
    fit(recipe)


if __name__ == "__main__":
    run(main)
