"""Pretraining as a `Task`: next-token prediction on the packed blocks that data_prep/ wrote.

Evaluation reports the validation loss and bits per byte, overall and per source: the summed negative
log-likelihood of the predicted tokens in bits over the UTF-8 bytes of text they stand for (the eos that ends a
document counts in the bits, with no bytes). Unlike the loss per token, it does not depend on the tokenizer,
so runs with different vocabularies compare on it. Downstream tasks (the recipe's `eval` section) run with it.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import GenerationConfig

from lmtrain.config.recipe import Recipe
from lmtrain.corpus.sources import source_label
from lmtrain.data.packing import IGNORE_INDEX, document_labels
from lmtrain.data.prepare import open_prepared, read_held_out, read_manifest
from lmtrain.data.sampler import MixtureSampler
from lmtrain.data.shards import PackedRows
from lmtrain.errors import UserError
from lmtrain.evals.tasks import LOCAL_TASKS, load_tasks, write_local_tasks
from lmtrain.model.export import export_model
from lmtrain.model.llama import build_model, llama_config
from lmtrain.publish.card import languages_of
from lmtrain.tokenizer.bpe import load_tokenizer, token_byte_lengths, tokenizer_fingerprint
from lmtrain.tokenizer.report import REPORT
from lmtrain.training.downstream import DownstreamEval
from lmtrain.training.evaluation import eval_shard, eval_sums
from lmtrain.training.task import Task


class PretrainTask(Task):
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.tokenizer = load_tokenizer(recipe.tokenizer.dir)
        self.manifest, self.train_blocks, self.val_blocks = load_packed_splits(recipe)
        self.train_rows, self.val_rows = self.train_blocks, self.val_blocks
        self.seq_len = recipe.data.seq_len
        self.train_size = len(self.train_blocks)
        # With document positions, attention stays inside each document: transformers builds the
        # per-document mask from position_ids when no attention_mask is given and the cache is off.
        self.document_masking = recipe.data.document_masking
        self.byte_lengths = torch.from_numpy(token_byte_lengths(self.tokenizer))
        self.source_names = [metric_name(s["name"]) for s in self.manifest["sources"]]
        self.downstream = None
        if recipe.eval.tasks:  # read, built and tokenized now: a bad task file stops the run before training
            held_out = read_held_out(recipe.data.dir) if any(t.build for t in recipe.eval.tasks) else {}
            tasks = load_tasks(recipe.eval, held_out, self.manifest["sources"][0]["name"])
            max_length = recipe.model.max_position_embeddings or self.seq_len
            batch_tokens = recipe.train.micro_batch_size * self.seq_len
            self.downstream = DownstreamEval(tasks, self.tokenizer, max_length, batch_tokens)

    def build_model(self) -> torch.nn.Module:
        tok = self.tokenizer
        special_ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
        return build_model(self.recipe, llama_config(self.recipe, special_ids))

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return self._batch(self.train_rows, indices)

    def sampler(self, global_batch_size: int, seed: int) -> MixtureSampler:
        """The recipe's weights applied to the prepared sources' blocks (exact shares per data.mixture_window)."""
        weights = [s.weight for s in self.recipe.data.sources]
        window = self.recipe.data.mixture_window or global_batch_size
        return MixtureSampler(self.train_blocks.blocks_per_source, weights, global_batch_size, seed, window)

    def _batch(self, blocks: PackedRows, indices: np.ndarray, sources: bool = False) -> dict[str, torch.Tensor]:
        rows = blocks[indices]
        input_ids = torch.from_numpy(np.asarray(rows["input_ids"], dtype=np.int64))
        batch = {"input_ids": input_ids, "labels": input_ids, "use_cache": False}
        if self.document_masking:
            batch["position_ids"] = torch.from_numpy(np.asarray(rows["position_ids"], dtype=np.int64))
            batch["labels"] = document_labels(input_ids, batch["position_ids"])
        if sources:
            batch["source"] = torch.from_numpy(np.asarray(rows["source"], dtype=np.int64))
        return batch

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def evaluate(self, model, accelerator: Accelerator, step: int = 0) -> dict[str, float]:
        t = self.recipe.train
        chunks = eval_shard(len(self.val_blocks), accelerator, t.micro_batch_size, t.eval_batches)
        width = 3 + 2 * len(self.source_names)
        batch_fn = lambda idx: self._batch(self.val_rows, idx, sources=True)  # noqa: E731
        sums = eval_sums(model, accelerator, chunks, batch_fn, lambda b: self._token_sums(model, b), width).tolist()
        nll, targets, nbytes = sums[:3]
        metrics = {"eval_loss": nll / targets, "eval_ppl": math.exp(min(nll / targets, 50.0))}
        metrics["eval_bpb"] = nll / (math.log(2) * nbytes)
        for name, (source_nll, source_bytes) in zip(self.source_names, zip(sums[3::2], sums[4::2])):
            if source_bytes:  # a source with no text in the evaluated blocks has no figure
                metrics[f"eval_bpb/{name}"] = source_nll / (math.log(2) * source_bytes)
        every = self.recipe.eval.every or t.eval_every
        if self.downstream is not None and (step % every == 0 or step == t.max_steps):
            start = time.perf_counter()
            metrics |= self.downstream.evaluate(model, accelerator)
            metrics["downstream_s"] = time.perf_counter() - start
        return metrics

    def _token_sums(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[nll, loss targets, bytes] of the batch's predicted tokens, then [nll, bytes] per source (float64)."""
        source, labels = batch.pop("source", None), batch.pop("labels")
        logits = model(**batch).logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none").double()
        counted = targets != IGNORE_INDEX
        nbytes = (self.byte_lengths.to(targets.device)[targets.clamp(min=0)] * counted).double()
        sums = [nll.sum(), counted.sum().double(), nbytes.sum()]
        if source is not None:
            # one column per source: the token's (the predicted one's) source, where it is a loss target
            in_source = F.one_hot(source[:, 1:], len(self.source_names)).double() * counted[..., None]
            per_source = torch.stack(
                [(in_source * nll[..., None]).sum((0, 1)), (in_source * nbytes[..., None]).sum((0, 1))]
            )
            sums += list(per_source.T.reshape(-1))
        return torch.stack(sums)

    def export(self, accelerator: Accelerator, model, out_dir: Path) -> None:
        t = self.tokenizer
        generation = GenerationConfig(
            bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id
        )
        export_model(accelerator, model, t, self.recipe, out_dir, generation)
        if self.downstream is not None and accelerator.is_main_process:
            write_local_tasks(self.downstream.tasks, out_dir / LOCAL_TASKS)

    def fingerprints(self) -> dict[str, str]:
        return {
            "tokenizer": self.manifest["inputs"]["tokenizer_fingerprint"],
            "data": self.manifest["content_fingerprint"],
        }

    def card_facts(self) -> dict:
        report = Path(self.recipe.tokenizer.dir) / REPORT
        sources = self.recipe.data.sources
        sample = self.val_rows[np.arange(min(len(self.val_blocks), 64))]["input_ids"]
        code = ["code"] if any(s.kind == "python_stdlib" for s in sources) else []
        return {
            "kind": "pretrain",
            "manifest": self.manifest,
            "tokenizer_report": json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None,
            "languages": languages_of(self.tokenizer.batch_decode(sample)) + code,
            "datasets": sorted({s.dataset for s in sources if s.kind == "hub" and s.dataset}),
        }

    def describe(self) -> str:
        masking = ", document masking" if self.document_masking else ""
        downstream = f" | {self.downstream.describe()}" if self.downstream is not None else ""
        t = self.recipe.train
        sampler = self.sampler(t.global_batch_size, t.seed)
        epochs = sampler.source_epochs(t.max_steps)
        mix = ", ".join(
            f"{name} {share:.1%} ({e:.2f} epochs)"
            for name, share, e in zip(self.source_names, sampler.shares(), epochs)
        )
        return (
            f"{len(self.val_blocks):,} validation blocks of {self.seq_len} tokens{masking} | token shares per "
            f"{sampler.window:,} blocks: {mix}{downstream}"
        )


class BlockRows:
    """`rows[indices]` of packed blocks, as `Dataset.__getitem__` gives them, read from zero-copy numpy views of
    the memory-mapped Arrow chunks (nothing loaded into memory): only the rows asked for are copied, ≈7x
    faster than going through the Dataset's formatter (≈70 µs against ≈470 µs for 4 blocks of 128 tokens;
    the training loop fetches every micro-batch, see benchmarks/train_loop_overhead.py). A dataset with an
    indices mapping, a column that is not fixed-length without nulls, or columns chunked differently, goes
    through the Dataset."""

    def __init__(self, blocks: datasets.Dataset):
        self.blocks, self.views = blocks, None
        if getattr(blocks, "_indices", None) is None and len(blocks):
            try:
                self.views = {
                    name: [_chunk_view(chunk) for chunk in blocks.data.column(name).chunks]
                    for name in blocks.column_names
                }
            except (TypeError, pa.ArrowException):
                self.views = None
        lengths = {tuple(len(view) for view in views) for views in (self.views or {}).values()}
        if len(lengths) != 1:  # columns chunked differently (or none): through the Dataset
            self.views = None
        else:
            self.starts = np.cumsum([0, *lengths.pop()])

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        if not self.views or not len(indices) or indices.min() < 0 or indices.max() >= len(self.blocks):
            return self.blocks[indices.tolist()]  # (and its error for an index out of range)
        chunks = np.searchsorted(self.starts, indices, side="right") - 1
        return {
            name: np.stack([views[c][i - self.starts[c]] for c, i in zip(chunks, indices)])
            for name, views in self.views.items()
        }


def _chunk_view(chunk: pa.Array) -> np.ndarray:
    if not pa.types.is_fixed_size_list(chunk.type) or chunk.null_count:
        raise TypeError(f"not a fixed-length list column without nulls: {chunk.type}")
    return chunk.flatten().to_numpy(zero_copy_only=True).reshape(len(chunk), chunk.type.list_size)


def metric_name(source_name: str) -> str:
    """A source's name as it appears in metric keys (`eval_bpb/<name>`): runs of characters other than letters,
    digits, `.`, `-` and `_` become `_` (a files source is named after its first path)."""
    return re.sub(r"[^\w.-]+", "_", source_name).strip("_") or "source"


def load_packed_splits(recipe: Recipe) -> tuple[dict, datasets.Dataset, datasets.Dataset]:
    """The data manifest and the packed train/validation blocks, checked against the recipe."""
    manifest = read_manifest(recipe.data.dir)
    if manifest is None:
        raise UserError(
            f"{recipe.data.dir}: no prepared data (manifest.json missing); "
            "run `python data_prep/prepare.py RECIPE` with the same recipe first"
        )
    inputs = manifest["inputs"]
    if inputs["seq_len"] != recipe.data.seq_len:
        raise UserError(
            f"{recipe.data.dir}: data was packed with seq_len {inputs['seq_len']} but the recipe says "
            f"data.seq_len={recipe.data.seq_len}; rerun data_prep/prepare.py with this recipe"
        )
    if inputs["tokenizer_fingerprint"] != tokenizer_fingerprint(recipe.tokenizer.dir):
        raise UserError(
            f"{recipe.data.dir}: data was tokenized with a different tokenizer than the one in "
            f"{recipe.tokenizer.dir}; rerun data_prep/prepare.py with this recipe"
        )
    _check_sources(recipe, manifest)
    train, validation = open_prepared(recipe.data.dir, manifest, recipe.data.document_masking)
    return manifest, train, validation


def _check_sources(recipe: Recipe, manifest: dict) -> None:
    """The recipe's sources must be the prepared ones, in order: the sampler's weights refer to them by place."""
    prepared = [s["name"] for s in manifest["sources"]]
    for i, source in enumerate(recipe.data.sources):
        name = source_label(source, i)
        if i >= len(prepared) or prepared[i] != name:
            raise UserError(
                f"data.sources.{i} ({name}): {recipe.data.dir} has no prepared shards for it (prepared: "
                f"{', '.join(prepared)}); run `python data_prep/prepare.py RECIPE` with this recipe"
            )
    for i, (source, summary) in enumerate(zip(recipe.data.sources, manifest["sources"])):
        if source.weight > 0 and not summary["splits"]["train"]["blocks"] and not recipe.objective.nsp:
            raise UserError(
                f"data.sources.{i} ({prepared[i]}): weight {source.weight:g} but no prepared training block "
                f"({summary['splits']['train']['tokens']:,} tokens, fewer than data.seq_len); give it weight 0 "
                "or add text to it and prepare again"
            )
    if len(prepared) > len(recipe.data.sources):
        raise UserError(
            f"data.sources: {recipe.data.dir} was prepared with {len(prepared)} sources, the recipe lists "
            f"{len(recipe.data.sources)}; give an unwanted source weight 0 instead of removing it, or prepare again"
        )
