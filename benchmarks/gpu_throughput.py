"""Training throughput and MFU of the 7B's layer shape on one GPU, with activation checkpointing off and on.

    python benchmarks/gpu_throughput.py                 # on a GPU: the 7B layer shape, as many layers as fit
    python benchmarks/gpu_throughput.py --layers 8 --steps 20 --micro-batch 2
    python benchmarks/gpu_throughput.py --tiny          # a small shape in seconds; automatic without a GPU
    python benchmarks/gpu_throughput.py --sweep         # the speed switches one by one, then the best, in <= 8 min
    python benchmarks/gpu_throughput.py --sweep --tiny  # the same on a tiny shape (CPU: what runs there)

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

--sweep measures, checkpointing off, the speed switches of the recipe's `model` section (lmtrain/config/recipe.py
SpeedSwitches) added one at a time to a baseline (sdpa, plain causal mask, unfused AdamW): fused AdamW; compile;
Liger; the document-masked data path of the 7B recipe (random documents of mean length seq/4 as position_ids) with
sdpa's dense mask, flex_attention's block mask and flash_attention_2's variable-length sequences; FP8; then the best
combination (each switch that beat its parent, the fastest document-masked attention). A configuration the machine
cannot run is skipped with lmtrain/model/speed.py's reason; one whose estimated time would overrun --budget-s
(default 480 s, from the start) is skipped and named. It prints a table and one JSON line with best_mfu,
best_config, gpu, every configuration and the skipped ones. MFU counts the full causal attention FLOPs for the
document-masked configurations too (the convention; they compute fewer).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

from lmtrain.config.recipe import SpeedSwitches, load_recipe  # noqa: E402
from lmtrain.data.packing import document_labels  # noqa: E402
from lmtrain.model.flops import flops_per_token, peak_flops_per_device  # noqa: E402
from lmtrain.model.llama import count_parameters, llama_config  # noqa: E402
from lmtrain.model.speed import Machine, apply_speed_switches, machine_problems  # noqa: E402
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
SWEEP_BUDGET_S = 480  # a lent GPU may have 15 minutes for everything: start-up, the sweep and a rerun
COMPILE_ALLOWANCE = 3.0  # a configuration that compiles is estimated at this multiple of the slowest one measured


@dataclass(frozen=True)
class Setup:
    """One configuration of the sweep: the recipe's speed switches plus fused AdamW and the data path."""

    name: str
    switches: SpeedSwitches = field(default_factory=SpeedSwitches)
    fused_adamw: bool = False
    document_masking: bool = False
    checkpointing: bool = False


@dataclass
class Result:
    name: str
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


def document_positions(micro_batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """position_ids of packed blocks of random documents (geometric lengths, mean seq_len / 4), as data_prep writes
    them with data.document_masking."""
    rows = []
    for _ in range(micro_batch):
        lengths, left = [], seq_len
        while left:
            n = min(left, 1 + int(torch.empty(()).exponential_(4 / seq_len, generator=generator)))
            lengths.append(n)
            left -= n
        rows.append(torch.cat([torch.arange(n) for n in lengths]))
    return torch.stack(rows)


def measure(args: argparse.Namespace, device: torch.device, layers: int, setup: Setup, peak_flops: float) -> Result:
    """Warmup then timed training steps of a fresh model; the clock stops after the device finishes."""
    config = model_config(args, layers)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=setup.switches.attn_implementation, dtype=torch.float32
        )
    if setup.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    apply_speed_switches(model, setup.switches)  # Liger, FP8, compile: as lmtrain.model.llama.build_model does
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=setup.fused_adamw
    )
    ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), device=device)
    batch = {"input_ids": ids, "labels": ids, "use_cache": False}
    if setup.document_masking:
        positions = document_positions(args.micro_batch, args.seq_len, torch.Generator().manual_seed(0)).to(device)
        batch |= {"position_ids": positions, "labels": document_labels(ids, positions)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = model(**batch).loss
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
        setup.name,
        setup.checkpointing,
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
    fused = device.type == "cuda"
    while True:
        try:
            off = measure(args, device, layers, Setup("checkpointing off", fused_adamw=fused), peak_flops)
            break
        except torch.OutOfMemoryError:
            if args.layers or layers <= 1:
                raise
        # Out of the except block: the traceback, which holds the failed model, is gone.
        gc.collect()
        torch.cuda.empty_cache()
        print(f"out of memory with {layers} layers; retrying with {layers - 1}", flush=True)
        layers -= 1
    return [
        off,
        measure(args, device, layers, Setup("checkpointing on", fused_adamw=fused, checkpointing=True), peak_flops),
    ]


def sweep(args: argparse.Namespace, device: torch.device, layers: int, peak_flops: float) -> tuple[list, list]:
    """The speed switches one at a time, then the best combination, within --budget-s; (results, skipped)."""
    machine, began = Machine.here(), time.perf_counter()
    results: dict[str, Result] = {}
    skipped: list[dict] = []
    slowest = 0.0  # wall seconds of the slowest configuration so far: model build, warmup and timed steps

    def run(setup: Setup) -> Result | None:
        nonlocal slowest
        problems = machine_problems(setup.switches, machine)
        compiles = setup.switches.compile or setup.switches.attn_implementation == "flex_attention"
        estimate = slowest * (COMPILE_ALLOWANCE if compiles else 1.0)
        left = args.budget_s - (time.perf_counter() - began)
        if not problems and results and estimate > left:  # the first one always runs: the table needs a row
            problems = [f"estimated {estimate:.0f} s with {left:.0f} s of --budget-s left"]
        if problems:
            skipped.append({"config": setup.name, "reason": "; ".join(problems)})
            print(f"skipped {setup.name}: {'; '.join(problems)}", flush=True)
            return None
        torch._dynamo.reset()  # each model compiles afresh, never against the recompile limit of the last
        rope = modeling_llama.apply_rotary_pos_emb  # Liger replaces it module-wide; later configurations must not
        start = time.perf_counter()
        try:
            results[setup.name] = measure(args, device, layers, setup, peak_flops)
        except torch.OutOfMemoryError:
            skipped.append({"config": setup.name, "reason": "out of memory"})
        finally:
            modeling_llama.apply_rotary_pos_emb = rope
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        slowest = max(slowest, time.perf_counter() - start)
        return results.get(setup.name)

    def faster(a: Result | None, b: Result | None) -> bool:
        return a is not None and (b is None or a.tokens_per_s > b.tokens_per_s)

    base = run(Setup("baseline"))
    fused = run(Setup("+ fused AdamW", fused_adamw=True))
    fused_on = faster(fused, base)
    compiled = run(Setup("+ compile", SpeedSwitches(compile=True), fused_on))
    liger = run(Setup("+ Liger", SpeedSwitches(liger_kernel=True), fused_on))
    parent = compiled if faster(compiled, fused) else fused
    fp8 = run(Setup("+ compile + FP8", SpeedSwitches(compile=True, fp8=True), fused_on))
    documents = {
        attn: run(Setup(f"documents: {attn}", SpeedSwitches(attn_implementation=attn), fused_on, True))
        for attn in ("sdpa", "flex_attention", "flash_attention_2")
    }
    measured = {attn: r for attn, r in documents.items() if r is not None}
    attention = max(measured, key=lambda a: measured[a].tokens_per_s) if measured else "sdpa"
    use_fp8 = faster(fp8, parent)
    best = SpeedSwitches(
        attn_implementation=attention,
        compile=use_fp8 or faster(compiled, fused),
        liger_kernel=faster(liger, fused),
        fp8=use_fp8,
    )
    on = ["fused AdamW"] * fused_on + [f"attention {attention}"]
    on += [name for name in ("compile", "liger_kernel", "fp8") if getattr(best, name)]
    run(Setup(f"best: documents, {', '.join(on)}", best, fused_on, True))
    return list(results.values()), skipped


def print_sweep(args, device, peak_flops, peak_label, layers, full_layers, results, skipped) -> None:
    config = model_config(args, layers)
    base = results[0] if results and results[0].name == "baseline" else None
    print(f"device: {peak_label}")
    print(
        f"shape: hidden {config.hidden_size}, {config.num_hidden_layers} of {full_layers} layers, vocab "
        f"{config.vocab_size:,}, seq {args.seq_len}, micro batch {args.micro_batch}, checkpointing off; "
        f"{args.warmup} warmup + {args.steps} timed steps each"
        + ("; tiny shape: checks that the script works, not a throughput figure" if args.tiny else "")
    )
    print(f"{'configuration':<58}{'tokens/s':>12}{'s/step':>9}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}{'vs base':>9}")
    for r in results:
        memory = f"{r.peak_memory_gib:10.1f}" if r.peak_memory_gib is not None else f"{'-':>10}"
        ratio = f"{r.tokens_per_s / base.tokens_per_s:8.2f}x" if base else f"{'-':>9}"
        print(f"{r.name:<58}{r.tokens_per_s:>12,.0f}{r.step_s:>9.3f}{r.tflops_per_s:>9.3g}{r.mfu:>7.1%}{memory}{ratio}")
    for item in skipped:
        print(f"skipped: {item['config']}: {item['reason']}")
    best = max(results, key=lambda r: r.mfu)
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "best_mfu": round(best.mfu, 4),
                "best_config": best.name,
                "best_tokens_per_s_per_gpu": round(best.tokens_per_s, 1),
                "peak_flops": peak_flops,
                "peak_source": peak_label,
                "tiny": args.tiny,
                "layers": layers,
                "full_model_layers": full_layers,
                "seq_len": args.seq_len,
                "micro_batch": args.micro_batch,
                "budget_s": args.budget_s,
                "configs": [asdict(r) for r in results],
                "skipped": skipped,
            }
        )
    )


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
    parser.add_argument("--sweep", action="store_true", help="measure the speed switches one by one, then the best")
    parser.add_argument(
        "--budget-s", type=float, default=SWEEP_BUDGET_S, help=f"--sweep's time limit (default {SWEEP_BUDGET_S})"
    )
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

    if args.sweep:
        results, skipped = sweep(args, device, layers, peak_flops)
        if not results:
            raise SystemExit("error: no configuration could run: " + "; ".join(i["reason"] for i in skipped))
        print_sweep(args, device, peak_flops, peak_label, layers, full_layers, results, skipped)
        return
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
