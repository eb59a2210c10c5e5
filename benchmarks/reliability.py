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

A scenario passes when its per-step losses and final weights are identical (bitwise) to the
reference's. `steps_lost` counts optimizer steps that were computed but had to be redone, measured
from two runs' own output: the last step the interrupted run reached (the highest step of a training
record in its metrics.jsonl, read as soon as it has exited: the recipe logs every step, and a
resumed run drops the records after its checkpoint) minus the step the resumed run restarts from
(its own "resuming from ... at step N" line). Neither figure is read from the checkpoint directory.
For nonfinite_loss, `steps_lost` is the number of updates skipped (the run's skipped_nonfinite
records). Prints a table, then one JSON line {scenario: {"ok", "steps_lost"}}.
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
        self._references: dict[int, Path] = {}

    def command(self, run_dir: Path, processes: int, *overrides: str) -> list[str]:
        launcher = LAUNCH_2PROC if processes == 2 else [sys.executable]
        return [*launcher, "train.py", str(self.recipe), f"run_dir={run_dir}", *overrides]

    def train(
        self, run_dir: Path, processes: int = 1, *overrides: str, env: dict | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(run_dir, processes, *overrides),
            cwd=REPO_ROOT,
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check:
            _check(result)
        return result

    def reference(self, processes: int) -> Path:
        """The uninterrupted run every scenario with this many processes is compared with."""
        if processes not in self._references:
            run_dir = self.root / f"reference_{processes}proc"
            self.train(run_dir, processes)
            self._references[processes] = run_dir
        return self._references[processes]

    def interrupt(self, run_dir: Path, processes: int, sig: signal.Signals, after_step: int) -> tuple[int, str]:
        """Start a run, send `sig` once it has logged `after_step`; its exit code and stderr."""
        proc = subprocess.Popen(
            self.command(run_dir, processes),
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


def sigkill_during_save(ws: Workspace) -> dict:
    run_dir = ws.root / "sigkill"
    kill_step = 2 * CHECKPOINT_EVERY
    killed = ws.train(run_dir, 1, env={"LMTRAIN_FAULT_KILL_DURING_SAVE_STEP": str(kill_step)}, check=False)
    leftovers = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    interrupted = read_metrics(run_dir)
    resumed = ws.train(run_dir, 1)
    return _compare(
        ws.reference(1),
        run_dir,
        interrupted,
        resumed.stderr,
        exit_code=killed.returncode,
        leftovers=leftovers,
        stop_stderr=killed.stderr,
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


SCENARIOS = {
    "ctrl_c_resume_1proc": ctrl_c_resume_1proc,
    "sigterm_resume_zero3_2proc": sigterm_resume_zero3_2proc,
    "sigkill_during_save": sigkill_during_save,
    "corrupt_checkpoint": corrupt_checkpoint,
    "nonfinite_loss": nonfinite_loss,
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
            print(
                f"{name:<30} {'pass' if outcome['ok'] else 'FAIL':<6} {outcome.get('last_step_reached', '-'):>9} "
                f"{outcome.get('resumed_from', '-'):>10} {outcome['steps_lost']:>10}  "
                f"{time.perf_counter() - start:>7.1f}",
                flush=True,
            )
            if "error" in outcome:
                print(f"    {outcome['error']}")
        print(json.dumps(summary))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
