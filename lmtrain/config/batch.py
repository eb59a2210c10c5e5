"""Batch arithmetic: how processes, micro-batches and accumulation make the global batch and the token budget."""

from __future__ import annotations

from dataclasses import dataclass

from lmtrain.config.recipe import Recipe, gradient_accumulation_steps
from lmtrain.formatting import format_count


@dataclass
class BatchArithmetic:
    num_processes: int
    micro_batch_size: int
    accumulation_steps: int
    global_batch_size: int
    seq_len: int
    max_steps: int

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_step * self.max_steps

    def describe(self) -> str:
        return (
            f"batch: {self.num_processes} process(es) × micro {self.micro_batch_size} × accumulation "
            f"{self.accumulation_steps} = {self.global_batch_size} sequences × {self.seq_len} tokens = "
            f"{self.tokens_per_step:,} tokens/step | {self.max_steps:,} steps = "
            f"{self.total_tokens:,} tokens ({format_count(self.total_tokens)})"
        )


def batch_arithmetic(recipe: Recipe, num_processes: int) -> BatchArithmetic:
    t = recipe.train
    return BatchArithmetic(
        num_processes,
        t.micro_batch_size,
        gradient_accumulation_steps(recipe, num_processes),
        t.global_batch_size,
        recipe.data.seq_len,
        t.max_steps,
    )
