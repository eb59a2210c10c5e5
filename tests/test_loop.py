"""The loop's small pieces, by value: the throughput window's log record, spike events, the skip agreement,
fault injection, and the refusal to resume DeepSpeed shards on another number of processes."""

import math
from collections import deque
from types import SimpleNamespace

import numpy as np
import torch

from lmtrain.training import faults, loop
from lmtrain.training.loop import StepResult, ThroughputWindow, _check_spike


class OneProcess:
    """What ThroughputWindow needs of an Accelerator, for one CPU process."""

    device = torch.device("cpu")
    num_processes = 1

    def reduce(self, tensor, reduction="sum"):
        return tensor


def test_the_window_logs_the_target_weighted_loss_and_leaves_out_skipped_steps():
    window = ThroughputWindow(OneProcess(), flops_per_token=1e6)
    window.add(StepResult(loss_sum=30.0, targets=10, tokens=100, grad_norm=0.5), updated=True)  # mean 3.0
    window.add(StepResult(loss_sum=10.0, targets=40, tokens=100, grad_norm=0.7), updated=True)  # mean 0.25
    window.add(StepResult(loss_sum=math.nan, targets=50, tokens=100, grad_norm=math.nan), updated=False)
    state = {"tokens_seen": 1000}
    record = window.record(step=3, state=state, lr=1e-3, max_steps=6)
    assert record["loss"] == 40.0 / 50  # not (3.0 + 0.25) / 2: a step counts by its targets
    assert state["tokens_seen"] == 1300 and record["tokens_seen"] == 1300  # a skipped step's tokens were read
    assert record["grad_norm"] is None  # the last step's norm, not finite
    assert record["lr"] == 1e-3 and record["step"] == 3
    assert record["tokens_per_s"] == record["tokens_per_s_per_device"] > 0
    assert record["mfu"] == record["tokens_per_s"] * 1e6 / window.peak_flops
    window.add(StepResult(loss_sum=5.0, targets=5, tokens=7, grad_norm=0.1), updated=True)
    second = window.record(step=4, state=state, lr=1e-3, max_steps=6)  # a new window: nothing carried over
    assert second["loss"] == 1.0 and state["tokens_seen"] == 1307 and second["grad_norm"] == 0.1


def test_time_spent_evaluating_is_not_training_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    window = ThroughputWindow(OneProcess(), flops_per_token=1.0)
    window.add(StepResult(1.0, 1, 1000, 1.0), updated=True)
    clock[0] += 1.0  # one second of training
    with window.excluded():
        clock[0] += 9.0  # nine seconds of evaluation
    record = window.record(step=1, state={"tokens_seen": 0}, lr=0.0, max_steps=3)
    assert record["tokens_per_s"] == 1000.0  # 1,000 tokens in one second, not in ten
    assert record["eta_s"] == 2 * 1.0  # two steps left at one training second each
    assert window.excluded_seconds == 9.0


class Recorder:
    def __init__(self):
        self.records = []

    def write(self, record, every_rank=False):
        self.records.append((record, every_rank))


def test_a_spike_is_logged_with_its_data_indices_only_above_the_factor_and_after_ten_steps():
    log, recent = Recorder(), deque(maxlen=50)
    for step in range(1, 10):
        _check_spike(log, step, 100.0 if step == 5 else 1.0, recent, 3.0, np.array([step]), rank=0)
    assert log.records == []  # fewer than ten losses seen: no running mean yet
    for step in range(10, 12):
        _check_spike(log, step, 1.0, recent, 3.0, np.array([step]), rank=0)
    mean = sum(recent) / len(recent)
    _check_spike(log, 12, 2.9 * mean, recent, 3.0, np.array([12]), rank=0)
    assert log.records == []
    mean = sum(recent) / len(recent)
    _check_spike(log, 13, 3.1 * mean, recent, 3.0, np.array([7, 8]), rank=1)
    ((record, every_rank),) = log.records
    assert every_rank and record["event"] == "loss_spike" and record["step"] == 13
    assert record["data_indices"] == [7, 8] and record["rank"] == 1
    assert record["running_mean"] == mean and record["loss"] == 3.1 * mean
    _check_spike(log, 14, 1000.0, recent, 0.0, np.array([14]), rank=0)  # factor 0: off
    assert len(log.records) == 1


def test_fault_injection_leaves_the_step_alone_unless_asked(monkeypatch):
    def step_fn(step, task, *args):
        return task.loss(None, None)

    task = SimpleNamespace(loss=lambda model, batch: torch.tensor(2.0), seq_len=8)
    monkeypatch.delenv(faults.NONFINITE_FAULT_ENV, raising=False)
    assert faults.with_injected_faults(step_fn, is_main_process=True) is step_fn
    monkeypatch.setenv(faults.NONFINITE_FAULT_ENV, "3, 5")
    assert faults.with_injected_faults(step_fn, is_main_process=False) is step_fn  # only the main process
    faulty = faults.with_injected_faults(step_fn, is_main_process=True)
    assert faulty(2, task).item() == 2.0
    assert math.isnan(faulty(3, task).item()) and math.isnan(faulty(5, task).item())
    assert faulty(4, task).item() == 2.0
