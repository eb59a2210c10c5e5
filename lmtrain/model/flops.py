"""Model FLOPs and accelerator peaks: the two halves of MFU (model FLOPs utilization).

MFU = tokens/s x flops_per_token / peak FLOP/s. It counts the FLOPs the model needs, not the ones
the hardware happened to run: recomputation under activation checkpointing is not counted, so
turning checkpointing on lowers MFU (the same work takes longer), as in PaLM's definition.
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig

from lmtrain.errors import UserError


def matmul_parameters(config: LlamaConfig, head_width: int | None = None) -> int:
    """Parameters that take part in a matrix multiply for every token: the attention projections and
    SwiGLU MLP of every layer (with their biases, if any) plus the LM head. The input embedding is
    left out (a table lookup, no FLOPs) and so are the RMSNorm weights (elementwise, 0.004% of a 7B).
    A tied LM head is still counted: the output matmul happens whether or not its weight is shared.
    `head_width` replaces the vocabulary as the output width (a classification head: its labels)."""
    h, inter, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q_width, kv_width = heads * head_dim, getattr(config, "num_key_value_heads", heads) * head_dim
    attention = h * q_width + 2 * h * kv_width + q_width * h
    if getattr(config, "attention_bias", False):
        attention += q_width + 2 * kv_width + h
    # SwiGLU/GeGLU: gate, up and down projections; BERT's MLP has no gate (up and down only)
    matrices = 2 if config.model_type == "bert" else 3
    mlp = matrices * h * inter + (2 * inter + h if getattr(config, "mlp_bias", False) else 0)
    return config.num_hidden_layers * (attention + mlp) + h * (head_width or config.vocab_size)


def flops_per_token(config: LlamaConfig, seq_len: int, head_width: int | None = None) -> float:
    """Model FLOPs per trained token, forward + backward, as in PaLM (Chowdhery et al. 2022), appendix B:

        6·N + 12·L·H·Q·T

    N = `matmul_parameters(config)` (non-embedding parameters plus the LM head; 2 FLOPs per parameter
    forward, 4 backward), L layers, H query heads, Q head dimension, T = seq_len: the attention scores
    QKᵀ and the weighted sum over values, 2·2·H·Q·T FLOPs per token and layer forward, x3 with backward.
    Like PaLM and Megatron-LM, the causal mask's skipped half is counted (the usual convention, which
    makes MFU figures comparable) and recomputation is not."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return float(6 * matmul_parameters(config, head_width) + attention)


# Peak dense (no 2:4 sparsity) bf16 tensor-core FLOP/s with fp32 accumulation, from the vendors'
# datasheets. Keys are lowercase substrings of torch.cuda.get_device_name(); the longest matching
# key wins, so "a100" is tried before "a10" and "h200 nvl" before "h200".
PEAK_BF16_FLOPS: dict[str, float] = {
    "b200": 2250e12,
    "b100": 1750e12,
    "gh200": 989e12,
    "h200 nvl": 835e12,
    "h200": 989e12,
    "h100 nvl": 835e12,
    "h100 pcie": 756e12,
    "h100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3")
    "h800": 989e12,
    "h20": 148e12,
    "a100": 312e12,  # SXM and PCIe
    "a800": 312e12,
    "a10g": 70e12,  # AWS g5
    "a10": 125e12,
    "a6000": 155e12,  # RTX A6000
    "l40s": 362e12,
    "l40": 181e12,
    "l4": 121e12,
    "rtx 4090": 165e12,  # GeForce: half rate with fp32 accumulation
    "rtx 3090": 71e12,
    "v100": 125e12,  # no bf16: fp16 tensor-core peak (SXM2), what mixed precision gets there
    "t4": 65e12,  # no bf16: fp16 tensor-core peak
    "mi300x": 1307e12,  # ROCm builds of torch report AMD GPUs through torch.cuda
    "mi250x": 383e12,
}
FP16_ONLY_KINDS = ("v100", "t4")
"""GPU kinds without bf16: their table entry is the fp16 peak, and the trainer runs them in fp32."""


def peak_flops_for_kind(kind: str) -> float:
    """The table's peak for a GPU kind named by the user (e.g. `--gpu-kind h100`)."""
    key = kind.strip().lower()
    if key not in PEAK_BF16_FLOPS:
        raise UserError(f"--gpu-kind: unknown GPU kind {kind!r}; known kinds: {', '.join(sorted(PEAK_BF16_FLOPS))}")
    return PEAK_BF16_FLOPS[key]


def _table_key(device_name: str) -> str | None:
    name = device_name.lower()
    matches = [key for key in PEAK_BF16_FLOPS if key in name]
    return max(matches, key=len) if matches else None


def peak_flops_per_device(device: torch.device) -> tuple[float, str]:
    """Peak FLOP/s of one device and a label saying where the figure comes from.

    A GPU found in PEAK_BF16_FLOPS gets its datasheet dense bf16 peak (fp16 for GPUs without bf16).
    A CPU gets a measured fp32 matmul rate: CPUs have no datasheet figure torch reaches, and training
    runs fp32 there. An unknown GPU gets a measured bf16 matmul rate, labelled as such, so its MFU is
    relative to what a large matmul achieves rather than to the (unknown) datasheet peak."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = _table_key(name)
        if key is not None:
            dtype = "fp16" if key in FP16_ONLY_KINDS else "bf16"
            return PEAK_BF16_FLOPS[key], f"{name} ({PEAK_BF16_FLOPS[key] / 1e12:.0f} TFLOP/s {dtype} dense, datasheet)"
        peak = _measured_matmul_flops(device, torch.bfloat16, 4096)
        return peak, f"{name} (not in the peak table: measured bf16 matmul, {peak / 1e12:.1f} TFLOP/s)"
    if device.type == "cpu":
        peak = _measured_matmul_flops(device, torch.float32, 1024)
        return peak, f"cpu (measured fp32 matmul, {peak / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} threads)"
    raise UserError(f"MFU: no peak FLOP/s known for device type {device.type!r} (supported: cuda, cpu)")


_MEASURED: dict[tuple[str, torch.dtype, int, int], float] = {}


def _measured_matmul_flops(
    device: torch.device, dtype: torch.dtype, n: int, repeats: int = 8, min_seconds: float = 0.5
) -> float:
    """The best of at least `repeats` timed n x n x n matmuls (after one warmup), timed for at least
    `min_seconds`, cached for the process: the best, not the mean, because a peak is what MFU divides
    by and a busy machine only slows runs down. A fixed handful of repeats right after loading a model
    measured half the peak (105 against 196 GFLOP/s on the same 2 cores, MFU above 100%); the floor
    on time lets the CPU reach its sustained clock."""
    cache_key = (str(device), dtype, n, torch.get_num_threads())
    if cache_key in _MEASURED:
        return _MEASURED[cache_key]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)
    sync()
    best, began, done = float("inf"), time.perf_counter(), 0
    while done < repeats or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best, done = min(best, time.perf_counter() - start), done + 1
    _MEASURED[cache_key] = 2 * n**3 / best
    return _MEASURED[cache_key]
