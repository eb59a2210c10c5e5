"""Evaluation on the validation split: which examples each process scores, and the mean loss over all of them."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator

from lmtrain.errors import UserError
from lmtrain.training.task import to_device


def eval_shard(size: int, accelerator: Accelerator, micro_batch: int, max_batches: int) -> list[np.ndarray]:
    """This process's micro-batches of the first evaluation examples: the same examples on any number
    of processes, an equal share each (equal, so that every rank runs as many forwards as ZeRO-3 needs)."""
    world = accelerator.num_processes
    count = min(size, max_batches * micro_batch) if max_batches else size
    per_rank = count // world
    if per_rank == 0:
        raise UserError(
            f"the validation split has {size} examples, fewer than the {world} processes; add validation data"
        )
    first = accelerator.process_index * per_rank
    return [
        np.arange(start, min(start + micro_batch, first + per_rank))
        for start in range(first, first + per_rank, micro_batch)
    ]


@torch.no_grad()
def mean_eval_loss(model, accelerator: Accelerator, chunks: list[np.ndarray], batch_fn, loss_fn) -> float:
    """Example-weighted mean loss over `chunks` on all processes."""
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    for chunk in chunks:
        batch = to_device(batch_fn(chunk), accelerator.device)
        totals[0] += loss_fn(model, batch).double() * len(chunk)
        totals[1] += len(chunk)
    model.train(was_training)
    loss_sum, count = accelerator.reduce(totals, reduction="sum").tolist()
    return loss_sum / count
