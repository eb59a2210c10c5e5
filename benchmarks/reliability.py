"""Reliability scenarios, run for real: separate training processes, real signals, real crashes.

    python benchmarks/reliability.py [--keep DIR]

On a tiny recipe (the standard library as corpus, fp32 on CPU), each scenario is compared with an
uninterrupted reference run of the same recipe:
- ctrl_c_resume_1proc: one SIGINT during training; the run saves and exits; the same command resumes.
- sigterm_resume_zero3_2proc: SIGTERM to `accelerate launch` (2 CPU processes, DeepSpeed ZeRO-3);
  every rank stops at the same step and saves; relaunching resumes.
- sigkill_during_save: the process is SIGKILLed in the middle of writing a checkpoint; the previous
  checkpoint is selected on restart.
- corrupt_checkpoint: a file of the newest checkpoint is truncated; auto-resume reports it and falls
  back to the previous complete one.
- nonfinite_loss: the loss is made NaN on the main process at two steps; all ranks skip those updates,
  the weights do not move, and two skips in a row (the recipe's limit) stop the run after saving.
- sigkill_during_async_save, sigterm_after_async_save_started: the same with train.checkpoint_async=true,
  the kill landing in the background write, the SIGTERM while the save of step 8 is in flight.
- zero{3,2}_{2proc_to_1proc,1proc_to_2proc}: a DeepSpeed run on N processes that ended after its step-16
  checkpoint resumes on M (universal checkpoint); its later losses and final weights are compared with an
  uninterrupted run on M processes within fp32 rounding (LOSS_RTOL, WEIGHT_ATOL).
Then checkpoint_stall: what a checkpoint costs the loop, synchronous vs asynchronous, on the smoke model
(goal: the asynchronous stall at most 25 % of the synchronous save).

A scenario passes when its per-step losses and final weights are identical (bitwise) to the
reference's. `steps_lost` counts optimizer steps that were computed but had to be redone, measured
from two runs' own output: the last step the interrupted run reached (the highest step of a training
record in its metrics.jsonl, read as soon as it has exited: the recipe logs every step, and a
resumed run drops the records after its checkpoint) minus the step the resumed run restarts from
(its own "resuming from ... at step N" line). Neither figure is read from the checkpoint directory.
For nonfinite_loss, `steps_lost` is the number of updates skipped (the run's skipped_nonfinite
records). Prints a table, then one JSON line {scenario: {"ok", "steps_lost"}, "checkpoint_stall": {...}}.
The tests (tests/test_reliability.py) run the same scenarios and assert on their details.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_2PROC = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    str(REPO_ROOT / "recipes/accelerate/cpu_zero3_2proc.yaml"),
]
MAX_STEPS = 24
CHECKPOINT_EVERY = 8
TINY = {
    "tokenizer": {"vocab_size": 512},
    "data": {
        "sources": [{"kind": "python_stdlib", "max_documents": 120}],
        "clean": {"strip_html": False},
        "seq_len": 64,
        "validation_fraction": 0.1,
    },
    "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 172},
    "train": {
        "max_steps": MAX_STEPS,
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "warmup_steps": 2,
        "lr": 3.0e-3,
        "eval_every": 12,
        "eval_batches": 2,
        "log_every": 1,  # every step in metrics.jsonl: the last step an interrupted run reached is observable
        "checkpoint_every": CHECKPOINT_EVERY,
        "keep_last": 3,
        "precision": "fp32",
    },
}


class Workspace:
    """A tiny recipe with its tokenizer and data prepared once; runs get their own run_dir."""

    def __init__(self, root: Path):
        self.root = root
        recipe = json.loads(json.dumps(TINY))
        recipe["run_dir"] = str(root / "unused")
        recipe["tokenizer"]["dir"] = str(root / "tokenizer")
        recipe["data"]["dir"] = str(root / "data")
        self.recipe = root / "tiny.yaml"
        self.recipe.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        for script in ("tokenizer/train_tokenizer.py", "data_prep/prepare.py"):
            _check(
                subprocess.run(
                    [sys.executable, script, str(self.recipe)],
                    cwd=REPO_ROOT,
                    env=_env(),
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            )
        self._references: dict[tuple, Path] = {}

    def command(self, run_dir: Path, processes: int, *overrides: str, zero: int | None = None) -> list[str]:
        """`python train.py` for one process, `accelerate launch` with ZeRO-3 for two; `zero` (2 or 3): DeepSpeed
        with that ZeRO stage on any number of processes."""
        if zero is None:
            launcher = LAUNCH_2PROC if processes == 2 else [sys.executable]
        else:
            config = REPO_ROOT / f"recipes/accelerate/cpu_zero{zero}_2proc.yaml"
            launcher = [*LAUNCH_2PROC[:-1], str(config), "--num_processes", str(processes)]
        return [*launcher, "train.py", str(self.recipe), f"run_dir={run_dir}", *overrides]

    def train(
        self,
        run_dir: Path,
        processes: int = 1,
        *overrides: str,
        env: dict | None = None,
        check: bool = True,
        zero: int | None = None,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(run_dir, processes, *overrides, zero=zero),
            cwd=REPO_ROOT,
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check:
            _check(result)
        return result

    def reference(self, processes: int, zero: int | None = None) -> Path:
        """The uninterrupted run every scenario with this many processes (and this launch) is compared with."""
        key = (processes, 3 if processes == 2 and zero is None else zero)  # two processes: ZeRO-3 by default
        if key not in self._references:
            run_dir = self.root / (f"reference_{processes}proc" + (f"_zero{zero}" if zero else ""))
            self.train(run_dir, processes, zero=zero)
            self._references[key] = run_dir
        return self._references[key]

    def interrupt(
        self, run_dir: Path, processes: int, sig: signal.Signals, after_step: int, *overrides: str
    ) -> tuple[int, str]:
        """Start a run, send `sig` once it has logged `after_step`; its exit code and stderr."""
        proc = subprocess.Popen(
            self.command(run_dir, processes, *overrides),
            cwd=REPO_ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 600
        while last_logged_step(run_dir) < after_step:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"run ended before step {after_step}: {proc.communicate()[1][-3000:]}")
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=600)
        return proc.returncode, stderr


def ctrl_c_resume_1proc(ws: Workspace) -> dict:
    return _signal_and_resume(ws, 1, signal.SIGINT, "ctrl_c")


def sigterm_resume_zero3_2proc(ws: Workspace) -> dict:
    return _signal_and_resume(ws, 2, signal.SIGTERM, "sigterm_2proc")


def _signal_and_resume(ws: Workspace, processes: int, sig: signal.Signals, name: str) -> dict:
    run_dir = ws.root / name
    exit_code, stop_stderr = ws.interrupt(run_dir, processes, sig, after_step=5)
    interrupted = read_metrics(run_dir)  # now: the resumed run drops the records after its checkpoint
    resumed = ws.train(run_dir, processes)
    return _compare(
        ws.reference(processes),
        run_dir,
        interrupted,
        resumed.stderr,
        exit_code=exit_code,
        stop_stderr=stop_stderr,
        checkpoint_saved=_saved_step(stop_stderr),
    )


ASYNC = "train.checkpoint_async=true"


def sigkill_during_save(ws: Workspace, asynchronous: bool = False) -> dict:
    """Killed while saving step 16, after its files are written and before they are published; asynchronous: in
    the background thread, while the loop trains on."""
    run_dir = ws.root / ("sigkill_async" if asynchronous else "sigkill")
    kill_step = 2 * CHECKPOINT_EVERY
    overrides = [ASYNC] if asynchronous else []
    env = {"LMTRAIN_FAULT_KILL_DURING_SAVE_STEP": str(kill_step)}
    killed = ws.train(run_dir, 1, *overrides, env=env, check=False)
    leftovers = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    interrupted = read_metrics(run_dir)
    resumed = ws.train(run_dir, 1, *overrides)
    return _compare(
        ws.reference(1),
        run_dir,
        interrupted,
        resumed.stderr,
        exit_code=killed.returncode,
        leftovers=leftovers,
        stop_stderr=killed.stderr,
    )


def sigterm_after_async_save_started(ws: Workspace) -> dict:
    """SIGTERM as soon as step 8 is logged, that is while its checkpoint is being taken or written in the
    background: the run finishes that save, saves the step it stops at, and exits; the same command resumes."""
    run_dir = ws.root / "sigterm_async"
    exit_code, stop_stderr = ws.interrupt(run_dir, 1, signal.SIGTERM, CHECKPOINT_EVERY, ASYNC)
    interrupted = read_metrics(run_dir)
    saves = [r for r in interrupted if r.get("event") in ("checkpoint", "checkpoint_written")]
    resumed = ws.train(run_dir, 1, ASYNC)
    return _compare(
        ws.reference(1),
        run_dir,
        interrupted,
        resumed.stderr,
        exit_code=exit_code,
        stop_stderr=stop_stderr,
        checkpoint_saved=_saved_step(stop_stderr),
        saves=saves,
    )


def corrupt_checkpoint(ws: Workspace) -> dict:
    run_dir = ws.root / "corrupt"
    shutil.copytree(ws.reference(1), run_dir)
    newest = run_dir / "checkpoints" / f"step_{MAX_STEPS:08d}"
    shard = newest / "optimizer.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    shutil.rmtree(run_dir / "final")  # so that the resumed run has work to redo, and its result to compare
    interrupted = read_metrics(run_dir)  # the copied run's own log: the steps it had trained
    resumed = ws.train(run_dir, 1)
    outcome = _compare(ws.reference(1), run_dir, interrupted, resumed.stderr)
    outcome["reported"] = f"{shard.name} has" in resumed.stderr
    outcome["ok"] = outcome["ok"] and outcome["reported"] and outcome["resumed_from"] == MAX_STEPS - CHECKPOINT_EVERY
    return outcome


def nonfinite_loss(ws: Workspace) -> dict:
    run_dir = ws.root / "nonfinite"
    bad_steps = [5, 6]
    stopped = ws.train(
        run_dir,
        1,
        "train.checkpoint_every=2",
        "train.max_skipped_steps=2",
        env={"LMTRAIN_FAULT_NONFINITE_STEPS": ",".join(map(str, bad_steps))},
        check=False,
    )
    records = read_metrics(run_dir)
    skipped = [r for r in records if r.get("event") == "skipped_nonfinite"]
    checkpoints = run_dir / "checkpoints"
    before, after = (load_weights(checkpoints / f"step_{s:08d}" / "model.safetensors") for s in (4, 6))
    weights_unchanged = same_weights(before, after)
    ok = (
        stopped.returncode == 2
        and [r["step"] for r in skipped] == bad_steps
        and weights_unchanged
        and newest_checkpoint_step(run_dir) == 6
    )
    return {
        "ok": ok,
        "steps_lost": len(skipped),  # updates skipped, from the run's own skipped_nonfinite records
        "last_step_reached": last_step_reached(records),
        "exit_code": stopped.returncode,
        "skipped": skipped,
        "weights_unchanged": weights_unchanged,
        "stderr": stopped.stderr,
    }


def world_size_change(ws: Workspace, saved: int, resumed: int, zero: int = 3) -> dict:
    """A DeepSpeed run on `saved` processes that ended after saving its step-16 checkpoint (a preempted job: its
    run directory as the uninterrupted run had it at that step) comes back on `resumed` processes. Compared with
    an uninterrupted run on `resumed` processes: the losses of the steps after the resume and the final weights."""
    source, run_dir = ws.reference(saved, zero), ws.root / f"world_{saved}to{resumed}_zero{zero}"
    stop = 2 * CHECKPOINT_EVERY
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir, ignore=lambda d, names: [n for n in names if _after(n, stop) or n == "final"])
    interrupted = [r for r in read_metrics(source) if r["step"] <= stop]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in interrupted))
    result = ws.train(run_dir, resumed, zero=zero)
    reference = ws.reference(resumed, zero)
    last_reached, resumed_from, lost = steps_lost(interrupted, result.stderr)
    ref_losses, losses = step_losses(reference), step_losses(run_dir)
    after = [s for s in range(resumed_from + 1, MAX_STEPS + 1)]
    differences = [abs(losses[s] - ref_losses[s]) / abs(ref_losses[s]) for s in after if s in losses]
    weights, ref_weights = (load_weights(d / "final" / "model.safetensors") for d in (run_dir, reference))
    max_weight_diff = max_abs_difference(weights, ref_weights)
    ok = len(differences) == len(after) and max(differences) <= LOSS_RTOL and max_weight_diff <= WEIGHT_ATOL
    return {
        "ok": ok,
        "steps_lost": lost,
        "last_step_reached": last_reached,
        "resumed_from": resumed_from,
        "max_loss_rel_diff": max(differences, default=float("inf")),
        "max_weight_abs_diff": max_weight_diff,
        "steps_compared": after,
        "resume_stderr": result.stderr,
    }


# fp32 on CPU: the resumed run and the reference sum the same numbers in an order that may differ with the number of
# processes (measured here: no difference at all; these bounds are what fp32 rounding over 8 steps allows).
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def _after(name: str, step: int) -> bool:
    """Whether `name` is a checkpoint directory of a step after `step`."""
    return name.startswith("step_") and int(name.split("_")[1]) > step


def max_abs_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


SCENARIOS = {
    "ctrl_c_resume_1proc": ctrl_c_resume_1proc,
    "sigterm_resume_zero3_2proc": sigterm_resume_zero3_2proc,
    "sigkill_during_save": sigkill_during_save,
    "sigkill_during_async_save": lambda ws: sigkill_during_save(ws, asynchronous=True),
    "sigterm_after_async_save_started": sigterm_after_async_save_started,
    "corrupt_checkpoint": corrupt_checkpoint,
    "nonfinite_loss": nonfinite_loss,
    "zero3_2proc_to_1proc": lambda ws: world_size_change(ws, 2, 1, zero=3),
    "zero3_1proc_to_2proc": lambda ws: world_size_change(ws, 1, 2, zero=3),
    "zero2_2proc_to_1proc": lambda ws: world_size_change(ws, 2, 1, zero=2),
    "zero2_1proc_to_2proc": lambda ws: world_size_change(ws, 1, 2, zero=2),
}


def _compare(reference: Path, run_dir: Path, interrupted: list[dict], resume_stderr: str, **details) -> dict:
    """`interrupted`: the interrupted run's metrics records, read before the resume; `resume_stderr`:
    the resumed run's stderr."""
    last_reached, resumed_from, lost = steps_lost(interrupted, resume_stderr)
    ref_losses, losses = step_losses(reference), step_losses(run_dir)
    weights_equal = same_weights(
        load_weights(reference / "final" / "model.safetensors"), load_weights(run_dir / "final" / "model.safetensors")
    )
    logged_every_step = sorted(step_losses(interrupted)) == list(range(1, last_reached + 1))
    ok = losses == ref_losses and len(losses) == MAX_STEPS and weights_equal and logged_every_step
    return {
        "ok": ok,
        "steps_lost": lost,
        "last_step_reached": last_reached,
        "resumed_from": resumed_from,
        "logged_every_step": logged_every_step,
        "interrupted_records": interrupted,
        "losses": losses,
        "reference_losses": ref_losses,
        "weights_equal": weights_equal,
        "resume_stderr": resume_stderr,
        **details,
    }


def last_step_reached(records: list[dict]) -> int:
    """The last optimizer step whose training work was done, from a run's own metrics records: the
    highest step of a training record (a logged step, a skipped or spiking one; evaluations excluded)."""
    return max((r["step"] for r in records if "loss" in r), default=0)


def resumed_step(stderr: str) -> int:
    """The step a run restarts from, from its own "resuming from <checkpoint> at step N" line."""
    match = re.search(r"^resuming from .* at step ([\d,]+)", stderr, re.MULTILINE)
    if match is None:
        raise ValueError("the run did not report resuming from a checkpoint")
    return int(match.group(1).replace(",", ""))


def steps_lost(interrupted_records: list[dict], resume_stderr: str) -> tuple[int, int, int]:
    """(last step the interrupted run reached, step the resumed run restarts from, steps lost: their
    difference), each read from that run's own output."""
    last, resumed = last_step_reached(interrupted_records), resumed_step(resume_stderr)
    return last, resumed, last - resumed


def _saved_step(stop_stderr: str) -> int | None:
    """The step the interrupted run says it saved ("stopped by SIGINT after step N; checkpoint saved")."""
    match = re.search(r"stopped by .* after step ([\d,]+); checkpoint saved", stop_stderr)
    return int(match.group(1).replace(",", "")) if match else None


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def step_losses(run: Path | list[dict]) -> dict[int, float]:
    """{step: loss} of the logged training steps of a run directory or of its metrics records."""
    records = read_metrics(run) if isinstance(run, Path) else run
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def last_logged_step(run_dir: Path) -> int:
    try:
        return max(step_losses(run_dir), default=0)
    except (ValueError, OSError):  # a line being written
        return 0


def newest_checkpoint_step(run_dir: Path) -> int:
    steps = [
        int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE.json").is_file()
    ]
    return max(steps, default=0)


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("LMTRAIN_FAULT_NONFINITE_STEPS", None)
    env.pop("LMTRAIN_FAULT_KILL_DURING_SAVE_STEP", None)
    return {**env, **(extra or {})}


def _check(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(result.args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")


STALL_STEPS, STALL_EVERY = 21, 10


def checkpoint_stall(root: Path) -> dict:
    """What checkpoints cost the training loop, synchronous vs asynchronous: the smoke model (recipes/smoke/
    pretrain.yaml: its 7.4M-parameter Llama, 8,192-token tokenizer and 256-token sequences, so its 88 MB
    checkpoint; batch 8 rather than 16 to halve the time; on the first 400 files of its corpus, without downstream
    evaluation), trained 21 steps with a checkpoint every 10, once with each setting. Compared: the stall of the periodic saves (steps 10 and 20; the last save always waits), each
    run's own `checkpoint_stall_s` records; and the write rates the runs measured (the synchronous save's bytes
    per second of stall, the background write's bytes per second)."""
    root.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load((REPO_ROOT / "recipes/smoke/pretrain.yaml").read_text(encoding="utf-8"))
    recipe.pop("eval", None)
    recipe["run_dir"] = str(root / "unused")
    recipe["tokenizer"]["dir"], recipe["data"]["dir"] = str(root / "tokenizer"), str(root / "data")
    recipe["data"]["sources"][0]["max_documents"] = 400
    recipe["train"].update(max_steps=STALL_STEPS, checkpoint_every=STALL_EVERY, warmup_steps=5, log_every=1,
                           eval_every=STALL_STEPS, eval_batches=2, global_batch_size=8)  # fmt: skip
    path = root / "smoke.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    for script in ("tokenizer/train_tokenizer.py", "data_prep/prepare.py"):
        _check(subprocess.run([sys.executable, script, str(path)], cwd=REPO_ROOT, env=_env(), capture_output=True,
                              text=True, timeout=900))  # fmt: skip
    runs = {}
    for mode in ("sync", "async"):
        run_dir = root / f"stall_{mode}"
        _check(subprocess.run([sys.executable, "train.py", str(path), f"run_dir={run_dir}",
                               f"train.checkpoint_async={'true' if mode == 'async' else 'false'}"],
                              cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=1800))  # fmt: skip
        runs[mode] = read_metrics(run_dir)
    periodic = range(STALL_EVERY, STALL_STEPS, STALL_EVERY)

    def stalls(mode: str) -> list[float]:
        saves = {r["step"]: r for r in runs[mode] if r.get("event") == "checkpoint"}
        return [saves[s]["checkpoint_stall_s"] for s in periodic]

    sync_saves = [r for r in runs["sync"] if r.get("event") == "checkpoint" and r["step"] in periodic]
    writes = [r for r in runs["async"] if r.get("event") == "checkpoint_written"]
    sync_s, async_s = sum(stalls("sync")) / len(periodic), sum(stalls("async")) / len(periodic)
    return {
        "checkpoint_mib": sync_saves[0]["checkpoint_bytes"] / 2**20,
        "sync_save_s": sync_s,
        "async_stall_s": async_s,
        "async_stall_ratio": async_s / sync_s,
        "sync_write_mib_per_s": sum(r["checkpoint_bytes"] for r in sync_saves) / 2**20 / sum(stalls("sync")),
        "background_write_mib_per_s": sum(r["checkpoint_bytes"] for r in writes)
        / 2**20
        / sum(r["write_s"] for r in writes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="reliability-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        ws = Workspace(root)
        summary = {}
        print(f"{'scenario':<30} {'result':<6} {'last step':>9} {'resumed at':>10} {'steps lost':>10}  {'seconds':>7}")
        for name, scenario in SCENARIOS.items():
            start = time.perf_counter()
            try:
                outcome = scenario(ws)
            except Exception as exc:  # a scenario that crashes is a failed scenario, not a crashed benchmark
                outcome = {"ok": False, "steps_lost": -1, "error": str(exc)[-500:]}
            summary[name] = {"ok": bool(outcome["ok"]), "steps_lost": int(outcome["steps_lost"])}
            if "max_loss_rel_diff" in outcome:  # a world-size change: how far from the reference on the new count
                summary[name]["max_loss_rel_diff"] = outcome["max_loss_rel_diff"]
                summary[name]["max_weight_abs_diff"] = outcome["max_weight_abs_diff"]
            print(
                f"{name:<30} {'pass' if outcome['ok'] else 'FAIL':<6} {outcome.get('last_step_reached', '-'):>9} "
                f"{outcome.get('resumed_from', '-'):>10} {outcome['steps_lost']:>10}  "
                f"{time.perf_counter() - start:>7.1f}",
                flush=True,
            )
            if "error" in outcome:
                print(f"    {outcome['error']}")
        stall = checkpoint_stall(root / "stall")
        stall["ok"] = stall["async_stall_ratio"] <= 0.25
        print(
            f"checkpoint stall (smoke model, {stall['checkpoint_mib']:.1f} MiB): synchronous save "
            f"{stall['sync_save_s']:.3f} s, asynchronous stall {stall['async_stall_s']:.3f} s "
            f"({100 * stall['async_stall_ratio']:.0f} %, goal <= 25 %); write rates: synchronous "
            f"{stall['sync_write_mib_per_s']:.0f} MiB/s, background {stall['background_write_mib_per_s']:.0f} MiB/s"
        )
        summary["checkpoint_stall"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in stall.items()}
        print(json.dumps(summary))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
