"""Run arithmetic that needs no weights: batch sizes, token budget, parameter count."""

from __future__ import annotations

from dataclasses import dataclass

from lmtrain.config import Recipe, gradient_accumulation_steps, recipe_to_yaml
from lmtrain.model import count_parameters, llama_config


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
        return (f"batch: {self.num_processes} process(es) × micro {self.micro_batch_size} × accumulation "
                f"{self.accumulation_steps} = {self.global_batch_size} sequences × {self.seq_len} tokens = "
                f"{self.tokens_per_step:,} tokens/step | {self.max_steps:,} steps = "
                f"{self.total_tokens:,} tokens ({format_count(self.total_tokens)})")


def batch_arithmetic(recipe: Recipe, num_processes: int) -> BatchArithmetic:
    t = recipe.train
    return BatchArithmetic(num_processes, t.micro_batch_size, gradient_accumulation_steps(recipe, num_processes),
                           t.global_batch_size, recipe.data.seq_len, t.max_steps)


def dry_run_report(recipe: Recipe, num_processes: int) -> str:
    """The resolved recipe, the exact parameter count (meta device) and the batch arithmetic."""
    n_params = count_parameters(llama_config(recipe))
    return "\n".join([
        "# resolved recipe",
        recipe_to_yaml(recipe).rstrip(),
        "",
        f"parameters: {n_params:,} ({format_count(n_params)}) with vocabulary {recipe.tokenizer.vocab_size:,}",
        batch_arithmetic(recipe, num_processes).describe(),
    ])


def format_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"
