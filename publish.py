"""Publish an existing run to a model hub (the Hugging Face Hub, or the server HF_ENDPOINT names).

    python publish.py runs/smoke --repo-id me/smoke                  # final/ on main, best/, each kept checkpoint
    python publish.py runs/smoke --repo-id me/smoke --no-checkpoints
    python publish.py runs/smoke --tokenizer-repo me/smoke-tokenizer --dataset-repo me/smoke-data

The model goes where the run's recipe says (hub.repo_id) unless --repo-id is given. Each kept checkpoint becomes
a branch named by its step and tokens seen (`step0000300-tokens1.23M`), exported as a plain Hugging Face model with
its card; best/ becomes `best`; final/ goes on `main`, its card listing the branches. Run it again at any time: what
the hub already has is not uploaded again. The token comes from HF_TOKEN or `hf auth login`.
"""

import argparse
from pathlib import Path

import yaml

from lmtrain.cli import run
from lmtrain.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory: runs/<name> of train.py or finetune.py")
    parser.add_argument("--repo-id", help="the model repository, org/name (default: the recipe's hub.repo_id)")
    parser.add_argument("--public", action="store_true", help="create missing repositories public (default: private)")
    parser.add_argument("--no-checkpoints", action="store_true", help="publish final/ (and best/) only")
    parser.add_argument("--tokenizer-repo", help="also publish the run's tokenizer to this repository (pretraining)")
    parser.add_argument("--dataset-repo", help="also publish the packed dataset to this dataset repository")
    args = parser.parse_args()
    overrides = [f"hub.private={not args.public}", f"hub.push={'final' if args.no_checkpoints else 'checkpoints'}"]
    recipe, task = load_run(Path(args.run_dir), overrides + ([f"hub.repo_id={args.repo_id}"] if args.repo_id else []))
    facts = task.card_facts()
    if (args.tokenizer_repo or args.dataset_repo) and facts.get("manifest") is None:
        raise UserError("--tokenizer-repo and --dataset-repo publish a pretraining run's own tokenizer and data; a "
                        "fine-tuning run's tokenizer is its base model's")  # fmt: skip
    from lmtrain.training.publishing import publish_dataset, publish_run, publish_tokenizer

    publish_run(recipe, task, checkpoints=not args.no_checkpoints)
    if args.tokenizer_repo:
        publish_tokenizer(recipe, args.tokenizer_repo, not args.public)
    if args.dataset_repo:
        publish_dataset(recipe, facts["manifest"], facts["languages"], args.dataset_repo, not args.public)


def load_run(run_dir: Path, overrides: list[str]):
    """The run's resolved recipe (run_dir/recipe.yaml, pretraining's or fine-tuning's) and its task."""
    from lmtrain.config.finetune import FinetuneRecipe
    from lmtrain.config.recipe import Recipe, load_recipe

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: no recipe.yaml; pass the directory of a run of train.py or finetune.py")
    finetune = "base_model" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    recipe = load_recipe(path, overrides, schema=FinetuneRecipe if finetune else Recipe)
    if not recipe.hub.repo_id:
        raise UserError(f"{path}: hub.repo_id is not set; pass --repo-id org/name")
    if finetune:
        from lmtrain.finetune import finetune_task

        return recipe, finetune_task(recipe)
    from lmtrain.training.pretrain import PretrainTask

    return recipe, PretrainTask(recipe)


if __name__ == "__main__":
    run(main)
