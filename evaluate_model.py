"""Evaluate a model directory (an export, a checkpoint's export, any HF causal LM) or a Hub repo with lm-evaluation-harness.

The tasks of a run's in-loop evaluation travel with its export (eval_tasks/) and are lm-eval tasks here, scored
the same way on the same items, so the figures equal the loop's:
    python evaluate_model.py runs/smoke/final                                   # the export's own tasks
    python evaluate_model.py runs/smoke/final --tasks python_lines,arc_easy --limit 200
The standard suite a recipe names (eval.suite), e.g. the 7B's English and Chinese benchmarks:
    python evaluate_model.py runs/llama-7b/final --recipe recipes/llama-7b/pretrain.yaml --batch-size 16 --device cuda
    python evaluate_model.py my-org/llama-7b --revision step020000 --recipe recipes/llama-7b/pretrain.yaml
Hub tasks need their data in the Hugging Face cache. On a machine with network, once (same HF_HOME as the cluster):
    HF_HOME=/shared/hf python evaluate_model.py --prepare --recipe recipes/llama-7b/pretrain.yaml
then on the offline machines: HF_HOME=/shared/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python evaluate_model.py ...
"""

import argparse
import json
import tempfile
from pathlib import Path

from lmtrain.cli import run
from lmtrain.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a model directory (e.g. runs/smoke/final) or a Hub repo id")
    parser.add_argument("--revision", default="", help="with a Hub repo: the branch, tag or commit")
    parser.add_argument("--tasks", default="", help="comma-separated lm-eval task names (default: the model's own)")
    parser.add_argument("--recipe", help="also run the recipe's eval.suite (its standard lm-eval tasks)")
    parser.add_argument("--include-path", action="append", default=[], help="a folder of more lm-eval task configs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default cpu)")
    parser.add_argument("--limit", type=int, help="score at most this many items per task (a quick look)")
    parser.add_argument("--output", help="write lm_eval's results (no per-item samples) to this JSON file")
    parser.add_argument("--prepare", action="store_true", help="download the tasks' data to the cache; score nothing")
    args = parser.parse_args()

    from lmtrain.evals import harness

    suite = []
    if args.recipe:
        from lmtrain.config.recipe import load_recipe

        suite = load_recipe(args.recipe).eval.suite
    with tempfile.TemporaryDirectory(prefix="lm-eval-tasks-") as generated:
        local = []
        if args.model and (tasks_dir := harness.exported_tasks_dir(args.model)):
            local = harness.local_task_configs(tasks_dir, Path(generated))
        tasks = [t for t in args.tasks.split(",") if t] or local
        tasks += [t for t in suite if t not in tasks]
        if not tasks:
            raise UserError("no tasks: name them with --tasks, or --recipe for its eval.suite")
        if not args.prepare and not args.model:
            raise UserError("name the model to evaluate: a model directory or a Hub repo id")
        if args.model and not Path(args.model).is_dir() and args.model.count("/") != 1:
            raise UserError(f"{args.model}: not a model directory, nor a Hub repo id (owner/name)")
        manager = harness.task_manager([Path(generated), *map(Path, args.include_path)])
        harness.check_tasks(manager, tasks)
        if args.prepare:
            print(f"prepared: {', '.join(tasks)} (their data is in the Hugging Face cache now)")
            return
        results = harness.evaluate(args.model, tasks, manager, args.revision, args.batch_size, args.device, args.limit)
    from lm_eval.utils import make_table

    print(make_table(results))
    if args.output:
        kept = {k: results[k] for k in ("results", "versions", "n-shot", "configs") if k in results}
        Path(args.output).write_text(
            json.dumps(kept, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8"
        )


if __name__ == "__main__":
    run(main)
