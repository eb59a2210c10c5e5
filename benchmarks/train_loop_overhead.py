"""Overhead of this project's training loop: steps/s against a bare PyTorch loop and the HF Trainer.

    python benchmarks/train_loop_overhead.py [--steps 120] [--rounds 3] [--threads 1] [--documents 120]

The same tiny Llama (hidden 128, 2 layers, 4 heads, vocabulary 2,048, sdpa, fp32), the same packed
blocks (the standard library, tokenized and packed once by this project's tokenizer/ and data_prep/
at seq_len 128), the same global batch (8 = micro 4 × accumulation 2), AdamW (torch's fused kernel, as
this project's loop uses on every device that has one, β 0.9/0.95, ε 1e-8, weight decay 0.1 on matrices), lr 1e-3, clipping at 1.0, the same number of optimizer steps,
trained three ways, each in its own process with the same number of threads:
- bare: forward, backward, clip, optimizer step, zero_grad, nothing else; the batches are tensors
  built before the loop (no schedule, no logging, no data fetching);
- ours: train.py, run (runpy) in its own process as `python train.py RECIPE run_dir=...` runs it:
  fit() + PretrainTask with Accelerate, the global-batch sampler, Arrow row fetching, the lr schedule,
  non-finite guards, spike detection, a console line and a metrics.jsonl record every 10 steps with
  tokens/s and MFU, evaluation every 50 steps and a checkpoint every 100 (the time of these two is
  left out, as the loop's own tokens/s leaves out evaluation: the other two ways do neither);
- hf_trainer: transformers' `Trainer` with the equivalent TrainingArguments (same batch, accumulation,
  lr, cosine schedule to 10 %, warmup, clipping, AdamW settings; logging_steps 10, no eval, no saving,
  report_to none) and `optim="adamw_torch_fused"`, the same optimizer implementation as the other two, over
  the same blocks, with a collator that stacks them.

Timing, built for shared, noisy machines. The three processes start together, and each stops at
every 10th step (ours: when the loop writes its log record, through a wrapper around MetricsLog.write;
the trainer itself is not changed) until the coordinator gives it the CPU for its next 10 steps: the
ways take turns window by window (bare, ours, Trainer, then the reverse order), so that neighbouring
windows of the three see the same load from whatever else runs on the machine. Each window's clock
runs from its resumption to its next stop; only one of the three computes at a time. The first
`--warmup` steps (startup runs concurrently) are not timed. `vs_bare` and `vs_hf_trainer` are the
medians over the cycles of ours' steps/s ÷ the other's in the same cycle, by wall clock; the table
also shows each way's median and fastest window, and the same ratios by CPU time of each process
(`time.process_time`, less sensitive to neighbours, blind to waiting: a check, not the figure).
One thread per process by default: on a machine shared with other work, a run with 2 OpenMP threads
on 2 cores stalls whenever one of its threads is descheduled (we measured 5-10x slower steps), which
would measure the neighbours, not the loop (`--threads 2` on a quiet machine).
Prints a table, then one JSON line: vs_bare, vs_hf_trainer, steps/s of each way and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmtrain.training.distributed import keep_freed_cpu_memory

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WAYS = ("bare", "ours", "hf_trainer")
LABELS = {
    "bare": "bare PyTorch loop",
    "ours": "this project (train.py: fit + PretrainTask)",
    "hf_trainer": "transformers Trainer",
}
WINDOW = 10  # steps per timed window; ours logs every WINDOW steps


def recipe_dict(root: Path, steps: int, documents: int) -> dict:
    return {
        "run_dir": str(root / "unused"),
        "tokenizer": {"dir": str(root / "tokenizer"), "vocab_size": 2048},
        "data": {
            "dir": str(root / "data"),
            "sources": [{"kind": "python_stdlib", "max_documents": documents}],
            "clean": {"strip_html": False},
            "seq_len": 128,
            "validation_fraction": 0.05,
        },
        "model": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 352},
        "train": {
            "max_steps": steps,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "lr": 1.0e-3,
            "warmup_steps": 10,
            "min_lr_ratio": 0.1,
            "grad_clip": 1.0,
            "precision": "fp32",
            "log_every": WINDOW,
            "eval_every": 50,
            "eval_batches": 2,
            "checkpoint_every": 100,
            "keep_last": 1,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=120, help="optimizer steps per run, a multiple of 10 (default 120)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="first steps left out of the clock, a multiple of 10 (default 10)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of the three ways, fresh processes each (default 3)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1: see above)")
    parser.add_argument("--documents", type=int, default=120, help="standard-library files to train on (default 120)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--turn-fds", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # Every way gets the allocator setting train.py makes on CPU (freed activations kept, not handed back
        # to the OS and faulted in again each step), so that the ratios measure the loops, not malloc.
        keep_freed_cpu_memory()
        turns = Turns(args.turn_fds)
        {"bare": bare_loop, "ours": our_loop, "hf_trainer": hf_trainer}[args.child](args, turns)
        Path(args.out).write_text(
            json.dumps({"windows": turns.windows, "cpu_windows": turns.cpu_windows}), encoding="utf-8"
        )
        return
    if args.warmup < WINDOW or args.warmup % WINDOW or args.steps % WINDOW or args.steps < args.warmup + 2 * WINDOW:
        parser.error(
            f"--warmup and --steps must be multiples of {WINDOW}, --warmup at least {WINDOW} "
            f"and --steps at least --warmup + {2 * WINDOW}"
        )
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        run_all(Path(args.keep).resolve(), args)
    else:
        with tempfile.TemporaryDirectory(prefix="train_loop_overhead-") as tmp:
            run_all(Path(tmp), args)


# --- the coordinator -------------------------------------------------------------------------------------


def run_all(root: Path, args: argparse.Namespace) -> None:
    import yaml

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("LMTRAIN_FAULT_NONFINITE_STEPS", None)
    recipe = recipe_dict(root, args.steps, args.documents)
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    started = time.perf_counter()
    for script in ("tokenizer/train_tokenizer.py", "data_prep/prepare.py"):
        result = subprocess.run(
            [sys.executable, script, str(recipe_path)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{script} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    m, t = recipe["model"], recipe["train"]
    print(
        f"data: {recipe['data']['seq_len']}-token blocks of the stdlib, prepared in "
        f"{time.perf_counter() - started:.0f} s | model: hidden {m['hidden_size']}, {m['num_layers']} layers, "
        f"vocabulary {recipe['tokenizer']['vocab_size']:,}, fp32 | global batch {t['global_batch_size']} = micro "
        f"{t['micro_batch_size']} × accumulation {t['global_batch_size'] // t['micro_batch_size']} | "
        f"{args.steps} steps, steps {args.warmup + 1}-{args.steps} timed in windows of {WINDOW} | "
        f"{args.threads} thread(s) per process, {os.cpu_count()} CPU cores | {args.rounds} round(s)",
        flush=True,
    )

    windows = {}  # steps/s of every timed window, cycle by cycle, all rounds; way_cpu: per CPU second
    for round_ in range(args.rounds):
        rates = run_round(root / f"round_{round_}", recipe_path, args, env)
        for key, values in rates.items():
            windows.setdefault(key, []).extend(values)
        ratios = [o / b for o, b in zip(rates["ours"], rates["bare"])]
        print(
            f"round {round_ + 1}: median steps/s "
            + ", ".join(f"{way} {statistics.median(rates[way]):.2f}" for way in WAYS)
            + f" | ours/bare per cycle {min(ratios):.3f}-{max(ratios):.3f}",
            flush=True,
        )

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(windows[a], windows[b]))

    vs_bare, vs_hf = paired("ours", "bare"), paired("ours", "hf_trainer")
    cpu_vs_bare, cpu_vs_hf = paired("ours_cpu", "bare_cpu"), paired("ours_cpu", "hf_trainer_cpu")
    median = {way: statistics.median(windows[way]) for way in WAYS}
    cpu_ms = {way: 1000 / statistics.median(windows[f"{way}_cpu"]) for way in WAYS}
    fastest = {way: max(windows[way]) for way in WAYS}
    print(
        f"\n{len(windows['bare'])} cycles of {WINDOW}-step windows (steps {args.warmup + 1}-{args.steps}, "
        f"{args.rounds} round(s)), the ways taking turns"
    )
    print(
        f"{'way':<46}{'steps/s':>9}{'ms/step':>9}{'fastest':>9}{'ours ÷ way':>12}{'CPU ms/step':>13}{'ours ÷ way':>12}"
    )
    for way in WAYS:
        ratio = {"bare": f"{vs_bare:.3f}", "ours": "", "hf_trainer": f"{vs_hf:.3f}"}[way]
        cpu_ratio = {"bare": f"{cpu_vs_bare:.3f}", "ours": "", "hf_trainer": f"{cpu_vs_hf:.3f}"}[way]
        print(
            f"{LABELS[way]:<46}{median[way]:>9.2f}{1000 / median[way]:>9.1f}{fastest[way]:>9.2f}{ratio:>12}"
            f"{cpu_ms[way]:>13.1f}{cpu_ratio:>12}"
        )
    print(
        f"(steps/s: median window, wall clock; fastest: fastest window; 'ours ÷ way': median over the cycles of "
        f"ours' steps/s ÷ that way's in the same cycle, by wall clock, then by CPU time of the process. "
        f"Fastest windows: ours ÷ bare {fastest['ours'] / fastest['bare']:.3f}, "
        f"ours ÷ Trainer {fastest['ours'] / fastest['hf_trainer']:.3f})"
    )
    print(
        json.dumps(
            {
                "vs_bare": round(vs_bare, 3),
                "vs_hf_trainer": round(vs_hf, 3),
                "steps_per_s": {way: round(median[way], 3) for way in WAYS},
                "fastest_window_steps_per_s": {way: round(fastest[way], 3) for way in WAYS},
                "cpu": {
                    "vs_bare": round(cpu_vs_bare, 3),
                    "vs_hf_trainer": round(cpu_vs_hf, 3),
                    "ms_per_step": {way: round(cpu_ms[way], 1) for way in WAYS},
                },
                "cycles": len(windows["bare"]),
                "steps": args.steps,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "threads": args.threads,
            }
        )
    )


def run_round(root: Path, recipe_path: Path, args: argparse.Namespace, env: dict) -> dict[str, list[float]]:
    """Start the three ways together; once all have done their first window, let them run one window at a
    time, taking turns; then release them to finish. Steps/s of each timed window, per way (`way`: wall
    clock, `way_cpu`: steps per CPU second of the process)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    procs, to_child, from_child, logs = {}, {}, {}, {}
    for way in WAYS:
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        logs[way] = open(root / f"{way}.log", "w", encoding="utf-8")
        procs[way] = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                way,
                "--recipe",
                str(recipe_path),
                "--run-dir",
                str(root / way),
                "--turn-fds",
                f"{go_r},{done_w}",
                "--out",
                str(root / f"{way}.json"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=logs[way],
            stderr=subprocess.STDOUT,
            pass_fds=(go_r, done_w),
        )
        os.close(go_r)
        os.close(done_w)
        to_child[way], from_child[way] = go_w, done_r

    def stopped(way: str) -> None:
        if not os.read(from_child[way], 1):  # end of file: the child is gone
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
            raise RuntimeError(
                f"{way} ended early ({procs[way].wait()}):\n"
                + (root / f"{way}.log").read_text(encoding="utf-8")[-4000:]
            )

    try:
        for way in WAYS:
            stopped(way)  # at step WINDOW
        for cycle in range(args.steps // WINDOW - 1):
            for way in WAYS if cycle % 2 == 0 else WAYS[::-1]:
                os.write(to_child[way], b"g")
                stopped(way)
        for way in WAYS:
            os.write(to_child[way], b"g")  # finish: final eval, checkpoint, export
        for way in WAYS:
            if procs[way].wait(timeout=1800) != 0:
                raise RuntimeError(
                    f"{way} failed ({procs[way].returncode}):\n"
                    + (root / f"{way}.log").read_text(encoding="utf-8")[-4000:]
                )
    finally:
        for way in WAYS:
            if procs[way].poll() is None:
                procs[way].kill()
            os.close(to_child[way])
            os.close(from_child[way])
            logs[way].close()
    rates = {}
    for way in WAYS:
        result = json.loads((root / f"{way}.json").read_text(encoding="utf-8"))
        skip = args.warmup // WINDOW - 1  # the first window ends at step 2 * WINDOW
        rates[way] = [WINDOW / seconds for seconds in result["windows"][skip:]]
        rates[f"{way}_cpu"] = [WINDOW / seconds for seconds in result["cpu_windows"][skip:]]
    return rates


# --- the three ways (each in its own process) ------------------------------------------------------------


class Turns:
    """A child's side of the turn-taking: at each window's end, tell the coordinator and wait for the next
    turn. `windows` holds the seconds of each window, from its resumption to its next stop, plus `carry`
    (work done at the previous stop that belongs to the loop) less `excluded` (evaluation)."""

    def __init__(self, fds: str):
        go, done = map(int, fds.split(","))
        self.go, self.done = go, done
        self.windows: list[float] = []
        self.cpu_windows: list[float] = []  # the same in CPU seconds of this process (time.process_time)
        self.resumed: float | None = None
        self.cpu_resumed = 0.0
        self.carry = self.excluded = self.cpu_excluded = 0.0

    def stop(self, at: float, carry: float = 0.0) -> None:
        cpu = time.process_time()
        if self.resumed is not None:
            self.windows.append(at - self.resumed + self.carry - self.excluded)
            self.cpu_windows.append(cpu - self.cpu_resumed - self.cpu_excluded)
        self.carry, self.excluded, self.cpu_excluded = carry, 0.0, 0.0
        os.write(self.done, b"s")
        os.read(self.go, 1)
        self.resumed, self.cpu_resumed = time.perf_counter(), time.process_time()


def _load(recipe_path: str):
    """The recipe, its model (built as lmtrain builds it, same seed) and its train blocks (a Dataset of them, in the
    order of the trainer's block indices, so that the same sampler gives the same batches)."""
    from transformers import set_seed

    from lmtrain.config.recipe import load_recipe
    from lmtrain.data.prepare import as_datasets
    from lmtrain.model.llama import build_model, llama_config
    from lmtrain.tokenizer.bpe import load_tokenizer

    recipe = load_recipe(recipe_path)
    tok = load_tokenizer(recipe.tokenizer.dir)
    set_seed(recipe.train.seed)
    model = build_model(
        recipe, llama_config(recipe, {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id})
    )
    return recipe, model, as_datasets(recipe.data.dir)["train"].select_columns(["input_ids"])


def bare_loop(args: argparse.Namespace, turns: Turns) -> None:
    import numpy as np
    import torch

    from lmtrain.data.sampler import GlobalBatchSampler

    recipe, model, blocks = _load(args.recipe)
    t = recipe.train
    accum = t.global_batch_size // t.micro_batch_size
    sampler = GlobalBatchSampler(len(blocks), t.global_batch_size, t.seed)
    ids = np.asarray(blocks.with_format("numpy")["input_ids"], dtype=np.int64)
    batches = [
        [torch.from_numpy(ids[micro]) for micro in np.split(sampler.global_batch(step), accum)]
        for step in range(t.max_steps)
    ]
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        betas=tuple(t.adam_betas),
        eps=t.adam_eps,
        fused=True,
    )
    model.train()
    for step, micro_batches in enumerate(batches, start=1):
        for input_ids in micro_batches:
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % WINDOW == 0:
            turns.stop(time.perf_counter())
    print(f"bare: last loss {loss.item():.4f}")


def our_loop(args: argparse.Namespace, turns: Turns) -> None:
    """`python train.py RECIPE run_dir=...`, with a stop after each of the loop's log records."""
    from lmtrain.training import checkpoint, metrics_log
    from lmtrain.training import pretrain as pretraining

    write, evaluate, save = (
        metrics_log.MetricsLog.write,
        pretraining.PretrainTask.evaluate,
        checkpoint.Checkpointer.save,
    )

    def write_then_stop(self, record: dict, every_rank: bool = False) -> None:
        start = time.perf_counter()
        write(self, record, every_rank)
        if "tokens_per_s" in record:  # the step's log record, written every WINDOW steps
            turns.stop(start, carry=time.perf_counter() - start)  # writing it is the next window's work

    def excluded(function):  # evaluation and checkpoints: the other two ways do neither
        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                turns.excluded += time.perf_counter() - start
                turns.cpu_excluded += time.process_time() - cpu

        return timed

    metrics_log.MetricsLog.write = write_then_stop
    pretraining.PretrainTask.evaluate = excluded(evaluate)
    checkpoint.Checkpointer.save = excluded(save)
    sys.argv = ["train.py", args.recipe, f"run_dir={args.run_dir}"]
    try:
        runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise


def hf_trainer(args: argparse.Namespace, turns: Turns) -> None:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    recipe, model, blocks = _load(args.recipe)
    t = recipe.train

    class Turn(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # before the Trainer logs this step
            if state.global_step % WINDOW == 0:
                turns.stop(time.perf_counter())

    def collate(rows: list[dict]) -> dict:
        input_ids = torch.stack([row["input_ids"] for row in rows]).long()
        return {"input_ids": input_ids, "labels": input_ids}

    arguments = TrainingArguments(
        output_dir=args.run_dir,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.global_batch_size // t.micro_batch_size,
        learning_rate=t.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": t.min_lr_ratio},
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_betas[0],
        adam_beta2=t.adam_betas[1],
        adam_epsilon=t.adam_eps,
        max_grad_norm=t.grad_clip,
        optim="adamw_torch_fused",
        logging_steps=WINDOW,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=t.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=blocks.with_format("torch"),
        data_collator=collate,
        callbacks=[Turn()],
    )
    trainer.train()


if __name__ == "__main__":
    main()
