"""Evaluation on the validation split: which examples each process scores, and the mean loss over all of them.

Every example counts exactly once on any number of processes. The examples are split into contiguous
shares that differ by at most one; a process whose share runs out before the others still runs as many
forwards as they do (under ZeRO-3 every forward gathers parameters from all ranks, so a rank that stopped
early would hang the rest), on a stand-in example that is not counted: the padding and de-duplication
that Accelerate's `gather_for_metrics` does for a prepared dataloader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator

from lmtrain.errors import UserError
from lmtrain.training.task import to_device


@dataclass(frozen=True)
class EvalBatch:
    indices: np.ndarray
    """Validation examples this forward reads."""
    counted: bool = True
    """False for a stand-in forward that keeps this process in step with the others; its results are dropped."""


def eval_shard(size: int, accelerator: Accelerator, micro_batch: int, max_batches: int) -> list[EvalBatch]:
    """This process's forwards over the first min(size, max_batches × micro_batch) validation examples
    (all of them when max_batches is 0): the same examples on any number of processes, each counted once."""
    if size == 0:
        raise UserError("the validation split is empty; add validation data (see data.validation_fraction)")
    world, rank = accelerator.num_processes, accelerator.process_index
    count = min(size, max_batches * micro_batch) if max_batches else size
    share = np.array_split(np.arange(count), world)[rank]
    forwards = math.ceil(math.ceil(count / world) / micro_batch)
    batches = [EvalBatch(share[i * micro_batch : (i + 1) * micro_batch]) for i in range(forwards)]
    return [b if len(b.indices) else EvalBatch(np.zeros(1, dtype=np.int64), counted=False) for b in batches]


@torch.no_grad()
def mean_eval_loss(model, accelerator: Accelerator, batches: list[EvalBatch], batch_fn, task) -> float:
    """The mean loss per loss target (`task.loss_targets`) over the counted `batches` of all processes."""

    def sums(batch: dict) -> torch.Tensor:
        targets = task.loss_targets(batch)
        loss = task.loss(model, batch).double()
        return torch.stack([loss * targets, torch.tensor(float(targets), dtype=torch.float64, device=loss.device)])

    loss_sum, targets = eval_sums(model, accelerator, batches, batch_fn, sums, 2).tolist()
    return loss_sum / targets


@torch.no_grad()
def eval_sums(model, accelerator: Accelerator, batches: list[EvalBatch], batch_fn, sums_fn, width: int) -> torch.Tensor:
    """The sum over the counted `batches` of all processes of `sums_fn(batch)`, a float64 vector of `width`
    (every rank runs every forward, stand-ins included, so that ZeRO-3's parameter gathers stay in step)."""
    totals = torch.zeros(width, dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    for eval_batch in batches:
        values = sums_fn(to_device(batch_fn(eval_batch.indices), accelerator.device))
        if eval_batch.counted:
            totals += values.to(totals)
    model.train(was_training)
    return accelerator.reduce(totals, reduction="sum").cpu()
