"""Data engine: datatrove against Ray on the same work, so that only the engine differs.

    python benchmarks/data_engine.py [--tasks 8] [--repeats 2]

The work: stage 1 of data preparation (lmtrain.data.workers.ReadStep: read, clean, filter, tokenize, dedup keys)
for --tasks tasks over the standard library, with data_prep_scaling.py's corpus and recipe (the 7B's code-source
settings, exact and near dedup keys, a byte-level BPE of 8,192 tokens trained first, outside the clock). Each task
calls the same `ReadStep(recipe, work, threads).run(rank=i, world_size=tasks)`, with `threads` as run_stages sets
it (cores // workers). Engines, each run with 1 and 2 workers:

- datatrove:     LocalPipelineExecutor(pipeline=[step], tasks, workers, start_method=START_METHOD): what the repo uses;
- ray:           ray.init(num_cpus=workers) on loopback, no dashboard; one `ray.remote(num_cpus=1)` task per rank,
                 ray.get on all; ray.shutdown();
- ray_data:      the same cluster; `ray.data.from_items(ranks, override_num_blocks=tasks).map(run_rank,
                 compute=TaskPoolStrategy(size=workers), num_cpus=1).materialize()`: Ray Data's idiomatic form;
- datatrove_ray: datatrove's own RayPipelineExecutor (one placement group and actor per task) on the same cluster.

Measured per engine and worker count, every run in a fresh process (`--run`, so no engine state carries over),
configurations alternating, best of --repeats (the machine is shared):

- wall: the whole job: engine start-up, the tasks, shutdown (ray.shutdown stops the cluster's processes);
- startup: ray.init alone / the executor's constructor alone (datatrove forks its workers inside run());
- peak memory of the process tree: every 0.2 s this script lists the run's process and all its descendants
  (psutil; Ray's gcs_server, raylet, agents and workers are all descendants of the driver) and sums their RSS
  (counts pages shared by forked workers once per process) and their PSS (each shared page split among its
  sharers, so the sum counts it once); the peak of each sum is reported, with the process count at the PSS peak;
- identical: the sha256 of every file each task wrote (tokens.bin, lengths, validation flags, dedup keys, held-out
  text, counts) is the same for every run of every engine;
- re-run after success (2 workers, once): the same command on the finished work directory. datatrove skips every
  task with a completion mark (logging_dir/completions/<rank>); plain Ray has no marks and runs every task again;
  "ray_marked" is Ray with the check the repo would have to add (skip a rank whose task-<rank>.json, the file a
  read task writes last, exists).

Prints the load average before and after and ends with one JSON line. Needs Ray, which the product does not:
pip install ray==2.60.0.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("datatrove", "ray", "ray_data", "datatrove_ray")
NEEDS_RAY = "this benchmark needs Ray: pip install ray==2.60.0"
SAMPLE_EVERY_S = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="tasks (slices of the corpus)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration; the best is kept")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument(
        "--run", nargs=5, metavar=("ENGINE", "WORKERS", "TASKS", "RECIPE", "WORK"), help=argparse.SUPPRESS
    )
    parser.add_argument("--skip-done", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if importlib.util.find_spec("ray") is None:
        sys.exit(NEEDS_RAY)
    if args.run:
        engine, workers, tasks, recipe, work = args.run
        print(json.dumps(run_engine(engine, int(workers), int(tasks), Path(recipe), Path(work), args.skip_done)))
        return
    engines = [e.strip() for e in args.engines.split(",")]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        sys.exit(f"--engines: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    compare(engines, args.tasks, args.repeats)


# ---------------------------------------------------------------- one run, in its own process (--run)


def run_engine(engine: str, workers: int, tasks: int, recipe_path: Path, work: Path, skip_done: bool) -> dict:
    """Stage 1 for `tasks` ranks on `engine` with `workers` at once; seconds of start-up, tasks and shutdown."""
    from lmtrain.config.recipe import load_recipe
    from lmtrain.data.workers import ReadStep
    from lmtrain.tokenizer.bpe import available_cores

    since = time.time()
    step = ReadStep(load_recipe(recipe_path), work, max(1, available_cores() // min(workers, tasks)))
    if engine == "datatrove":
        seconds = run_datatrove(step, workers, tasks, work)
    else:
        seconds = run_on_ray(engine, step, workers, tasks, work, skip_done)
    return seconds | {"ranks_run": tasks_run_since(work, since)}


def run_datatrove(step, workers: int, tasks: int, work: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor

    from lmtrain.data.workers import START_METHOD

    start = time.perf_counter()
    executor = LocalPipelineExecutor(
        pipeline=[step], tasks=tasks, workers=workers, logging_dir=str(work / "logs"), start_method=START_METHOD
    )
    started = time.perf_counter()
    executor.run()
    done = time.perf_counter()
    return {"startup_s": started - start, "tasks_s": done - started, "shutdown_s": 0.0}


def run_on_ray(engine: str, step, workers: int, tasks: int, work: Path, skip_done: bool) -> dict:
    import ray

    start = time.perf_counter()
    # loopback only, no dashboard; the cluster's files under the run's own directory
    ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=str(work.parent / f"ray-{work.name}"), log_to_driver=False)  # fmt: skip
    started = time.perf_counter()
    ranks = [r for r in range(tasks) if not (skip_done and task_mark(work, r).exists())]
    if engine == "ray":
        run_rank = ray.remote(num_cpus=1)(read_rank)
        ray.get([run_rank.remote(step, rank, tasks) for rank in ranks])
    elif engine == "ray_data":
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = ray.data.from_items(ranks, override_num_blocks=max(len(ranks), 1))
        items.map(read_row, fn_kwargs={"step": step, "tasks": tasks}, num_cpus=1,
                  compute=ray.data.TaskPoolStrategy(size=workers)).materialize()  # fmt: skip
    else:
        from datatrove.executor.ray import RayPipelineExecutor

        RayPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers, logging_dir=str(work / "logs")).run()
    done = time.perf_counter()
    ray.shutdown()
    return {"startup_s": started - start, "tasks_s": done - started, "shutdown_s": time.perf_counter() - done}


def read_rank(step, rank: int, tasks: int) -> None:
    step.run(rank=rank, world_size=tasks)


def read_row(row: dict, step, tasks: int) -> dict:
    step.run(rank=row["item"], world_size=tasks)
    return {"rank": row["item"]}


def task_mark(work: Path, rank: int) -> Path:
    """The file a read task writes last (lmtrain.data.workers.ReadStep.run): its existence means the task finished."""
    return work / "read" / f"task-{rank:05d}.json"


def tasks_run_since(work: Path, since: float) -> int:
    """Read tasks whose mark was written after `since`: the tasks this run did rather than skipped."""
    return sum(1 for mark in (work / "read").glob("task-*.json") if mark.stat().st_mtime >= since)


# ---------------------------------------------------------------- the comparison


def compare(engines: list[str], tasks: int, repeats: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from data_prep_scaling import write_quarters, write_recipe

    from lmtrain.config.recipe import load_recipe
    from lmtrain.tokenizer.bpe import train_tokenizer

    load_before = os.getloadavg()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average before: "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_quarters(tmp / "corpus")
        recipe = write_recipe(tmp, [str(tmp / "corpus" / "*" / "*.txt")])
        train_tokenizer(load_recipe(recipe))
        best: dict[tuple[str, int], dict] = {}
        digests = {}
        for repeat in range(repeats):
            for workers in (1, 2):
                for engine in engines:
                    work = tmp / "runs" / f"{engine}-{workers}w-{repeat}"
                    run = measure(engine, workers, tasks, recipe, work)
                    digests[work.name] = outputs_digest(work)
                    print(f"{engine:<14} {workers} worker(s), run {repeat + 1}: {line(run)}", flush=True)
                    key = (engine, workers)
                    if key not in best or run["wall_s"] < best[key]["wall_s"]:
                        best[key] = run
        reruns = rerun_costs(engines, tasks, recipe, tmp / "runs", repeats - 1)
        tokens = sum(json.loads(m.read_text())["tokens"] for m in (tmp / "runs" / work.name).glob("read/task-*.json"))
    load_after = os.getloadavg()
    print_table(best, reruns, tokens)
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(json.dumps(summary(best, reruns, digests, tasks, tokens, load_before, load_after)))


def measure(engine: str, workers: int, tasks: int, recipe: Path, work: Path, skip_done: bool = False) -> dict:
    """One --run in a fresh process, its process tree's memory sampled meanwhile; its wall time includes the
    interpreter's start and imports, the same for every engine."""
    command = [sys.executable, __file__, "--run", engine, str(workers), str(tasks), str(recipe), str(work)]
    # Ray reports usage statistics to its servers unless told not to (unreachable here: it would only wait)
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    child = subprocess.Popen(command + ["--skip-done"] * skip_done, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    sampler = TreeMemory(child.pid)
    sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - start
    sampler.stop()
    if child.returncode:
        sys.exit(f"{engine} with {workers} worker(s) failed (exit {child.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return result | {"wall_s": wall, "peak_rss_mb": sampler.peak_rss / 2**20, "peak_pss_mb": sampler.peak_pss / 2**20,
                     "processes": sampler.processes}  # fmt: skip


class TreeMemory(threading.Thread):
    """Samples a process tree's summed RSS and PSS every SAMPLE_EVERY_S until stop(); keeps the peaks."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.peak_rss = self.peak_pss = self.processes = 0

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.done.wait(SAMPLE_EVERY_S):
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for process in tree:
                try:
                    memory = process.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # ended between the listing and the read
                rss, pss = rss + memory.rss, pss + memory.pss
            self.peak_rss = max(self.peak_rss, rss)
            if pss > self.peak_pss:
                self.peak_pss, self.processes = pss, len(tree)

    def stop(self) -> None:
        self.done.set()
        self.join()


def outputs_digest(work: Path) -> dict[str, str]:
    """sha256 of every file the read tasks wrote under work/read/<source>/<task>/ (the per-task timings, which
    differ between any two runs, are in work/read/task-*.json and not included)."""
    files = sorted(p for p in (work / "read").glob("*/*/*") if p.is_file())
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def rerun_costs(engines: list[str], tasks: int, recipe: Path, runs: Path, repeat: int) -> dict[str, dict]:
    """The same 2-worker command again on a finished work directory; for Ray also with the marks the repo would add."""
    costs = {}
    for engine in engines:
        costs[engine] = measure(engine, 2, tasks, recipe, runs / f"{engine}-2w-{repeat}")
        print(f"{engine:<14} re-run after success: {line(costs[engine])}", flush=True)
    if "ray" in engines:
        costs["ray_marked"] = measure("ray", 2, tasks, recipe, runs / f"ray-2w-{repeat}", skip_done=True)
        print(f"{'ray_marked':<14} re-run after success: {line(costs['ray_marked'])}", flush=True)
    return costs


def line(run: dict) -> str:
    return (f"wall {run['wall_s']:6.2f} s (start-up {run['startup_s']:5.2f}, tasks {run['tasks_s']:6.2f}, shutdown "
            f"{run['shutdown_s']:4.2f}), {run['ranks_run']} task(s) run, peak RSS {run['peak_rss_mb']:6.0f} MB, "
            f"PSS {run['peak_pss_mb']:6.0f} MB, {run['processes']} processes")  # fmt: skip


def print_table(best: dict[tuple[str, int], dict], reruns: dict[str, dict], tokens: int) -> None:
    print(f"\nbest of the runs, stage 1 (read) on {tokens:,} tokens; ratio = wall / datatrove's wall, same workers")
    print(f"{'engine':<14} {'workers':>7} {'wall s':>7} {'ratio':>6} {'tokens/s':>9} {'start-up s':>10} {'tasks s':>7} "
          f"{'shutdown s':>10} {'peak RSS MB':>11} {'peak PSS MB':>11} {'processes':>9}")  # fmt: skip
    for (engine, workers), run in sorted(best.items(), key=lambda item: (item[0][1], ENGINES.index(item[0][0]))):
        base = best.get(("datatrove", workers), run)["wall_s"]
        print(f"{engine:<14} {workers:>7} {run['wall_s']:>7.2f} {run['wall_s'] / base:>6.2f} "
              f"{tokens / run['wall_s']:>9,.0f} {run['startup_s']:>10.2f} {run['tasks_s']:>7.2f} {run['shutdown_s']:>10.2f} "
              f"{run['peak_rss_mb']:>11.0f} {run['peak_pss_mb']:>11.0f} {run['processes']:>9}")  # fmt: skip
    print("\nre-run after success (2 workers): " + "; ".join(
        f"{engine} {run['wall_s']:.2f} s, {run['ranks_run']} task(s) run" for engine, run in reruns.items()))  # fmt: skip


def summary(best, reruns, digests, tasks, tokens, load_before, load_after) -> dict:
    walls = {f"{engine}_s_{workers}w": round(run["wall_s"], 2) for (engine, workers), run in best.items()}
    ratios = {
        f"{engine}_vs_datatrove_{workers}w": round(run["wall_s"] / best[("datatrove", workers)]["wall_s"], 3)
        for (engine, workers), run in best.items()
        if engine != "datatrove" and ("datatrove", workers) in best
    }
    first = next(iter(digests.values()))
    return (
        walls
        | ratios
        | {
            "startup_s": {f"{e}_{w}w": round(r["startup_s"], 2) for (e, w), r in best.items()},
            "tasks_s": {f"{e}_{w}w": round(r["tasks_s"], 2) for (e, w), r in best.items()},
            "shutdown_s": {f"{e}_{w}w": round(r["shutdown_s"], 2) for (e, w), r in best.items()},
            "peak_rss_mb": {f"{e}_{w}w": round(r["peak_rss_mb"]) for (e, w), r in best.items()},
            "peak_pss_mb": {f"{e}_{w}w": round(r["peak_pss_mb"]) for (e, w), r in best.items()},
            "rerun_s_2w": {e: round(r["wall_s"], 2) for e, r in reruns.items()},
            "rerun_tasks_run_2w": {e: r["ranks_run"] for e, r in reruns.items()},
            "identical": all(d == first for d in digests.values()) and bool(first),
            "files_compared": len(first),
            "tasks": tasks,
            "tokens": tokens,
            "load_average_before": round(load_before[0], 2),
            "load_average_after": round(load_after[0], 2),
        }
    )


if __name__ == "__main__":
    main()
