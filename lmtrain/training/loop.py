"""The training loop, shared by pretraining and fine-tuning: `fit(recipe, task)`.

A `Task` says what is trained (model, batches, loss, evaluation, export); `fit` owns everything
else: the optimizer and schedule, gradient accumulation, checkpoints and exact resumption,
preemption, numerical guards, logging and best-on-validation selection. Processes and DeepSpeed
live in lmtrain/training/distributed.py; the loop below reads the same on 1 CPU or 512 GPUs.

    fit               set-up, then per step: train_step → update or skip → log → evaluate → checkpoint
    train_step        one optimizer step's forward/backward over its micro-batches, loss weighted by targets
    ThroughputWindow  the counters between two log records, and the log record they make
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from lmtrain.config.batch import BatchArithmetic
from lmtrain.config.recipe import recipe_to_dict, recipe_to_yaml
from lmtrain.errors import Preempted, UserError
from lmtrain.formatting import format_count, format_duration
from lmtrain.model.flops import flops_per_token, peak_flops_per_device
from lmtrain.model.llama import parameter_count
from lmtrain.training.checkpoint import (
    Checkpointer,
    check_resume_compatible,
    checkpoints_dir,
    complete_checkpoints,
    is_harmless,
    recipe_differences,
    resolve_resume,
    resume_directory,
)
from lmtrain.training.distributed import make_accelerator
from lmtrain.training.faults import with_injected_faults
from lmtrain.training.metrics_log import MetricsLog
from lmtrain.training.optim import build_optimizer, build_scheduler
from lmtrain.training.preemption import StopRequest
from lmtrain.training.publishing import RunOutputs
from lmtrain.training.task import Task, to_device

SPIKE_WINDOW = 50
GIB = 2**30


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
    t, run_dir = recipe.train, Path(recipe.run_dir)
    accelerator = make_accelerator(recipe)
    rank, world = accelerator.process_index, accelerator.num_processes
    model, optimizer, scheduler, state, log, sampler, outputs = _set_up(recipe, task, accelerator)
    final_dir = run_dir / "final"
    if state["step"] >= t.max_steps:
        return _already_complete(outputs, accelerator, model, state, log, final_dir, t.max_steps)

    def run_eval(step: int) -> dict[str, float]:
        metrics = task.evaluate(model, accelerator, step)
        log.write({"step": step, **metrics})
        outputs.loss_curve()
        if t.best_metric:
            _update_best(state, metrics, step, t.best_metric, lambda: outputs.export(model, run_dir / "best"))
        return metrics

    last_eval = {"eval_loss": state["first_eval_loss"]}
    if state["step"] == 0:
        last_eval = run_eval(0)
        state["first_eval_loss"] = last_eval["eval_loss"]
    step_fn = with_injected_faults(train_step, accelerator.is_main_process)
    accum = accelerator.gradient_accumulation_steps
    window = ThroughputWindow(accelerator, _flops_per_token(accelerator, model, task))
    recent_losses: deque[float] = deque(maxlen=SPIKE_WINDOW)
    checkpointer = Checkpointer(accelerator, run_dir, t.keep_last, t.keep_every, t.checkpoint_async)
    first_step, consecutive_skips, start = state["step"] + 1, 0, time.perf_counter()
    progress = tqdm(total=t.max_steps, initial=state["step"], desc="train", dynamic_ncols=True,
                    disable=not (accelerator.is_main_process and sys.stderr.isatty()))  # fmt: skip
    model.train()
    with StopRequest() as stop:
        for step in range(first_step, t.max_steps + 1):
            indices = sampler.rank_batch(step - 1, rank, world)
            result = step_fn(step, task, model, accelerator, indices, accum, t.grad_clip)
            stop_now, skip = _agree(accelerator, stop.signal_name is not None, not result.finite)
            if skip:  # under DeepSpeed the engine has already refused the update (non-finite norm)
                state["skipped_steps"] += 1
                consecutive_skips += 1
                log.write({"step": step, "event": "skipped_nonfinite", "loss": _finite_or_none(result.mean_loss),
                           "grad_norm": _finite_or_none(result.grad_norm), "data_indices": indices.tolist(),
                           "rank": rank}, every_rank=True)  # fmt: skip
            else:
                optimizer.step()
                consecutive_skips = 0
                _check_spike(log, step, result.mean_loss, recent_losses, t.spike_factor, indices, rank)
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]  # the rate this step applied (or would have, if skipped)
            scheduler.step()
            window.add(result, updated=not skip)
            state["step"] = step
            for record in checkpointer.poll():  # an asynchronous save that finished writing, if any
                log.write(record)
            progress.update(1)
            diverged = consecutive_skips >= t.max_skipped_steps
            periodic = t.checkpoint_every and step % t.checkpoint_every == 0
            save_now = stop_now or diverged or step == t.max_steps or periodic
            if step % t.log_every == 0 or save_now:  # a checkpoint closes the window: its state holds no partial one
                log.write(window.record(step, state, lr, t.max_steps) | task.train_metrics(accelerator))
            if step % t.eval_every == 0 or step == t.max_steps:
                with window.excluded():
                    last_eval = run_eval(step)
            if save_now:
                last = stop_now or diverged or step == t.max_steps  # waits until written: the process ends next
                path = _checkpoint(checkpointer, accelerator, step, state, scheduler, recipe, task, sampler, log, last)
                with window.excluded():
                    outputs.checkpoint(model, step, state["tokens_seen"])
            if diverged:
                raise TrainingStopped(
                    f"{consecutive_skips} steps in a row had a non-finite loss or gradient norm (last: step {step}); "
                    f"stopped after saving {path}. Check the data indices logged in {run_dir / 'metrics.jsonl'}; "
                    "resume with a lower train.lr or more train.warmup_steps and train.allow_resume_changes=true"
                )
            if stop_now:
                progress.close()
                accelerator.end_training()
                raise Preempted(f"stopped by {stop.signal_name or 'a signal on another rank'} after step {step:,}; "
                                f"checkpoint saved in {path}. Run the same command again to resume", stop.exit_code)  # fmt: skip
    progress.close()
    seconds = time.perf_counter() - start
    log.print(checkpointer.summary())
    outputs.final(model, final_dir)
    accelerator.end_training()
    _print_summary(log, state, first_step, t.max_steps, seconds, window.excluded_seconds, last_eval, final_dir)
    outputs.finish()
    eval_loss = last_eval["eval_loss"]
    return _result(state, t.max_steps, seconds, seconds - window.excluded_seconds, eval_loss, final_dir, first_step - 1)


@dataclass
class StepResult:
    """One optimizer step on this process."""

    loss_sum: float
    """Sum over this process's loss targets of their loss (the mean loss × `targets`)."""
    targets: float
    tokens: int
    grad_norm: float
    """The global gradient norm before clipping (NaN when not known)."""

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.targets, 1e-12)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.grad_norm) and math.isfinite(self.loss_sum)


def train_step(
    step: int, task: Task, model, accelerator: Accelerator, indices: np.ndarray, accum: int, grad_clip: float
) -> StepResult:
    """Forward and backward over the step's micro-batches, then clip. The step's gradient is that of the mean
    loss over all of its loss targets, on every process together: each micro-batch's mean is weighted by its
    targets (so that micro-batches with few answer tokens do not weigh as much as full ones), whatever the
    micro-batch size, accumulation or number of processes."""
    task.start_step(step)
    batches = [task.batch(micro) for micro in np.split(indices, accum)]
    targets = [task.loss_targets(batch) for batch in batches]
    step_targets = _sum_over_processes(accelerator, sum(targets))
    # accelerator.backward divides by the accumulation steps and the processes' gradients are averaged:
    # scaling by accum × world / step_targets leaves Σ (mean_i × targets_i) / step_targets.
    scale = accum * accelerator.num_processes / max(step_targets, 1e-12)
    loss_sum, tokens, grad_norm = torch.zeros((), dtype=torch.float64, device=accelerator.device), 0, None
    for batch, n in zip(batches, targets):
        batch = to_device(batch, accelerator.device)
        with accelerator.accumulate(model):
            loss = task.loss(model, batch)
            if n == 0:  # a mean over no targets is NaN; it must weigh nothing, yet every rank runs backward
                loss = loss.nan_to_num(0.0)
            accelerator.backward(loss * (n * scale))
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
        loss_sum += loss.detach().double() * n
        tokens += task.count_tokens(batch)
    return StepResult(loss_sum.item(), sum(targets), tokens, float(grad_norm) if grad_norm is not None else math.nan)


class ThroughputWindow:
    """The counters between two log records (losses, loss targets, tokens, wall time less evaluation), summed
    over processes when the record is made."""

    def __init__(self, accelerator: Accelerator, flops_per_token: float):
        self.accelerator, self.flops_per_token = accelerator, flops_per_token
        self.peak_flops, _ = peak_flops_per_device(accelerator.device)
        self.totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, targets, tokens
        self.steps, self.grad_norm, self.excluded_seconds = 0, math.nan, 0.0
        self.start, self._excluded_in_window = time.perf_counter(), 0.0

    def add(self, result: StepResult, updated: bool) -> None:
        """A step's counts; the loss of a skipped (non-finite) step is left out, its tokens are not."""
        if updated:
            self.totals[0] += result.loss_sum
            self.totals[1] += result.targets
        self.totals[2] += result.tokens
        self.steps += 1
        self.grad_norm = result.grad_norm

    @contextmanager
    def excluded(self):
        """A context whose time (evaluation) is not training time."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self._excluded_in_window += seconds
        self.excluded_seconds += seconds

    def record(self, step: int, state: dict, lr: float, max_steps: int) -> dict:
        """The log record of the window ending at `step` (adds its tokens to `state`), and a new window."""
        now = time.perf_counter()
        seconds = max(now - self.start - self._excluded_in_window, 1e-9)
        loss_sum, targets, tokens = self.accelerator.reduce(self.totals, reduction="sum").tolist()
        state["tokens_seen"] += int(tokens)
        per_device = tokens / seconds / self.accelerator.num_processes
        record = {
            "step": step, "loss": loss_sum / targets if targets else None, "lr": lr,
            "grad_norm": _finite_or_none(self.grad_norm), "tokens_per_s": tokens / seconds,
            "tokens_per_s_per_device": per_device, "mfu": per_device * self.flops_per_token / self.peak_flops,
            "tokens_seen": state["tokens_seen"], "eta_s": (max_steps - step) * seconds / self.steps,
        }  # fmt: skip
        if self.accelerator.device.type == "cuda":
            record["gpu_mem_allocated_gib"] = torch.cuda.max_memory_allocated(self.accelerator.device) / GIB
            record["gpu_mem_reserved_gib"] = torch.cuda.max_memory_reserved(self.accelerator.device) / GIB
            torch.cuda.reset_peak_memory_stats(self.accelerator.device)
        self.totals.zero_()
        self.steps, self.start, self._excluded_in_window = 0, now, 0.0
        return record


def _set_up(recipe, task: Task, accelerator: Accelerator):
    """The model, optimizer and schedule (restored from the checkpoint to resume from, if any), the run state,
    the log with its banner, and the sampler."""
    t, run_dir = recipe.train, Path(recipe.run_dir)
    world = accelerator.num_processes
    recipe_dict = recipe_to_dict(recipe)
    resume_from, warnings = resolve_resume(run_dir, t.resume)
    _guard_run_dir(run_dir, recipe_dict, resume_from, t, accelerator)
    outputs = RunOutputs(recipe, recipe_dict, task, accelerator)  # checks the hub (hub.push) before any work
    set_seed(t.seed)
    model = task.build_model()
    n_params, n_trainable = parameter_count(model), parameter_count(model, trainable_only=True)
    optimizer = build_optimizer(model, t)
    fused = " (fused)" if optimizer.defaults.get("fused") else ""
    notes = []
    if resume_from is not None:  # before prepare: a resume on another world size configures DeepSpeed
        saved = resume_from.state()
        notes = check_resume_compatible(saved, recipe_dict, task.fingerprints(), t.allow_resume_changes)
        load_from, world_change = resume_directory(resume_from, accelerator)
        notes += [world_change] if world_change else []
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, t)
    state = {"step": 0, "tokens_seen": 0, "skipped_steps": 0, "first_eval_loss": None, "best": None}
    if resume_from is not None:
        accelerator.load_state(str(load_from))
        scheduler.load_state_dict(saved["scheduler"])
        state = {key: saved[key] for key in state}

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    accelerator.init_trackers(run_dir.name, config=_flatten(recipe_dict), init_kwargs={"wandb": {"dir": str(run_dir)}})
    log = MetricsLog(accelerator, run_dir / "metrics.jsonl", after_step=state["step"])
    sampler = task.sampler(t.global_batch_size, t.seed)
    accum = accelerator.gradient_accumulation_steps
    arithmetic = BatchArithmetic(world, t.micro_batch_size, accum, t.global_batch_size, task.seq_len, t.max_steps)
    peak_flops, peak_label = peak_flops_per_device(accelerator.device)
    for line in warnings:
        log.print(f"warning: {line}")
    trainable = f" ({n_trainable:,} trainable)" if n_trainable != n_params else ""
    log.print(
        f"model: {type(accelerator.unwrap_model(model)).__name__}, {n_params:,} parameters{trainable} | "
        f"device {accelerator.device}, {world} process(es), precision {accelerator.mixed_precision}, "
        f"AdamW{fused} | {_flops_per_token(accelerator, model, task) / 1e6:,.1f} MFLOP/token, "
        f"peak {peak_flops / 1e12:.3g} TFLOP/s per device ({peak_label})"
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
    return model, optimizer, scheduler, state, log, sampler, outputs


def _flops_per_token(accelerator: Accelerator, model, task: Task) -> float:
    return flops_per_token(accelerator.unwrap_model(model).config, task.seq_len, task.head_width)


def _checkpoint(checkpointer: Checkpointer, accelerator, step: int, state: dict, scheduler, recipe, task: Task,
                sampler, log: MetricsLog, last: bool) -> Path:  # fmt: skip
    """Save checkpoint `step` and log what it cost the loop (`checkpoint_stall_s`)."""
    saved = {
        **state,
        "scheduler": scheduler.state_dict(),
        "recipe": recipe_to_dict(recipe),
        "fingerprints": task.fingerprints(),
        "world_size": accelerator.num_processes,
        "epoch": sampler.epoch_at(step),
    }
    path, records = checkpointer.save(step, saved, wait=last)
    for record in records:
        log.write(record)
    return path


def _already_complete(outputs: RunOutputs, accelerator, model, state: dict, log: MetricsLog, final_dir: Path,
                      max_steps: int):  # fmt: skip
    if not any((final_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        outputs.export(model, final_dir)  # stopped after the last checkpoint, before the export
    log.print(f"run already complete: {state['step']:,} of {max_steps:,} steps; final model in {final_dir}")
    outputs.publish_copy(final_dir, "main", "Final model")
    if missing := outputs.unpublished_checkpoints():
        log.print(f"hub: {missing} kept checkpoint(s) are not on the hub; `python publish.py {final_dir.parent}` "
                  "publishes them")  # fmt: skip
    accelerator.end_training()
    outputs.finish()
    return _result(state, max_steps, 0.0, 0.0, state["first_eval_loss"], final_dir, state["step"])


def _print_summary(log: MetricsLog, state: dict, first_step: int, max_steps: int, seconds: float,
                   eval_seconds: float, last_eval: dict, final_dir: Path) -> None:  # fmt: skip
    """The run's last line: its figures, the final evaluation's among them (bits per byte, downstream tasks)."""
    done, eval_loss = max_steps - first_step + 1, last_eval["eval_loss"]
    figures = "".join(
        f", {k} {v:.3f}" for k, v in last_eval.items() if k not in ("eval_loss", "eval_ppl") and not k.endswith("_s")
    )
    best = state["best"]
    best_text = (
        f" | best {best['metric']} {best['value']:.4f} at step {best['step']:,} → {final_dir.parent / 'best'}"
        if best
        else ""
    )
    log.print(
        f"done: {done:,} steps{f' (from step {first_step - 1:,})' if first_step > 1 else ''}, "
        f"{format_count(state['tokens_seen'])} tokens seen, in {format_duration(seconds)} "
        f"({done / max(seconds - eval_seconds, 1e-9):.2f} steps/s training) | eval loss "
        f"{state['first_eval_loss']:.3f} → {eval_loss:.3f} (ppl {math.exp(min(eval_loss, 50)):,.1f}{figures}) | "
        f"skipped steps {state['skipped_steps']}{best_text} | model: {final_dir}"
    )


def _sum_over_processes(accelerator: Accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(total, reduction="sum").item()


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
    lower_is_better = metric.endswith(("loss", "ppl", "bpb"))
    best = state["best"]
    if best is not None and best["metric"] != metric:  # train.best_metric changed on resume: start over
        best = None
    if best is None or (value < best["value"] if lower_is_better else value > best["value"]):
        export()
        state["best"] = {"metric": metric, "value": value, "step": step}


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
        different = any(not is_harmless(key) for key, _, _ in recipe_differences(saved, recipe_dict))
    if not (has_checkpoints or different):
        return
    if not t.overwrite:
        if has_checkpoints:
            what, options = "checkpoints", "resume it (train.resume=auto), "
        else:
            what, options = "the outputs of a run with a different recipe", ""
        raise UserError(
            f"{run_dir} holds {what} and train.resume={t.resume}; use another run_dir, {options}"
            "or set train.overwrite=true to replace it"
        )
    if accelerator.is_main_process:
        shutil.rmtree(root, ignore_errors=True)
        for name in ("final", "best", "publish", "metrics.jsonl", "loss.png"):
            path = run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()


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
