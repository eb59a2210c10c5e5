"""The optimizer and the learning-rate schedule, built from the recipe's train section: one place to change either."""

from __future__ import annotations

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup


def build_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on matrices only; the fused kernel wherever the device has one."""
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(
        decay_param_groups(model, t.weight_decay), lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps, fused=fused
    )


def build_scheduler(optimizer: torch.optim.Optimizer, t) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak. Built on the prepared optimizer (ZeRO-3
    regroups parameters) and stepped once per optimizer step by the loop (Accelerate's scheduler wrapper would
    step it once per process)."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps, min_lr_rate=t.min_lr_ratio
    )


def decay_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights), none on norms and biases; frozen
    parameters are left out, so the optimizer holds no state for them."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
