"""The speed switches (lmtrain.config.recipe.SpeedSwitches) on this machine: what it cannot honour is refused in one
message before any weights are built (`check_speed_switches`), what it can is applied to the built model
(`apply_speed_switches`: Liger kernels, FP8, torch.compile). The attention implementation is transformers' job when
the model is built."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

import torch
from accelerate.utils import compile_regions_deepspeed
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.utils import is_flash_attn_2_available

from lmtrain.config.recipe import SpeedSwitches
from lmtrain.errors import UserError

FP8_MIN_CAPABILITY = (8, 9)
"""torch._scaled_mm's FP8 tensor-core matmuls: Ada (8.9: L4, L40S, RTX 4090), Hopper (9.0), Blackwell."""
FP8_DIVISOR = 16
"""torch._scaled_mm needs both dimensions of an FP8 weight to be multiples of 16."""


@dataclass(frozen=True)
class Machine:
    """What the switches need from the machine, gathered once (a test builds one by hand)."""

    gpu: str
    """torch.cuda.get_device_name(), or "" without a CUDA GPU."""
    capability: tuple[int, int]
    """The GPU's compute capability, (0, 0) without one."""
    zero3: bool
    """DeepSpeed ZeRO-3 is on (Accelerate sets transformers' DeepSpeed config when the Accelerator is made)."""
    cxx: bool
    """A C++ compiler, which torch.compile's CPU code needs."""
    packages: frozenset[str]
    """The optional packages installed: flash_attn (and usable: transformers' check), liger_kernel, torchao, triton."""

    @classmethod
    def here(cls) -> Machine:
        cuda = torch.cuda.is_available()
        found = {name for name in ("liger_kernel", "torchao", "triton") if importlib.util.find_spec(name)}
        if is_flash_attn_2_available():
            found.add("flash_attn")
        compilers = (os.environ.get("CXX", ""), "g++", "clang++")
        return cls(
            gpu=torch.cuda.get_device_name() if cuda else "",
            capability=torch.cuda.get_device_capability() if cuda else (0, 0),
            zero3=is_deepspeed_zero3_enabled(),
            cxx=any(c and shutil.which(c) for c in compilers),
            packages=frozenset(found),
        )


def machine_problems(m: SpeedSwitches, machine: Machine, where: str = "model", causal_lm: bool = True) -> list[str]:
    """Every switch of `m` that `machine` cannot honour, each with what to do. `causal_lm`: the model has an LM head
    (Liger's fused cross-entropy applies)."""
    problems, gpu = [], machine.gpu
    if m.compile and not gpu and not machine.cxx:
        problems.append(
            f"{where}.compile: torch.compile on a CPU needs a C++ compiler (g++ or clang++, or CXX) and none was "
            f"found; install one or set {where}.compile=false"
        )
    if m.compile and gpu and "triton" not in machine.packages:
        problems.append(
            f"{where}.compile: torch.compile on a GPU generates Triton kernels and triton is not installed "
            f"(CUDA builds of torch bring it); reinstall torch for CUDA or set {where}.compile=false"
        )
    if m.attn_implementation == "flex_attention" and not gpu:
        problems.append(
            f"{where}.attn_implementation: flex_attention trains only on a CUDA GPU (torch {torch.__version__} has "
            f"no FlexAttention backward on CPU); use sdpa, which keeps documents apart too"
        )
    if m.attn_implementation == "flash_attention_2" and "flash_attn" not in machine.packages:
        problems.append(
            f"{where}.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn package "
            "(pip install flash-attn); install it or use sdpa"
        )
    if m.liger_kernel:
        if not gpu:
            problems.append(
                f"{where}.liger_kernel: Liger's kernels are Triton GPU kernels and this machine has no CUDA GPU; "
                f"set {where}.liger_kernel=false"
            )
        elif "liger_kernel" not in machine.packages:
            problems.append(f"{where}.liger_kernel: pip install liger-kernel (or set {where}.liger_kernel=false)")
        if causal_lm and machine.zero3:
            problems.append(
                f"{where}.liger_kernel: not with DeepSpeed ZeRO-3: Liger's fused cross-entropy reads the LM head's "
                "weight outside the head's forward, where ZeRO-3 has not gathered it (trl#3368); launch with ZeRO-2 "
                f"(ds_config/zero2.json, which `--plan` weighs) or set {where}.liger_kernel=false"
            )
    if m.fp8:
        if not gpu:
            problems.append(
                f"{where}.fp8: FP8 matmuls need a CUDA GPU of compute capability 8.9 or newer (H100, H200, L40S, "
                f"B200) and this machine has none; set {where}.fp8=false"
            )
        elif machine.capability < FP8_MIN_CAPABILITY:
            major, minor = machine.capability
            problems.append(
                f"{where}.fp8: {gpu} has compute capability {major}.{minor} and FP8 matmuls need 8.9 or newer "
                f"(H100, H200, L40S, B200); set {where}.fp8=false"
            )
        if gpu and "torchao" not in machine.packages:
            problems.append(f"{where}.fp8: pip install torchao (or set {where}.fp8=false)")
    return problems


def check_speed_switches(m: SpeedSwitches, where: str = "model", causal_lm: bool = True) -> None:
    """Refuse, in one message, every switch this machine cannot honour (call it before building weights)."""
    problems = machine_problems(m, Machine.here(), where, causal_lm)
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(
            "this machine cannot run the recipe's speed switches:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def apply_speed_switches(model: torch.nn.Module, m: SpeedSwitches, causal_lm: bool = True) -> torch.nn.Module:
    """Liger's kernels, torchao's FP8 linear layers and torch.compile on a built model, in place (checked by
    `check_speed_switches` first)."""
    if m.liger_kernel:
        from transformers.integrations.liger import apply_liger_kernel

        # transformers' own entry point (Trainer's use_liger_kernel): it also unwraps a PEFT model.
        apply_liger_kernel(model, {"fused_linear_cross_entropy": causal_lm, "cross_entropy": False})
    if m.fp8:
        from torchao.float8 import convert_to_float8_training

        convert_to_float8_training(model, module_filter_fn=fp8_layer)
    if m.compile:
        # Regional compilation, in place: each decoder layer is compiled with `Module.compile()` (one graph, reused by
        # every layer) and each other leaf module apart. In place, the state dict keeps its names (no `_orig_mod.`),
        # so checkpoints and exports are those of the plain model and a run may resume with compile on or off. It is
        # what Accelerate does to a DeepSpeed engine's module (hence the name) and works on any module; compilation
        # happens at the first forward, after activation checkpointing and DeepSpeed's hooks are in place.
        compile_regions_deepspeed(model, backend="inductor")
    return model


def fp8_layer(module: torch.nn.Module, name: str) -> bool:
    """The linear layers that run in FP8: those of the decoder layers whose shapes torch._scaled_mm takes. The LM
    head stays bf16, as in torchtitan and torchao's recipes: the logits are the most precision-sensitive matmul."""
    shape_ok = module.in_features % FP8_DIVISOR == 0 and module.out_features % FP8_DIVISOR == 0
    return ".layers." in f".{name}" and shape_ok
