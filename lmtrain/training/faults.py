"""Fault injection for the reliability tests and benchmark, kept out of the training loop.

LMTRAIN_FAULT_NONFINITE_STEPS=5,6 makes the loss NaN on the main process at optimizer steps 5 and 6, before
backward (so the gradients are NaN too), to prove that every rank skips those steps together. Unset, `fit`
runs the plain `train_step`.
"""

from __future__ import annotations

import os

import torch

NONFINITE_FAULT_ENV = "LMTRAIN_FAULT_NONFINITE_STEPS"


def with_injected_faults(train_step, is_main_process: bool):
    """`train_step` itself, or, when the environment asks for faults, a wrapper that runs the named steps
    with a task whose loss is NaN."""
    raw = os.environ.get(NONFINITE_FAULT_ENV, "")
    steps = {int(s) for s in raw.split(",") if s.strip()}
    if not steps or not is_main_process:
        return train_step

    def faulty_step(step: int, task, *args, **kwargs):
        return train_step(step, _NonfiniteLoss(task) if step in steps else task, *args, **kwargs)

    return faulty_step


class _NonfiniteLoss:
    """The task, with a NaN loss."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name: str):
        return getattr(self._task, name)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._task.loss(model, batch) * float("nan")
