"""Training throughput and MFU of the 7B's layer shape on one GPU, with activation checkpointing off and on.

    python benchmarks/gpu_throughput.py                 # on a GPU: the 7B layer shape, as many layers as fit
    python benchmarks/gpu_throughput.py --layers 8 --steps 20 --micro-batch 2
    python benchmarks/gpu_throughput.py --tiny          # a small shape in seconds; automatic without a GPU

Each step is what the trainer does per micro-batch: forward, loss, backward, gradient clipping, AdamW
step. bf16 autocast over fp32 weights with torch's AdamW (Accelerate's mixed precision without
DeepSpeed), sdpa attention with a plain causal mask (document masking would select the memory-efficient
kernel instead of flash), random tokens. The 7B's layer shape (hidden 4096, SwiGLU 11008, 32 heads
of 128, seq 4096, the recipe's 64,000 vocabulary) with fewer than its 32 layers where one GPU cannot
hold the weights, gradients and AdamW states of all of them (18 bytes/parameter): the output says
how many. Per-layer throughput is what carries over to the full model sharded over GPUs, less
ZeRO-3's communication; with fewer layers the LM head is a larger share of the work.

MFU = tokens/s x model FLOPs per token (lmtrain.model.flops: PaLM's 6N + 12·L·H·Q·T, recomputation not
counted) / the device's peak (datasheet bf16 for known GPUs, a measured matmul on CPU). Prints a table,
then one JSON line with tokens_per_s_per_gpu, mfu and gpu for the faster mode, and every mode.
Without a GPU it runs a tiny shape in fp32, as a check that the script works, not as a figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.model.flops import flops_per_token, peak_flops_per_device  # noqa: E402
from lmtrain.model.llama import count_parameters, llama_config  # noqa: E402
from lmtrain.plan import GIB, activation_bytes  # noqa: E402

SEVEN_B = Path(__file__).resolve().parents[1] / "recipes/llama-7b/pretrain.yaml"
TINY = {
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 2048,
}
TINY_SEQ, TINY_BATCH = 128, 4
BYTES_PER_PARAM = 18  # fp32 weights 4 + fp32 grads 4 + AdamW 8 + the bf16 weight copies autocast keeps 2
MEMORY_SHARE = 0.85  # of the GPU's memory the estimate may fill; the rest for the allocator and workspaces


@dataclass
class Result:
    checkpointing: bool
    layers: int
    parameters: int
    tokens_per_s: float
    step_s: float
    tflops_per_s: float
    mfu: float
    peak_memory_gib: float | None


def model_config(args: argparse.Namespace, layers: int) -> LlamaConfig:
    if args.tiny:
        return LlamaConfig(
            **{**TINY, "num_hidden_layers": layers}, max_position_embeddings=args.seq_len, use_cache=False
        )
    config = llama_config(load_recipe(args.recipe))
    config.num_hidden_layers = layers
    config.max_position_embeddings = args.seq_len
    config.use_cache = False  # training: no key/value cache (and checkpointing would turn it off, noisily)
    return config


def layers_that_fit(args: argparse.Namespace, memory_bytes: float) -> int:
    """The most layers (up to the recipe's) whose weights, gradients, AdamW states and activations
    without checkpointing fit: 18 bytes per parameter and lmtrain.plan's activation count, both
    linear in the number of layers."""

    def need(layers: int) -> float:
        config = model_config(args, layers)
        return BYTES_PER_PARAM * count_parameters(config) + activation_bytes(
            config, args.micro_batch, args.seq_len, "bf16", checkpointing=False
        )

    per_layer = need(2) - need(1)
    layers = int((MEMORY_SHARE * memory_bytes - (need(1) - per_layer)) // per_layer)
    if layers < 1:
        raise SystemExit(
            f"error: not even one layer of this shape fits in {memory_bytes / GIB:.0f} GiB at "
            f"--micro-batch {args.micro_batch} --seq-len {args.seq_len}; lower them"
        )
    return min(layers, llama_config(load_recipe(args.recipe)).num_hidden_layers)


def measure(
    args: argparse.Namespace, device: torch.device, layers: int, checkpointing: bool, peak_flops: float
) -> Result:
    """Warmup then timed training steps of a fresh model; the clock stops after the device finishes."""
    config = model_config(args, layers)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda"
    )
    ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    tokens_per_s = args.micro_batch * args.seq_len / seconds
    model_flops = tokens_per_s * flops_per_token(config, args.seq_len)
    peak_memory = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    result = Result(
        checkpointing,
        layers,
        sum(p.numel() for p in model.parameters()),
        tokens_per_s,
        seconds,
        model_flops / 1e12,
        model_flops / peak_flops,
        peak_memory,
    )
    model = optimizer = None  # frees them (the step closure holds the same cells)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def measure_fitting(args: argparse.Namespace, device: torch.device, layers: int, peak_flops: float) -> list[Result]:
    """Both modes at one layer count; without checkpointing needs the most memory, so it goes first and
    an out-of-memory there retries with fewer layers (the estimate is only an estimate)."""
    while True:
        try:
            off = measure(args, device, layers, False, peak_flops)
            break
        except torch.OutOfMemoryError:
            if args.layers or layers <= 1:
                raise
        # Out of the except block: the traceback, which holds the failed model, is gone.
        gc.collect()
        torch.cuda.empty_cache()
        print(f"out of memory with {layers} layers; retrying with {layers - 1}", flush=True)
        layers -= 1
    return [off, measure(args, device, layers, True, peak_flops)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(SEVEN_B), help="recipe whose model shape and vocabulary to use")
    parser.add_argument(
        "--layers", type=int, default=0, help="decoder layers (default: as many as fit, up to the recipe's)"
    )
    parser.add_argument(
        "--seq-len", type=int, default=0, help="tokens per sequence (default: the recipe's data.seq_len)"
    )
    parser.add_argument(
        "--micro-batch", type=int, default=0, help="sequences per step (default: the recipe's micro batch)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed steps first: kernel selection, allocator (default 3; 1 with --tiny)",
    )
    parser.add_argument("--steps", type=int, default=0, help="timed steps per mode (default 10; 3 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a small shape that runs in seconds (always without a GPU)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.tiny = args.tiny or device.type == "cpu"
    recipe = load_recipe(args.recipe)
    if args.tiny:
        args.seq_len, args.micro_batch = args.seq_len or TINY_SEQ, args.micro_batch or TINY_BATCH
        args.warmup, args.steps = args.warmup or 1, args.steps or 3
    else:
        args.seq_len = args.seq_len or recipe.data.seq_len
        args.micro_batch = args.micro_batch or recipe.train.micro_batch_size
        args.warmup, args.steps = args.warmup or 3, args.steps or 10
    peak_flops, peak_label = peak_flops_per_device(device)
    full_layers = TINY["num_hidden_layers"] if args.tiny else recipe.model.num_layers
    if args.layers:
        layers = args.layers
    elif args.tiny:
        layers = full_layers
    else:
        layers = layers_that_fit(args, torch.cuda.get_device_properties(device).total_memory)

    results = measure_fitting(args, device, layers, peak_flops)
    layers = results[0].layers
    config = model_config(args, layers)
    head_dim = config.hidden_size // config.num_attention_heads
    if args.tiny:
        shape_note = "tiny shape (no GPU, or --tiny): checks that the script works; not a throughput figure"
    elif layers < full_layers:
        shape_note = (
            f"{layers} of the recipe's {full_layers} layers: one GPU cannot hold the weights, gradients "
            "and AdamW states of all of them; the full model shards them over GPUs with ZeRO"
        )
    else:
        shape_note = f"all {full_layers} layers"
    precision = "bf16 autocast over fp32 weights" if device.type == "cuda" else "fp32"
    print(f"device: {peak_label}")
    print(
        f"shape: hidden {config.hidden_size}, SwiGLU {config.intermediate_size}, {config.num_attention_heads} heads "
        f"x {head_dim}, vocab {config.vocab_size:,}, seq {args.seq_len}, micro batch {args.micro_batch}; {shape_note}"
    )
    print(f"{precision}, sdpa attention, AdamW, clipping; {args.warmup} warmup + {args.steps} timed steps per mode")
    print(
        f"{'checkpointing':<14}{'layers':>7}{'params':>14}{'tokens/s':>12}{'s/step':>9}{'TFLOP/s':>9}"
        f"{'MFU':>7}{'peak GiB':>10}"
    )
    for r in results:
        memory = f"{r.peak_memory_gib:10.1f}" if r.peak_memory_gib is not None else f"{'-':>10}"
        print(
            f"{'on' if r.checkpointing else 'off':<14}{r.layers:>7}{r.parameters:>14,}{r.tokens_per_s:>12,.0f}"
            f"{r.step_s:>9.3f}{r.tflops_per_s:>9.3g}{r.mfu:>7.1%}{memory}"
        )
    best = max(results, key=lambda r: r.mfu)
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "peak_flops": peak_flops,
                "peak_source": peak_label,
                "tokens_per_s_per_gpu": round(best.tokens_per_s, 1),
                "mfu": round(best.mfu, 4),
                "activation_checkpointing": best.checkpointing,
                "layers": layers,
                "full_model_layers": full_layers,
                "tiny": args.tiny,
                "seq_len": args.seq_len,
                "micro_batch": args.micro_batch,
                "modes": [asdict(r) for r in results],
            }
        )
    )


if __name__ == "__main__":
    main()
