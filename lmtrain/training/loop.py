"""The training loop, shared by pretraining and fine-tuning: `fit(recipe, task)`.

A `Task` says what is trained (model, batches, loss, evaluation, export); `fit` owns everything
else: the optimizer and schedule, gradient accumulation, checkpoints and exact resumption,
preemption, numerical guards, logging and best-on-validation selection. Processes and DeepSpeed
live in lmtrain/training/distributed.py; the loop below reads the same on 1 CPU or 512 GPUs.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from lmtrain.config.batch import BatchArithmetic
from lmtrain.config.recipe import recipe_to_dict, recipe_to_yaml
from lmtrain.data.sampler import GlobalBatchSampler
from lmtrain.errors import Preempted, UserError
from lmtrain.formatting import format_count, format_duration
from lmtrain.model.flops import flops_per_token, peak_flops_per_device
from lmtrain.model.llama import parameter_count
from lmtrain.training.checkpoint import (
    HARMLESS_CHANGES,
    check_resume_compatible,
    checkpoints_dir,
    complete_checkpoints,
    recipe_differences,
    resolve_resume,
    save_checkpoint,
)
from lmtrain.training.distributed import make_accelerator
from lmtrain.training.metrics_log import MetricsLog
from lmtrain.training.optim import build_optimizer, build_scheduler
from lmtrain.training.preemption import StopRequest
from lmtrain.training.task import Task, to_device

SPIKE_WINDOW = 50
# Fault injection for the reliability tests and benchmark: a comma-separated list of steps whose loss
# is made NaN on the main process, to prove that every rank skips those steps together.
NONFINITE_FAULT_ENV = "LMTRAIN_FAULT_NONFINITE_STEPS"


@dataclass
class FitResult:
    steps: int
    tokens: int
    seconds: float
    train_seconds: float
    first_eval_loss: float
    last_eval_loss: float
    final_dir: Path
    resumed_from_step: int
    skipped_steps: int
    best_step: int | None
    best_value: float | None


class TrainingStopped(UserError):
    """The run stopped itself after saving (too many non-finite steps)."""


def fit(recipe, task: Task) -> FitResult:
    """Train `task` as `recipe.train` says, resuming from run_dir/checkpoints when there is one."""
    t = recipe.train
    run_dir = Path(recipe.run_dir)
    accelerator = make_accelerator(recipe)
    rank, world = accelerator.process_index, accelerator.num_processes
    recipe_dict = recipe_to_dict(recipe)
    resume_from, warnings = resolve_resume(run_dir, t.resume)
    _guard_run_dir(run_dir, recipe_dict, resume_from, t, accelerator)
    set_seed(t.seed)

    model = task.build_model()
    n_params, n_trainable = parameter_count(model), parameter_count(model, trainable_only=True)
    optimizer = build_optimizer(model, t)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, t)

    state = {"step": 0, "tokens_seen": 0, "skipped_steps": 0, "first_eval_loss": None, "best": None}
    notes = []
    if resume_from is not None:
        saved = resume_from.state()
        notes = check_resume_compatible(saved, recipe_dict, task.fingerprints(), t.allow_resume_changes)
        if accelerator.distributed_type == DistributedType.DEEPSPEED and saved["world_size"] != world:
            raise UserError(
                f"{resume_from.path} holds DeepSpeed shards of {saved['world_size']} processes and this "
                f"launch has {world}; resume with {saved['world_size']} processes"
            )
        accelerator.load_state(str(resume_from.path))
        scheduler.load_state_dict(saved["scheduler"])
        state = {key: saved[key] for key in state}

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    accelerator.init_trackers(run_dir.name, config=_flatten(recipe_dict), init_kwargs={"wandb": {"dir": str(run_dir)}})
    log = MetricsLog(accelerator, run_dir / "metrics.jsonl", after_step=state["step"])
    sampler = GlobalBatchSampler(task.train_size, t.global_batch_size, t.seed)
    accum = accelerator.gradient_accumulation_steps
    arithmetic = BatchArithmetic(world, t.micro_batch_size, accum, t.global_batch_size, task.seq_len, t.max_steps)
    flops_per_tok = flops_per_token(accelerator.unwrap_model(model).config, task.seq_len, task.head_width)
    peak_flops, peak_label = peak_flops_per_device(accelerator.device)
    for line in warnings:
        log.print(f"warning: {line}")
    trainable = f" ({n_trainable:,} trainable)" if n_trainable != n_params else ""
    log.print(
        f"model: {type(accelerator.unwrap_model(model)).__name__}, {n_params:,} parameters{trainable} | "
        f"device {accelerator.device}, {world} process(es), precision {accelerator.mixed_precision} | "
        f"{flops_per_tok / 1e6:,.1f} MFLOP/token, peak {peak_flops / 1e12:.3g} TFLOP/s per device ({peak_label})"
    )
    log.print(
        arithmetic.describe() + f" | {task.train_size:,} training examples "
        f"(≈{sampler.epoch_at(t.max_steps):.2f} epochs) | {task.describe()}"
    )
    if resume_from is not None:
        log.print(
            f"resuming from {resume_from.path} at step {state['step']:,} "
            f"({format_count(state['tokens_seen'])} tokens seen)"
        )
        for note in notes:
            log.print(f"  changed since the checkpoint: {note}")

    final_dir = run_dir / "final"
    if state["step"] >= t.max_steps:
        if not any((final_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
            task.export(accelerator, model, final_dir)  # stopped after the last checkpoint, before the export
        log.print(f"run already complete: {state['step']:,} of {t.max_steps:,} steps; final model in {final_dir}")
        accelerator.end_training()
        return _result(state, t.max_steps, 0.0, 0.0, state["first_eval_loss"], final_dir, state["step"])

    def checkpoint(step: int) -> Path:
        saved = {
            **state,
            "scheduler": scheduler.state_dict(),
            "recipe": recipe_dict,
            "fingerprints": task.fingerprints(),
            "world_size": world,
            "epoch": sampler.epoch_at(step),
        }
        return save_checkpoint(accelerator, run_dir, step, saved, t.keep_last, t.keep_every)

    def run_eval(step: int) -> float:
        metrics = task.evaluate(model, accelerator)
        log.write({"step": step, **metrics})
        if t.best_metric:
            _update_best(
                state,
                metrics,
                step,
                t.best_metric,
                lambda: _export_atomically(task, accelerator, model, run_dir / "best"),
            )
        return metrics["eval_loss"]

    eval_loss = state["first_eval_loss"]
    if state["step"] == 0:
        eval_loss = state["first_eval_loss"] = run_eval(0)

    fault_steps = _fault_steps() if accelerator.is_main_process else set()
    progress = tqdm(
        total=t.max_steps,
        initial=state["step"],
        desc="train",
        dynamic_ncols=True,
        disable=not (accelerator.is_main_process and sys.stderr.isatty()),
    )
    start = window_start = time.perf_counter()
    eval_seconds = window_eval_seconds = 0.0
    window = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # loss sum, tokens
    window_steps = window_updates = consecutive_skips = 0
    recent_losses: deque[float] = deque(maxlen=SPIKE_WINDOW)
    first_step = state["step"] + 1
    model.train()
    with StopRequest() as stop:
        for step in range(first_step, t.max_steps + 1):
            indices = sampler.rank_batch(step - 1, rank, world)
            step_loss = torch.zeros((), device=accelerator.device)
            step_tokens = 0
            for micro_indices in np.split(indices, accum):
                batch = to_device(task.batch(micro_indices), accelerator.device)
                with accelerator.accumulate(model):
                    loss = task.loss(model, batch)
                    if step in fault_steps:
                        loss = loss * float("nan")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
                step_loss += loss.detach() / accum
                step_tokens += task.count_tokens(batch)
            grad_norm = float(grad_norm) if grad_norm is not None else math.nan
            local_bad = not (math.isfinite(grad_norm) and torch.isfinite(step_loss).item())
            stop_now, skip = _agree(accelerator, stop.signal_name is not None, local_bad)
            if skip:
                # Under DeepSpeed the engine has already refused the update (non-finite norm);
                # elsewhere we do not apply it.
                optimizer.zero_grad(set_to_none=True)
                state["skipped_steps"] += 1
                consecutive_skips += 1
                log.write(
                    {
                        "step": step,
                        "event": "skipped_nonfinite",
                        "loss": _finite_or_none(step_loss.item()),
                        "grad_norm": _finite_or_none(grad_norm),
                        "data_indices": indices.tolist(),
                        "rank": rank,
                    },
                    every_rank=True,
                )
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                consecutive_skips = 0
                window[0] += step_loss.double()
                window_updates += 1
                _check_spike(log, step, step_loss.item(), recent_losses, t.spike_factor, indices, rank)
            window[1] += step_tokens
            window_steps += 1
            scheduler.step()
            state["step"] = step
            progress.update(1)
            diverged = consecutive_skips >= t.max_skipped_steps
            save_now = (
                stop_now or diverged or step == t.max_steps or (t.checkpoint_every and step % t.checkpoint_every == 0)
            )

            if step % t.log_every == 0 or save_now:  # a checkpoint closes the window: its state holds no partial one
                now = time.perf_counter()
                seconds = max(now - window_start - window_eval_seconds, 1e-9)
                loss_sum, tokens = accelerator.reduce(window, reduction="sum").tolist()
                state["tokens_seen"] += int(tokens)
                tokens_per_s = tokens / seconds
                tokens_per_s_device = tokens_per_s / world
                log.write(
                    {
                        "step": step,
                        "loss": loss_sum / (window_updates * world) if window_updates else None,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": _finite_or_none(grad_norm),
                        "tokens_per_s": tokens_per_s,
                        "tokens_per_s_per_device": tokens_per_s_device,
                        "mfu": tokens_per_s_device * flops_per_tok / peak_flops,
                        "tokens_seen": state["tokens_seen"],
                        "eta_s": (t.max_steps - step) * seconds / window_steps,
                    }
                )
                window_start, window_eval_seconds, window_steps, window_updates = now, 0.0, 0, 0
                window.zero_()

            if step % t.eval_every == 0 or step == t.max_steps:
                eval_start = time.perf_counter()
                eval_loss = run_eval(step)
                window_eval_seconds += time.perf_counter() - eval_start
                eval_seconds += time.perf_counter() - eval_start

            if diverged:
                path = checkpoint(step)
                raise TrainingStopped(
                    f"{consecutive_skips} steps in a row had a non-finite loss or gradient norm (last: step {step}); "
                    f"stopped after saving {path}. Lower train.lr, raise train.warmup_steps or check the data "
                    f"indices logged in {run_dir / 'metrics.jsonl'}, then resume"
                )
            if save_now:
                path = checkpoint(step)
                if stop_now:
                    progress.close()
                    accelerator.end_training()
                    raise Preempted(
                        f"stopped by {stop.signal_name or 'a signal on another rank'} after step {step:,}; "
                        f"checkpoint saved in {path}. Run the same command again to resume",
                        stop.exit_code,
                    )
    progress.close()
    seconds = time.perf_counter() - start

    task.export(accelerator, model, final_dir)
    accelerator.end_training()
    done = t.max_steps - first_step + 1
    train_seconds = seconds - eval_seconds
    best = state["best"]
    best_text = (
        f" | best {best['metric']} {best['value']:.4f} at step {best['step']:,} → {run_dir / 'best'}" if best else ""
    )
    log.print(
        f"done: {done:,} steps{f' (from step {first_step - 1:,})' if first_step > 1 else ''}, "
        f"{format_count(state['tokens_seen'])} tokens seen, in {format_duration(seconds)} "
        f"({done / max(train_seconds, 1e-9):.2f} steps/s training) | eval loss {state['first_eval_loss']:.3f} → "
        f"{eval_loss:.3f} (ppl {math.exp(min(eval_loss, 50)):,.1f}) | skipped steps {state['skipped_steps']}"
        f"{best_text} | model: {final_dir}"
    )
    return _result(state, t.max_steps, seconds, train_seconds, eval_loss, final_dir, first_step - 1)


def _result(
    state: dict, steps: int, seconds: float, train_seconds: float, eval_loss: float, final_dir: Path, resumed_from: int
) -> FitResult:
    best = state["best"] or {}
    return FitResult(
        steps,
        state["tokens_seen"],
        seconds,
        train_seconds,
        state["first_eval_loss"],
        eval_loss,
        final_dir,
        resumed_from,
        state["skipped_steps"],
        best.get("step"),
        best.get("value"),
    )


def _agree(accelerator: Accelerator, stop_requested: bool, bad_step: bool) -> tuple[bool, bool]:
    """(stop, skip) as every rank sees them: true if true on any rank."""
    if accelerator.num_processes == 1:
        return stop_requested, bad_step
    flags = torch.tensor([float(stop_requested), float(bad_step)], device=accelerator.device)
    stop, skip = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
    return stop, skip


def _check_spike(
    log: MetricsLog, step: int, loss: float, recent: deque, factor: float, indices: np.ndarray, rank: int
) -> None:
    if factor and len(recent) >= 10:
        mean = sum(recent) / len(recent)
        if loss > factor * mean:
            log.write(
                {
                    "step": step,
                    "event": "loss_spike",
                    "loss": loss,
                    "running_mean": mean,
                    "data_indices": indices.tolist(),
                    "rank": rank,
                },
                every_rank=True,
            )
    recent.append(loss)


def _update_best(state: dict, metrics: dict, step: int, metric: str, export) -> None:
    if metric not in metrics:
        raise UserError(
            f"train.best_metric: {metric!r} is not an evaluation metric of this task; "
            f"choose one of {', '.join(sorted(metrics))}"
        )
    value = metrics[metric]
    lower_is_better = metric.endswith(("loss", "ppl"))
    best = state["best"]
    if best is not None and best["metric"] != metric:  # train.best_metric changed on resume: start over
        best = None
    if best is None or (value < best["value"] if lower_is_better else value > best["value"]):
        export()
        state["best"] = {"metric": metric, "value": value, "step": step}


def _export_atomically(task: Task, accelerator: Accelerator, model, out_dir: Path) -> None:
    staging = out_dir.with_name(f".tmp-{out_dir.name}")
    task.export(accelerator, model, staging)
    if accelerator.is_main_process:
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    accelerator.wait_for_everyone()


def _guard_run_dir(run_dir: Path, recipe_dict: dict, resume_from, t, accelerator: Accelerator) -> None:
    """Never mix two runs in one directory unless the user says so."""
    if resume_from is not None:
        return
    root = checkpoints_dir(run_dir)
    has_checkpoints = bool(complete_checkpoints(run_dir)[0])
    previous = run_dir / "recipe.yaml"
    different = False
    if previous.is_file():
        import yaml

        saved = yaml.safe_load(previous.read_text(encoding="utf-8")) or {}
        different = any(key not in HARMLESS_CHANGES for key, _, _ in recipe_differences(saved, recipe_dict))
    if not (has_checkpoints or different):
        return
    if not t.overwrite:
        what = "checkpoints" if has_checkpoints else "the outputs of a run with a different recipe"
        raise UserError(
            f"{run_dir} holds {what} and train.resume={t.resume}; use another run_dir, resume it "
            "(train.resume=auto), or set train.overwrite=true to replace it"
        )
    if accelerator.is_main_process:
        shutil.rmtree(root, ignore_errors=True)
        for name in ("final", "best", "metrics.jsonl"):
            path = run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()


def _fault_steps() -> set[int]:
    raw = os.environ.get(NONFINITE_FAULT_ENV, "")
    return {int(s) for s in raw.split(",") if s.strip()}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _flatten(tree: dict, prefix: str = "") -> dict:
    """Trackers want flat scalar configs: {'train.lr': 3e-4, ...}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
