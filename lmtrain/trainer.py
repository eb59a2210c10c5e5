"""The training loop: `fit(recipe)` builds everything from the recipe, trains, evaluates, exports."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from lmtrain.config import Recipe, recipe_to_dict, recipe_to_yaml
from lmtrain.data import read_manifest
from lmtrain.distributed import make_accelerator
from lmtrain.errors import UserError
from lmtrain.export import export_model
from lmtrain.model import build_model, llama_config, parameter_count
from lmtrain.plan import batch_arithmetic, format_count, format_duration
from lmtrain.sampler import GlobalBatchSampler
from lmtrain.tokenization import load_tokenizer, tokenizer_fingerprint


@dataclass
class FitResult:
    steps: int
    tokens: int
    seconds: float
    first_eval_loss: float
    last_eval_loss: float
    final_dir: Path


def fit(recipe: Recipe) -> FitResult:
    accelerator = make_accelerator(recipe)
    run_dir = Path(recipe.run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    set_seed(recipe.train.seed)

    tokenizer = load_tokenizer(recipe.tokenizer.dir)
    train_blocks, val_blocks = load_packed_splits(recipe)
    special_ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    model = build_model(recipe, llama_config(recipe, special_ids))
    n_params = parameter_count(model)
    t = recipe.train
    optimizer = torch.optim.AdamW(decay_param_groups(model, t.weight_decay), lr=t.lr,
                                  betas=tuple(t.adam_betas), eps=t.adam_eps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Built on the prepared optimizer (ZeRO-3 regroups parameters) and stepped by us once per
    # optimizer step (Accelerate's scheduler wrapper would step it once per process).
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps, min_lr_rate=t.min_lr_ratio)
    accelerator.init_trackers(run_dir.name, config=_flatten(recipe_to_dict(recipe)),
                              init_kwargs={"wandb": {"dir": str(run_dir)}})

    sampler = GlobalBatchSampler(len(train_blocks), t.global_batch_size, t.seed)
    arithmetic = batch_arithmetic(recipe, accelerator.num_processes)
    log = MetricsLog(accelerator, run_dir / "metrics.jsonl")
    log.print(f"model: LlamaForCausalLM, {n_params:,} parameters | device {accelerator.device}, "
              f"{accelerator.num_processes} process(es), precision {accelerator.mixed_precision}")
    log.print(arithmetic.describe() + f" | {len(train_blocks):,} train blocks "
              f"(≈{sampler.epoch_at(t.max_steps):.2f} epochs), {len(val_blocks):,} validation blocks")

    rank, world = accelerator.process_index, accelerator.num_processes
    accum = accelerator.gradient_accumulation_steps
    tokens_per_step = arithmetic.tokens_per_step
    first_eval = eval_loss = evaluate(model, val_blocks, accelerator, t.micro_batch_size, t.eval_batches)
    log.write({"step": 0, "eval_loss": eval_loss, "eval_ppl": math.exp(eval_loss)})

    progress = tqdm(total=t.max_steps, disable=not (accelerator.is_main_process and sys.stderr.isatty()),
                    desc="train", dynamic_ncols=True)
    start = window_start = time.perf_counter()
    eval_seconds = window_eval_seconds = 0.0
    window_loss = torch.zeros((), device=accelerator.device)
    window_steps = 0
    model.train()
    for step in range(1, t.max_steps + 1):
        indices = sampler.rank_batch(step - 1, rank, world)
        for micro_indices in np.split(indices, accum):
            input_ids = fetch_blocks(train_blocks, micro_indices).to(accelerator.device)
            with accelerator.accumulate(model):
                loss = model(input_ids=input_ids, labels=input_ids).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach() / accum
        scheduler.step()
        window_steps += 1
        progress.update(1)

        if step % t.log_every == 0 or step == t.max_steps:
            now = time.perf_counter()
            train_seconds = now - window_start - window_eval_seconds
            mean_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_steps
            tokens_per_s = window_steps * tokens_per_step / max(train_seconds, 1e-9)
            record = {
                "step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": tokens_per_s, "tokens_seen": step * tokens_per_step,
                "eta_s": (t.max_steps - step) * tokens_per_step / tokens_per_s,
            }
            log.write(record)
            progress.set_postfix(loss=f"{mean_loss:.3f}")
            window_start, window_eval_seconds, window_steps = now, 0.0, 0
            window_loss.zero_()

        if step % t.eval_every == 0 or step == t.max_steps:
            eval_start = time.perf_counter()
            eval_loss = evaluate(model, val_blocks, accelerator, t.micro_batch_size, t.eval_batches)
            log.write({"step": step, "eval_loss": eval_loss, "eval_ppl": math.exp(eval_loss)})
            window_eval_seconds += time.perf_counter() - eval_start
            eval_seconds += time.perf_counter() - eval_start
    progress.close()
    seconds = time.perf_counter() - start

    final_dir = run_dir / "final"
    export_model(accelerator, model, tokenizer, recipe, final_dir)
    accelerator.end_training()
    tokens = t.max_steps * tokens_per_step
    log.print(f"done: {t.max_steps:,} steps, {format_count(tokens)} tokens in {format_duration(seconds)} "
              f"({tokens / max(seconds - eval_seconds, 1e-9):,.0f} tokens/s training) | eval loss "
              f"{first_eval:.3f} → {eval_loss:.3f} (ppl {math.exp(eval_loss):,.1f}) | model: {final_dir}")
    return FitResult(t.max_steps, tokens, seconds, first_eval, eval_loss, final_dir)


def load_packed_splits(recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The packed train/validation blocks, checked against the recipe's tokenizer and seq_len."""
    manifest = read_manifest(recipe.data.dir)
    if manifest is None:
        raise UserError(f"{recipe.data.dir}: no prepared data (manifest.json missing); "
                        "run `python data_prep/prepare.py RECIPE` with the same recipe first")
    inputs = manifest["inputs"]
    if inputs["seq_len"] != recipe.data.seq_len:
        raise UserError(f"{recipe.data.dir}: data was packed with seq_len {inputs['seq_len']} but the recipe says "
                        f"data.seq_len={recipe.data.seq_len}; rerun data_prep/prepare.py with this recipe")
    if inputs["tokenizer_fingerprint"] != tokenizer_fingerprint(recipe.tokenizer.dir):
        raise UserError(f"{recipe.data.dir}: data was tokenized with a different tokenizer than the one in "
                        f"{recipe.tokenizer.dir}; rerun data_prep/prepare.py with this recipe")
    splits = datasets.load_from_disk(recipe.data.dir)
    return splits["train"].with_format("numpy"), splits["validation"].with_format("numpy")


def fetch_blocks(blocks: datasets.Dataset, indices: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(blocks[indices.tolist()]["input_ids"], dtype=np.int64))


def decay_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights), none on norms and biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model, blocks: datasets.Dataset, accelerator: Accelerator, micro_batch: int, max_batches: int) -> float:
    """Mean next-token loss over the first validation blocks: the same blocks on any number of processes,
    each process taking an equal share (equal, so that every rank runs as many forwards as ZeRO-3 needs)."""
    world = accelerator.num_processes
    count = min(len(blocks), max_batches * micro_batch) if max_batches else len(blocks)
    per_rank = count // world
    if per_rank == 0:
        raise UserError(f"the validation split has {len(blocks)} blocks, fewer than the {world} processes; "
                        "raise data.validation_fraction or add data")
    first = accelerator.process_index * per_rank
    total = torch.zeros((), device=accelerator.device)
    model.eval()
    for start in range(first, first + per_rank, micro_batch):
        chunk = np.arange(start, min(start + micro_batch, first + per_rank))
        input_ids = fetch_blocks(blocks, chunk).to(accelerator.device)
        total += model(input_ids=input_ids, labels=input_ids).loss.float() * len(chunk)
    model.train()
    return accelerator.reduce(total, reduction="sum").item() / (per_rank * world)


class MetricsLog:
    """One dense console line and one JSON line (run_dir/metrics.jsonl) per event, main process only,
    mirrored to the Accelerate trackers."""

    def __init__(self, accelerator: Accelerator, path: Path):
        self.accelerator = accelerator
        self.file = path.open("w", encoding="utf-8") if accelerator.is_main_process else None

    def print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message, file=sys.stderr)

    def write(self, record: dict) -> None:
        self.accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.print(_format_record(record))


def _format_record(r: dict) -> str:
    if "eval_loss" in r:
        return f"step {r['step']:>6} | eval loss {r['eval_loss']:.4f} | ppl {r['eval_ppl']:,.2f}"
    grad = f"{r['grad_norm']:.3f}" if r["grad_norm"] is not None else "n/a"
    return (f"step {r['step']:>6} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | grad {grad} | "
            f"{r['tokens_per_s']:,.0f} tok/s | {format_count(r['tokens_seen'])} tok | eta {format_duration(r['eta_s'])}")


def _flatten(tree: dict, prefix: str = "") -> dict:
    """Trackers want flat scalar configs: {'train.lr': 3e-4, ...}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
