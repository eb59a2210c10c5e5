"""What this machine offers the speed path, in seconds, before spending GPU time: the GPU, its driver and compute
capability, the torch / CUDA / transformers / DeepSpeed versions, and which of the recipe's speed switches would
run here (each refusal is the one the trainer would give, from lmtrain/model/speed.py).

    python benchmarks/gpu_env.py        # then: python benchmarks/gpu_throughput.py --sweep
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess

import torch

from lmtrain.config.recipe import SpeedSwitches
from lmtrain.model.speed import Machine, machine_problems

SWITCHES = {
    "compile": SpeedSwitches(compile=True),
    "flex_attention": SpeedSwitches(attn_implementation="flex_attention"),
    "flash_attention_2": SpeedSwitches(attn_implementation="flash_attention_2"),
    "liger_kernel": SpeedSwitches(liger_kernel=True),
    "fp8": SpeedSwitches(compile=True, fp8=True),
}


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def main() -> None:
    machine = Machine.here()
    report = {
        "gpu": machine.gpu or None,
        "gpu_count": torch.cuda.device_count(),
        "compute_capability": ".".join(map(str, machine.capability)) if machine.gpu else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if machine.gpu else None,
        "driver": driver(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": bool(machine.gpu) and torch.cuda.is_bf16_supported(),
        **{p: version(p) for p in ("transformers", "accelerate", "deepspeed", "triton", "liger-kernel", "torchao")},
        "flash-attn": version("flash-attn") or version("flash_attn"),
        "switches": {name: machine_problems(s, machine) or "available" for name, s in SWITCHES.items()},
    }
    for key, value in report.items():
        if key != "switches":
            print(f"{key:<26}{value}")
    for name, state in report["switches"].items():
        print(f"switch {name:<19}{state if state == 'available' else 'refused: ' + '; '.join(state)}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
