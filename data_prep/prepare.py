"""Clean, filter, deduplicate and tokenize a recipe's corpus into per-source token shards in data.dir.

    python data_prep/prepare.py recipes/smoke/pretrain.yaml [key.path=value ...]
    python data_prep/prepare.py RECIPE data.workers=64 data.tasks=1024           (one node, 64 processes)
    python data_prep/prepare.py RECIPE data.tasks=1024 --slurm-partition cpu    (a cluster: sbatch job arrays)

Runs as data.tasks independent tasks on datatrove (lmtrain/data/workers.py), data.workers at once; a run that
stopped resumes with the tasks that had not finished. With --slurm-partition the stages are submitted as
dependent SLURM job arrays and a last job writes data.dir; run the same command again to resubmit what failed.

Needs the recipe's tokenizer (python tokenizer/train_tokenizer.py RECIPE). Re-running with
unchanged inputs reuses data.dir; see data.dir/manifest.json for what went in.
"""

from lmtrain.cli import recipe_parser, run
from lmtrain.config.recipe import load_recipe
from lmtrain.data.prepare import prepare_data, submit_to_slurm
from lmtrain.data.workers import SlurmOptions


def main() -> None:
    parser = recipe_parser(__doc__.splitlines()[0])
    parser.add_argument("--slurm-partition", help="submit the tasks to this SLURM partition instead of running here")
    parser.add_argument("--slurm-time", default="24:00:00", help="time limit of each SLURM task")
    parser.add_argument("--slurm-cpus-per-task", type=int, default=4, help="cores per SLURM task")
    parser.add_argument("--slurm-env", help="shell line each SLURM task runs first, e.g. 'source .venv/bin/activate'")
    args = parser.parse_intermixed_args()
    recipe = load_recipe(args.recipe, args.overrides)
    if args.slurm_partition:
        options = SlurmOptions(
            args.slurm_partition, args.slurm_time, args.slurm_cpus_per_task, env_command=args.slurm_env
        )
        submit_to_slurm(recipe, options)
        print(
            f"data: submitted {recipe.data.tasks} tasks per stage to {args.slurm_partition}; the last job writes {recipe.data.dir}"
        )
        return
    manifest = prepare_data(recipe)
    docs = manifest["documents"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in docs["skipped"].items()) or "none"
    dedup, filters = manifest["dedup"], manifest["filters"]
    print(
        f"data: {recipe.data.dir} (seq_len {manifest['inputs']['seq_len']}, "
        f"tokenizer {manifest['inputs']['tokenizer_fingerprint'][:12]}, built in {manifest['seconds']:.1f} s)"
    )
    print(f"  documents: {docs['read']:,} read, {docs['kept']:,} packed; skipped: {skipped}")
    removed = ", ".join(f"{n} {reason}" for reason, n in filters["removed"].items()) or "none"
    print(f"  quality filters removed: {removed}; boilerplate lines removed: {filters['boilerplate_lines_removed']:,}")
    print(f"  duplicates removed: {dedup['exact_duplicates']:,} exact, {dedup['near_duplicates']:,} near")
    if timing := manifest.get("read_stage"):  # absent from data prepared before it was measured
        phases = ", ".join(f"{phase} {s:.1f} s" for phase, s in timing["seconds"].items())
        print(f"  read tasks, summed: {phases} (encoder threads per task: {timing['encoder_threads']})")
        stages = ", ".join(f"{stage} {s:.1f} s" for stage, s in manifest["stage_seconds"].items())
        print(f"  stages, wall time: {stages}")
    print(f"  {'source':<40}{'weight':>8}{'target':>8}{'documents':>11}{'tokens':>14}  (weights apply when training)")
    for s in manifest["sources"]:
        print(
            f"  {s['name'][-40:]:<40}{s['weight']:>8g}{s['target_token_share']:>8.1%}"
            f"{s['documents']:>11,}{s['tokens']:>14,}"
        )
    print(f"  {'split':<12}{'documents':>12}{'tokens':>14}{'blocks':>10}{'dropped tail':>14}")
    for split, s in manifest["splits"].items():
        print(f"  {split:<12}{s['documents']:>12,}{s['tokens']:>14,}{s['blocks']:>10,}{s['dropped_tail_tokens']:>14,}")


if __name__ == "__main__":
    run(main)
