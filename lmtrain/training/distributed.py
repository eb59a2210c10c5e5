"""Everything about processes, devices and precision, kept out of the training loop.

The same code runs one CPU process, `accelerate launch` with N GPUs, or DeepSpeed ZeRO-3
across nodes: the launch config decides, the recipe's global batch stays fixed.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

import torch
from accelerate import Accelerator, InitProcessGroupKwargs
from accelerate.utils import DistributedType

from lmtrain.config.recipe import Recipe, gradient_accumulation_steps
from lmtrain.errors import UserError


def launch_world_size() -> int:
    """Processes started by the launcher (accelerate launch / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_precision(setting: str) -> str:
    """Accelerate's mixed_precision value for the recipe's `train.precision`."""
    bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if setting == "bf16" and not bf16_ok:
        raise UserError(
            "train.precision: bf16 needs a GPU with bf16 support and none was found; "
            "use train.precision=auto (fp32 here) or fp32"
        )
    if setting == "auto":
        return "bf16" if bf16_ok else "no"
    return "bf16" if setting == "bf16" else "no"


def keep_freed_cpu_memory() -> None:
    """On CPU, torch allocates every step's activations with plain malloc and frees them after backward; glibc
    hands large freed blocks back to the operating system and the next step faults them in again, page by
    page. Measured on benchmarks/train_loop_overhead.py's model: ≈4,500 minor page faults per step and the loop
    at 0.88 of a bare one; with these thresholds fixed, no such faults and 0.98. (A GPU's caching allocator
    keeps its memory anyway.) glibc only; elsewhere a no-op."""
    if torch.cuda.is_available() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value; fixing it stops its adaptation
    libc.mallopt(m_trim_threshold, 256 << 20)


def make_accelerator(recipe: Recipe) -> Accelerator:
    """An Accelerator whose view of the world matches the launcher's, checked."""
    keep_freed_cpu_memory()
    # DeepSpeed's ZeRO-3 calls these torch collectives on every step; torch warns each time.
    warnings.filterwarnings(
        "ignore",
        category=FutureWarning,
        message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
    )
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # say it, rather than have DeepSpeed warn that it guessed
    dynamo = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
    if dynamo != "no":
        # Accelerate would compile the model a second time, and its non-DeepSpeed compile renames the state dict.
        raise UserError(
            f"the accelerate config compiles the model (dynamo backend {dynamo}); the recipe's model.compile decides "
            "instead: remove dynamo_config from the accelerate config and set model.compile=true"
        )
    world = launch_world_size()
    accum = gradient_accumulation_steps(recipe, world)
    handlers = []
    if world > 1 and not torch.cuda.is_available():
        # Without a GPU, Accelerate leaves the process group unset under DeepSpeed and every rank
        # believes it is process 0 of 1 while DeepSpeed shards across all of them. gloo fixes it.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        mixed_precision=resolve_precision(recipe.train.precision),
        gradient_accumulation_steps=accum,
        log_with=list(recipe.train.report_to) or None,
        project_dir=recipe.run_dir,
        kwargs_handlers=handlers,
    )
    if accelerator.num_processes != world:
        raise UserError(
            f"the launcher started {world} processes but Accelerate sees {accelerator.num_processes}; "
            "check the accelerate config (num_processes, distributed_type)"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # The recipe is the source of truth: DeepSpeed's "auto" values are filled from it (we feed
        # batches ourselves, so Accelerate cannot infer them), and fixed values must agree with it.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        _fill_from_recipe(
            ds_config, "train_micro_batch_size_per_gpu", recipe.train.micro_batch_size, "train.micro_batch_size"
        )
        _fill_from_recipe(
            ds_config, "gradient_accumulation_steps", accum, "train.global_batch_size / (micro_batch_size x processes)"
        )
        _fill_from_recipe(ds_config, "gradient_clipping", recipe.train.grad_clip, "train.grad_clip")
    return accelerator


def _fill_from_recipe(ds_config: dict, key: str, value, recipe_key: str) -> None:
    current = ds_config.get(key, "auto")
    if current == "auto":
        ds_config[key] = value
    elif current != value:
        raise UserError(
            f"the DeepSpeed config sets {key}={current} but the recipe gives {value} ({recipe_key}); "
            f'set {key} to "auto" in the DeepSpeed config so that the recipe decides'
        )
