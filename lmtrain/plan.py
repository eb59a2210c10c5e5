"""Run arithmetic that needs no weights: batch sizes, token budget, parameter count, and the launch
planner (`train.py RECIPE --plan`): FLOPs, per-GPU memory for each ZeRO stage, time to the token budget."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig

from lmtrain.config.batch import batch_arithmetic
from lmtrain.config.recipe import Recipe, RecipeError, recipe_to_yaml
from lmtrain.errors import UserError
from lmtrain.formatting import format_count, format_duration
from lmtrain.model.encoder import is_encoder, recipe_parameter_count
from lmtrain.model.flops import FP16_ONLY_KINDS, flops_per_token, matmul_parameters, peak_flops_for_kind
from lmtrain.model.llama import count_parameters, llama_config


def dry_run_report(recipe: Recipe, num_processes: int) -> str:
    """The resolved recipe, the exact parameter count (meta device) and the batch arithmetic."""
    n_params = recipe_parameter_count(recipe)
    return "\n".join(
        [
            "# resolved recipe",
            recipe_to_yaml(recipe).rstrip(),
            "",
            f"parameters: {n_params:,} ({format_count(n_params)}) with vocabulary {recipe.tokenizer.vocab_size:,}",
            batch_arithmetic(recipe, num_processes).describe(),
        ]
    )


# ---------------------------------------------------------------------------- launch planner (train.py --plan)

GIB = 2**30
HEADROOM_FRACTION = 0.10
"""Share of GPU memory kept free for the caching allocator's fragmentation and the transient tensors
this estimate leaves out (activation gradients in the backward pass, communication buckets)."""
RESERVED_GIB = 2.0
"""Memory torch cannot use for tensors: CUDA context, NCCL communicators, cuBLAS/cuDNN workspaces."""
SHIPPED_DS_CONFIGS = {2: "ds_config/zero2.json", 3: "ds_config/zero3.json"}
CHECKPOINT_BYTES_PER_PARAM = 12
"""A ZeRO checkpoint holds each parameter's fp32 master weight and Adam's two fp32 moments (bf16 weights are
rebuilt from them). Measured: 12.05 bytes per parameter in the 2-process ZeRO-3 checkpoint of
tests/test_reliability.py (1,984,422 bytes of optimizer shards for 164,672 parameters; the rest is metadata)."""
MEASURED_SAVE_MIB_S = 297.0
"""A synchronous save's rate (bytes per second of stall, one process, files synced to disk) measured on the
development machine (2 shared CPU cores, a virtual disk) by `python benchmarks/reliability.py`, checkpoint_stall:
84.3 MiB in 0.284 s (mean of the saves at steps 10 and 20), sync_write_mib_per_s 297."""
MEASURED_SNAPSHOT_MIB_S = 710.0
"""An asynchronous save's snapshot rate into RAM (/dev/shm), the same run: 84.3 MiB in 0.119 s. On this machine
RAM is only about twice as fast as the disk; where the storage is slower than host memory (a shared filesystem
written by every GPU of a node at once), the gap is what an asynchronous save gains."""


@dataclass(frozen=True)
class Cluster:
    """The launch shape --plan assumes; the defaults are one 8-GPU H100 node."""

    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0
    gpu_kind: str = "h100"
    mfu: float = 0.4

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> float:
        return (self.gpu_memory_gb * (1 - HEADROOM_FRACTION) - RESERVED_GIB) * GIB

    def check(self) -> None:
        """Reject impossible shapes with the flag to fix, before any arithmetic."""
        problems = []
        if self.nodes < 1:
            problems.append(f"--nodes {self.nodes}: must be at least 1")
        if self.gpus_per_node < 1:
            problems.append(f"--gpus-per-node {self.gpus_per_node}: must be at least 1")
        if self.gpu_memory_gb * (1 - HEADROOM_FRACTION) <= RESERVED_GIB:
            problems.append(f"--gpu-memory-gb {self.gpu_memory_gb:g}: too small; give the GPU's memory in GB, e.g. 80")
        if not 0 < self.mfu <= 1:
            problems.append(f"--mfu {self.mfu:g}: must be a fraction in (0, 1], e.g. 0.4 for 40%")
        try:
            peak_flops_for_kind(self.gpu_kind)
        except UserError as exc:
            problems.append(str(exc))
        if problems:
            raise UserError("; ".join(problems))


@dataclass(frozen=True)
class StageMemory:
    """Per-GPU memory of one ZeRO stage, in bytes. The peak is the larger of the forward/backward phase
    (model states + ZeRO-3's gathered layer + activations) and the optimizer step (model states + the
    fp32 gradient DeepSpeed makes for the update; activations are freed by then)."""

    stage: int
    checkpointing: bool
    params: float
    grads: float
    optimizer: float
    step_grads: float
    gathered: float
    activations: float

    @property
    def model_states(self) -> float:
        return self.params + self.grads + self.optimizer

    @property
    def model_states_peak(self) -> float:
        """Model-state memory without activations: what DeepSpeed's estimators report."""
        return self.model_states + max(self.gathered, self.step_grads)

    @property
    def peak(self) -> float:
        return self.model_states + max(self.gathered + self.activations, self.step_grads)


def training_dtype(recipe: Recipe, gpu_kind: str) -> str:
    """ "bf16" or "fp32", as the trainer would resolve `train.precision` on this GPU kind."""
    has_bf16 = gpu_kind.strip().lower() not in FP16_ONLY_KINDS
    if recipe.train.precision == "bf16" and not has_bf16:
        raise UserError(
            f"train.precision: bf16 is not supported by --gpu-kind {gpu_kind}; "
            "use train.precision=fp32 (or auto) or a GPU kind with bf16"
        )
    if recipe.train.precision == "fp32" or not has_bf16:
        return "fp32"
    return "bf16"


def largest_layer_params(config: LlamaConfig) -> int:
    """Parameters of the largest single module (what ZeRO-3 gathers at once): the embedding or the LM head
    (vocab x hidden) for any realistic vocabulary, else an MLP projection. Same definition as
    DeepSpeed's `model_to_params`."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return max(
        config.vocab_size * config.hidden_size,
        config.hidden_size * config.intermediate_size,
        config.hidden_size * config.num_attention_heads * head_dim,
    )


def model_state_bytes(n_params: int, stage: int, world_size: int, dtype: str) -> tuple[float, float, float, float]:
    """(params, grads, optimizer states, fp32 step gradients) per GPU, for AdamW under ZeRO `stage`.

    bf16 mixed precision, 2 + 4 + 12 bytes per parameter: bf16 weights, gradients accumulated over the
    micro-steps in fp32 (the shipped DeepSpeed configs set `data_types.grad_accum_dtype: fp32`; the
    ZeRO paper's (Rajbhandari et al. 2020) 2 + 2 + 12 and DeepSpeed's default accumulate in bf16), fp32
    master weights + Adam m + Adam v: the 18 bytes per parameter of DeepSpeed's own ZeRO-3 estimator.
    Stage 1 partitions the 12 over the world, stage 2 also the gradients, stage 3 also the weights. On
    top, DeepSpeed flattens the gradient partition into a new fp32 tensor for the update (4 bytes per
    parameter of the optimizer partition, e.g. `_prepare_fp32_grad_for_sub_group` in
    deepspeed/runtime/zero/stage3.py), which the paper and the estimator leave out.
    fp32 training, and stage 0 (plain DDP, no DeepSpeed: fp32 weights under autocast): 4 + 4 + 8
    (weights, gradients, m + v) and no cast."""
    shard = float(world_size)
    params_b, grads_b, optim_b, step_b = (2, 4, 12, 4) if dtype == "bf16" and stage > 0 else (4, 4, 8, 0)
    return (
        n_params * params_b / (shard if stage >= 3 else 1),
        n_params * grads_b / (shard if stage >= 2 else 1),
        n_params * optim_b / (shard if stage >= 1 else 1),
        n_params * step_b / (shard if stage >= 1 else 1),
    )


def activation_bytes(
    config: LlamaConfig,
    micro_batch: int,
    seq_len: int,
    dtype: str,
    checkpointing: bool,
    attn_implementation: str = "sdpa",
    fused_ce: bool = False,
    document_masking: bool = False,
) -> float:
    """Activation memory per GPU kept for the backward pass, per micro-batch.

    Korthikanti et al. 2022 ("Reducing activation recomputation in large transformer models") count
    sbh(34 + 5as/h) bytes per layer for a GPT layer in 16-bit (s sequence, b micro-batch, h hidden,
    a heads). The same tensor-by-tensor count for transformers' Llama layer, with e bytes per element
    (2 for bf16, 4 for fp32), i the SwiGLU width and k the key/value heads:
      - two RMSNorms, each (4 + e)·sbh: the fp32 upcast input and the normalized tensor;
      - attention: the projections' input e·sbh, Q e·sbh, K and V 2e·sbh·k/a, the attention output
        e·sbh (o_proj's input is a view of it). No a·s² score matrix: sdpa's flash/memory-efficient
        kernels and flash-attn keep only a per-row logsumexp (negligible). No dropout masks. `eager`
        attention does keep the scores: the fp32 softmax output and its 16-bit copy, (4 + e)·as²b
        (4·as²b in fp32), this layer's version of Korthikanti's 5as²b term;
      - SwiGLU MLP: its input e·sbh, then gate, up, silu(gate) and their product, 4e·sbi;
    per layer (8 + 6e + 2e·k/a)·sbh + 4e·sbi, i.e. 24·sbh + 8·sbi for bf16 multi-head attention.
    After the last layer: the final norm and the LM head input (4 + 2e)·sbh, the fp32 logits
    cross-entropy keeps 4·sbV (V the vocabulary) and e·sbV more for the 16-bit logits, which are alive
    at the same time around the loss. With activation checkpointing (per decoder layer, as transformers
    does it) each layer keeps only its input e·sbh, and one layer's full set is live again while it is
    recomputed in the backward pass. tests/test_plan.py checks the count against the tensors autograd
    saves in a real model. RoPE tables and activation gradients are left to the headroom.

    The speed switches (lmtrain/config/recipe.py SpeedSwitches):
      - `fused_ce` (model.liger_kernel): Liger's fused linear cross-entropy computes the loss and its gradients
        chunk by chunk in the forward pass, so no logits are kept: instead of (e + 4)·sbV it keeps the gradient of
        the LM head's input e·sbh (the same size as the input it replaces) and of the head's weight e·hV, which does
        not grow with the micro-batch. Liger's RMSNorm and SwiGLU keep less than transformers' too; that is not
        counted (not measured: its kernels need a GPU).
      - `document_masking` (data.document_masking): transformers builds a dense b·s² boolean mask from the
        position_ids for sdpa, which hands it to the memory-efficient kernel as an additive e·b·s² bias
        ((1 + e)·b·s² counted), and an additive e·b·s² mask for eager (its score matrices are counted above).
        flex_attention keeps a block mask of b·(s/128)² block indices and flash_attention_2 only per-document
        offsets: 0 counted. (On a CPU, sdpa with a mask falls back to its math path and keeps the a·s² scores as
        eager does; a GPU's memory-efficient kernel does not.)
      - compile and fp8 change what is kept (fused kernels, 8-bit copies) in ways not measured here: not counted."""
    e = 2 if dtype == "bf16" else 4
    s, b, h = seq_len, micro_batch, config.hidden_size
    kv_share = config.num_key_value_heads / config.num_attention_heads
    sbh, sbi, sbv = s * b * h, s * b * config.intermediate_size, s * b * config.vocab_size
    per_layer = (8 + 6 * e + 2 * e * kv_share) * sbh + 4 * e * sbi
    if attn_implementation == "eager":
        per_layer += (4 + (e if e != 4 else 0)) * config.num_attention_heads * s * s * b
    logits = e * h * config.vocab_size if fused_ce else (e + 4) * sbv
    after_layers = (4 + 2 * e) * sbh + logits
    if document_masking and attn_implementation in ("sdpa", "eager"):
        after_layers += (1 + e if attn_implementation == "sdpa" else e) * b * s * s
    layers = config.num_hidden_layers
    kept = layers * e * sbh + per_layer if checkpointing else layers * per_layer
    return float(kept + after_layers)


def zero3_gathered_bytes(config: LlamaConfig, dtype: str) -> float:
    """ZeRO-3's working set: the largest layer's full weights and gradients while it is gathered, the
    4 bytes x largest layer (16-bit) of DeepSpeed's own estimator; 8 bytes in fp32. DeepSpeed may keep
    more gathered (prefetched next layers, up to `stage3_max_live_parameters`); the headroom covers it."""
    return (4 if dtype == "bf16" else 8) * largest_layer_params(config)


def memory_plan(
    config: LlamaConfig,
    n_params: int,
    micro_batch: int,
    seq_len: int,
    world_size: int,
    dtype: str,
    attn_implementation: str = "sdpa",
    fused_ce: bool = False,
    document_masking: bool = False,
) -> list[StageMemory]:
    """Per-GPU memory for ZeRO stages 0-3, each without and with activation checkpointing."""
    rows = []
    for stage in range(4):
        params, grads, optimizer, step_grads = model_state_bytes(n_params, stage, world_size, dtype)
        gathered = zero3_gathered_bytes(config, dtype) if stage == 3 else 0.0
        for checkpointing in (False, True):
            rows.append(
                StageMemory(
                    stage,
                    checkpointing,
                    params,
                    grads,
                    optimizer,
                    step_grads,
                    gathered,
                    activation_bytes(
                        config,
                        micro_batch,
                        seq_len,
                        dtype,
                        checkpointing,
                        attn_implementation,
                        fused_ce,
                        document_masking,
                    ),
                )
            )
    return rows


def plan_report(recipe: Recipe, cluster: Cluster) -> str:
    """What `train.py RECIPE --plan` prints: size, FLOPs, memory per ZeRO stage, batch and time to budget."""
    cluster.check()
    if is_encoder(recipe):
        raise UserError(
            f"--plan counts a decoder's memory and FLOPs; model.architecture={recipe.model.architecture} is an "
            "encoder: use --dry-run for its parameters and batch arithmetic (docs/encoders.md has its arithmetic)"
        )
    dtype = training_dtype(recipe, cluster.gpu_kind)
    world = cluster.world_size
    try:
        arithmetic = batch_arithmetic(recipe, world)
    except RecipeError as exc:
        raise UserError(
            f"{'; '.join(exc.problems)} (--nodes {cluster.nodes} x --gpus-per-node "
            f"{cluster.gpus_per_node} = {world} processes)"
        ) from None
    config = llama_config(recipe)
    n_params = count_parameters(config)
    seq_len = recipe.data.seq_len
    fpt = flops_per_token(config, seq_len)
    peak_flops = peak_flops_for_kind(cluster.gpu_kind)
    m = recipe.model

    def rows_at(micro_batch: int) -> list[StageMemory]:
        return memory_plan(
            config,
            n_params,
            micro_batch,
            seq_len,
            world,
            dtype,
            m.attn_implementation,
            fused_ce=m.liger_kernel,
            document_masking=recipe.data.document_masking,
        )

    rows = rows_at(recipe.train.micro_batch_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    usable = cluster.usable_bytes

    lines = [
        f"# launch plan: {cluster.nodes} node(s) x {cluster.gpus_per_node} GPU(s) = {world} x {cluster.gpu_kind} "
        f"({cluster.gpu_memory_gb:g} GB, {peak_flops / 1e12:.0f} TFLOP/s bf16 dense peak); no weights built",
        f"parameters: {n_params:,} ({format_count(n_params)}); largest layer {largest_layer_params(config):,}",
        f"FLOPs per token: {fpt / 1e9:.2f} GFLOP = 6 x {matmul_parameters(config):,} (non-embedding + LM head) "
        f"+ 12 x {config.num_hidden_layers} layers x {config.num_attention_heads} heads x {head_dim} x {seq_len} "
        "(PaLM appendix B; recomputation not counted)",
        arithmetic.describe(),
        "",
        f"memory per GPU (GiB) at micro batch {recipe.train.micro_batch_size} x seq {seq_len}, "
        + (
            "bf16 mixed precision (2 + 4 + 12 bytes/param, gradients accumulated in fp32; + 4 fp32 grad at the step)"
            if dtype == "bf16"
            else "fp32 (4 + 4 + 8 bytes/param)"
        ),
        f"usable: {usable / GIB:.1f} of {cluster.gpu_memory_gb:g} GiB "
        f"({HEADROOM_FRACTION:.0%} for fragmentation and transients, {RESERVED_GIB:g} GiB for CUDA context and NCCL)",
        f"{'ZeRO':>4} {'ckpt':>4} {'params':>7} {'grads':>7} {'optim':>7} {'step':>7} {'gather':>7} "
        f"{'activ':>7} {'peak':>7}  fits",
    ]
    for r in rows:
        values = (r.params, r.grads, r.optimizer, r.step_grads, r.gathered, r.activations, r.peak)
        lines.append(
            f"{r.stage:>4} {'on' if r.checkpointing else 'off':>4} "
            + " ".join(f"{v / GIB:7.1f}" for v in values)
            + ("  n/a" if _refused(recipe, r.stage) else "  yes" if r.peak <= usable else "  no")
        )
    lines.append(
        "(step: fp32 gradient partition at the optimizer step; gather: ZeRO-3's gathered largest layer; "
        "peak = params + grads + optim + max(gather + activ, step))"
    )
    lines.append(_speed_line(recipe, config, dtype, rows_at))
    lines.append(_recommendation(recipe, rows, usable, dtype, n_params, cluster, rows_at))

    total_flops = fpt * arithmetic.total_tokens
    tokens_per_s = world * peak_flops * cluster.mfu / fpt
    lines += [
        "",
        f"throughput at {cluster.mfu:.0%} MFU: {tokens_per_s / world:,.0f} tokens/s per GPU, {tokens_per_s:,.0f} in all, "
        f"{arithmetic.tokens_per_step / tokens_per_s:.1f} s per optimizer step",
        f"time to the token budget: {format_count(arithmetic.total_tokens)} tokens x {fpt / 1e9:.2f} GFLOP = "
        f"{total_flops:.3g} FLOPs / ({world} x {peak_flops / 1e12:.0f} TFLOP/s x {cluster.mfu:.0%}) = "
        f"{format_duration(total_flops / (world * peak_flops * cluster.mfu))}",
    ]
    if dtype == "fp32":
        lines.append("note: fp32 training runs far below this bf16/fp16 tensor-core peak; expect several times longer")
    step_s = arithmetic.tokens_per_step / tokens_per_s
    return "\n".join([*lines, "", *checkpoint_lines(recipe, n_params, cluster, step_s)])


def checkpoint_lines(recipe: Recipe, n_params: int, cluster: Cluster, step_s: float) -> list[str]:
    """The size of a checkpoint and the training time each one stalls, synchronous and asynchronous, at the write
    rates measured on the development machine (every process writes its share at that rate: a shared filesystem
    slower in aggregate makes the synchronous figure longer; a GPU adds its device-to-host copy to the snapshot)."""
    t = recipe.train
    total = n_params * CHECKPOINT_BYTES_PER_PARAM
    share, per_node = total / cluster.world_size, total / cluster.nodes
    every = t.checkpoint_every or t.max_steps
    count = t.max_steps // every
    sync_s, async_s = share / (MEASURED_SAVE_MIB_S * 2**20), share / (MEASURED_SNAPSHOT_MIB_S * 2**20)
    chosen = "on" if t.checkpoint_async else "off"
    return [
        f"checkpoints: {total / GIB:,.1f} GiB each ({CHECKPOINT_BYTES_PER_PARAM} bytes/param: fp32 weights + Adam "
        f"moments), {share / GIB:,.2f} GiB per process; every {every:,} steps ({format_duration(every * step_s)}), "
        f"{count:,} in the run",
        f"  stall per checkpoint at the rates measured on the development machine (benchmarks/reliability.py): "
        f"synchronous {sync_s:,.1f} s ({MEASURED_SAVE_MIB_S:,.0f} MiB/s per process, "
        f"{count * sync_s / 3600:,.1f} h over the run), asynchronous {async_s:,.1f} s "
        f"({MEASURED_SNAPSHOT_MIB_S:,.0f} MiB/s into RAM, {count * async_s / 3600:,.1f} h)",
        f"  train.checkpoint_async: {chosen} in this recipe; asynchronous saves need {per_node / GIB:,.1f} GiB of free "
        "RAM per node (/dev/shm) for the snapshot; measure your storage with benchmarks/reliability.py",
    ]


def _refused(recipe: Recipe, stage: int) -> bool:
    """Liger's fused cross-entropy is refused under ZeRO-3 (lmtrain/model/speed.py)."""
    return recipe.model.liger_kernel and stage == 3


def _speed_line(recipe: Recipe, config: LlamaConfig, dtype: str, rows_at) -> str:
    """What the speed switches change in the activation column, at the recipe's micro batch."""
    m, b = recipe.model, recipe.train.micro_batch_size
    plain = activation_bytes(config, b, recipe.data.seq_len, dtype, False)
    parts = [f"attention {m.attn_implementation}"]
    if recipe.data.document_masking:
        mask = activation_bytes(config, b, recipe.data.seq_len, dtype, False, m.attn_implementation, False, True)
        mask -= activation_bytes(config, b, recipe.data.seq_len, dtype, False, m.attn_implementation)
        kind = "dense mask" if m.attn_implementation in ("sdpa", "eager") else "no dense mask"
        parts.append(f"document masking ({kind}: {mask / GIB:.2f} GiB)")
    if m.liger_kernel:
        fused = activation_bytes(config, b, recipe.data.seq_len, dtype, False, fused_ce=True)
        parts.append(f"Liger fused cross-entropy (no logits: {(plain - fused) / GIB:.2f} GiB less; ZeRO-3 refused)")
    else:
        parts.append("logits kept (model.liger_kernel=true would not keep them)")
    switches = [name for name in ("compile", "fp8") if getattr(m, name)]
    on = f"; {' and '.join(switches)} on (their memory effect not counted)" if switches else ""
    return "speed switches: " + ", ".join(parts) + on


def _recommendation(
    recipe: Recipe, rows: list[StageMemory], usable: float, dtype: str, n_params: int, cluster: Cluster, rows_at
) -> str:
    """The first configuration that fits, in order of speed: no activation checkpointing before
    checkpointing (which recomputes the forward pass, about a third more compute); then plain data
    parallelism, ZeRO-2, ZeRO-3. ZeRO-1 is never the pick: ZeRO-2 moves the same bytes per step (a
    reduce-scatter instead of an all-reduce, 2x the model) with less memory, while ZeRO-3 moves 3x.
    A stage the speed switches refuse (ZeRO-3 with Liger) is not a candidate. Within the configuration, the
    largest micro batch that fits (a divisor of the sequences per process, so the global batch holds): fewer
    micro-batches per step mean fewer of ZeRO's per-micro-batch gradient reductions (and ZeRO-3's weight
    gathers) and larger matmuls. Nothing fits: ZeRO-3 with CPU offload."""
    preference = {0: 0, 2: 1, 3: 2}
    per_process = recipe.train.global_batch_size // cluster.world_size
    micro_batches = [n for n in range(per_process, 0, -1) if per_process % n == 0]
    plans = {n: rows_at(n) for n in micro_batches}
    candidates = sorted(
        ((r.checkpointing, preference[r.stage]), r.stage, r.checkpointing)
        for r in rows
        if r.stage in preference and not _refused(recipe, r.stage)
    )
    for _, stage, checkpointing in candidates:
        fitting = [
            (n, r)
            for n in micro_batches
            for r in plans[n]
            if (r.stage, r.checkpointing) == (stage, checkpointing) and r.peak <= usable
        ]
        if fitting:
            micro, best = fitting[0]
            break
    else:
        offload_gpu = min(r.gathered + r.activations for r in rows if r.stage == 3)
        # Each node's CPU RAM holds its GPUs' shards of every model state, plus the 50% DeepSpeed's
        # estimator adds for pinned staging buffers.
        offload_cpu = 1.5 * sum(model_state_bytes(n_params, 3, 1, dtype)) / cluster.nodes
        return (
            f"recommendation: nothing fits on {cluster.world_size} GPU(s); use more GPUs, or ZeRO-3 with CPU "
            f"offload (ds_config/zero3_offload.json, model.gradient_checkpointing=true): about "
            f"{offload_gpu / GIB:.1f} GiB per GPU and {offload_cpu / GIB:.0f} GiB of CPU RAM per node"
        )
    config_file = SHIPPED_DS_CONFIGS.get(best.stage)
    how = config_file or "plain data parallelism: accelerate launch --multi_gpu, no DeepSpeed needed"
    ckpt = f"model.gradient_checkpointing={'true' if best.checkpointing else 'false'}"
    recipe_note = (
        ""
        if recipe.model.gradient_checkpointing == best.checkpointing
        else f" (the recipe says {str(recipe.model.gradient_checkpointing).lower()})"
    )
    micro_note = "" if micro == recipe.train.micro_batch_size else f" (the recipe says {recipe.train.micro_batch_size})"
    return (
        f"recommendation: ZeRO-{best.stage} ({how}), {ckpt}{recipe_note}, train.micro_batch_size={micro}"
        f"{micro_note}: peak {best.peak / GIB:.1f} of {usable / GIB:.1f} GiB usable"
    )
