"""Pretrain a language model from a YAML recipe: a Llama decoder, or an encoder (objective.kind=mlm).

    python train.py recipes/smoke/pretrain.yaml [key.path=value ...]
    python train.py recipes/llama-7b/pretrain.yaml --dry-run
    python train.py recipes/llama-7b/pretrain.yaml --plan --nodes 8 --gpus-per-node 8 --gpu-kind h100
    accelerate launch --config_file recipes/accelerate/<launch>.yaml train.py recipes/llama-7b/pretrain.yaml

The tokenizer and the packed data come first (same recipe):
    python tokenizer/train_tokenizer.py RECIPE && python data_prep/prepare.py RECIPE
"""

from lmtrain.cli import recipe_parser, run
from lmtrain.config.recipe import load_recipe


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved recipe, parameter count and batch arithmetic; build no weights",
    )
    plan = parser.add_argument_group("launch planner (--plan: memory per ZeRO stage and time to the token budget)")
    plan.add_argument(
        "--plan",
        action="store_true",
        help="print parameters, FLOPs/token, per-GPU memory for ZeRO 0-3, batch and time; build no weights",
    )
    plan.add_argument("--nodes", type=int, default=1, help="machines in the launch (default 1)")
    plan.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per machine (default 8)")
    plan.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=80.0,
        help="memory of one GPU as sold, e.g. 80 for an 80 GB H100; counted as GiB (default 80)",
    )
    plan.add_argument(
        "--gpu-kind", default="h100", help="for the peak FLOP/s: h100, h200, a100, l40s, ... (default h100)"
    )
    plan.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilization (default 0.4)")
    args = parser.parse_intermixed_args()  # flags may follow the overrides
    recipe = load_recipe(args.recipe, args.overrides)

    if args.plan:
        from lmtrain.plan import Cluster, plan_report

        print(plan_report(recipe, Cluster(args.nodes, args.gpus_per_node, args.gpu_memory_gb, args.gpu_kind, args.mfu)))
        return
    from lmtrain.training.distributed import launch_world_size

    if args.dry_run:
        from lmtrain.plan import dry_run_report

        print(dry_run_report(recipe, launch_world_size()))
        return
    from lmtrain.training.loop import fit

    if recipe.objective.kind == "mlm":
        from lmtrain.training.encoder import EncoderPretrainTask

        fit(recipe, EncoderPretrainTask(recipe))
        return
    from lmtrain.training.pretrain import PretrainTask

    fit(recipe, PretrainTask(recipe))


if __name__ == "__main__":
    run(main)
