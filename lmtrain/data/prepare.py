"""Data preparation: raw sources -> cleaned, filtered, deduplicated, tokenized per-source shards on disk.

    per source: read (sources.py) -> clean -> quality filters -> dedup (mixture.py, one index
    across sources, sources in recipe order) -> assign split (whole documents by a hash of the text; the tail of
    the text for a source of few documents) -> tokenize (batches, all cores) -> uint16 shards (shards.py)

Sources stay separate on disk and every source is prepared whole, whatever its weight: the recipe's weights are
applied when training samples blocks (lmtrain/data/sampler.py MixtureSampler), so a new mixture needs no new
data. data.dir then holds sources/<i>/{train,validation}/*.bin (token ids, each document followed by eos;
document boundaries are derived from the eos when read, so data.document_masking costs no bytes on disk),
held_out.jsonl (a sample of each source's held-out documents, from which evaluation builds downstream tasks
never seen in training), plus manifest.json: inputs, counts per source, filter reason and duplicate kind, what
each source's splits hold (documents, tokens, blocks, sha256), how each source's validation text was held out
(and why, in `notes`, where by spans), and a fingerprint of the whole content. The input fingerprint covers the
sources (including file sizes and mtimes, not their weights), cleaning, filter, dedup and packing settings and
the tokenizer content: a re-run with the same inputs reuses data.dir; any change rebuilds it. Work happens in a
scratch directory next to data.dir, renamed into place when complete, so a stale or half-written result is
never picked up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value
from datatrove.pipeline.base import PipelineStep

from lmtrain.config.recipe import DataConfig, Recipe
from lmtrain.corpus.dedup import Deduplicator
from lmtrain.corpus.mixture import SourceStats
from lmtrain.corpus.sources import describe_source, source_label
from lmtrain.data.pairs import PairSpec, write_pairs
from lmtrain.data.shards import PackedRows, TokenStream, source_dir, stream_digest, token_dtype
from lmtrain.data.workers import (
    WORK_LAYOUT,
    SlurmOptions,
    merged_stats,
    read_task_stats,
    run_stages,
    source_summary,
)
from lmtrain.errors import UserError
from lmtrain.tokenizer.bpe import load_tokenizer, tokenizer_fingerprint

MANIFEST = "manifest.json"
HELD_OUT = "held_out.jsonl"
SPLITS = ("train", "validation")
FORMAT_VERSION = 5
"""Bump when the pipeline's output changes for the same inputs, so old data dirs are rebuilt."""


def prepare_data(recipe: Recipe) -> dict:
    """Build (or reuse) the per-source shards in data.dir; return the manifest."""
    data = recipe.data
    tokenizer_dir = Path(recipe.tokenizer.dir)
    inputs, fingerprint = _inputs(recipe)
    out_dir = Path(data.dir)
    previous = read_manifest(out_dir)
    if previous is not None and previous["input_fingerprint"] == fingerprint:
        print(f"data: reusing {out_dir} (inputs unchanged, fingerprint {fingerprint[:12]})")
        return previous
    if previous is not None:
        print(f"data: rebuilding {out_dir}: {_what_changed(previous['inputs'], inputs)}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Work space next to data.dir (same filesystem: the finished result is renamed into place). It outlives a
    # failed or killed run: the next run with the same inputs redoes only the tasks that had not finished.
    work = _work_dir(recipe, fingerprint)
    start = time.perf_counter()
    manifest = _build(recipe, work)
    manifest = {
        "input_fingerprint": fingerprint,
        "inputs": inputs,
        "tokenizer_dir": str(tokenizer_dir),
        **manifest,
        "seconds": round(time.perf_counter() - start, 2),
    }
    # manifest.json is written last: a data dir without one is never mistaken for a finished one.
    staged = work / "data"
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _replace_dir(staged, out_dir)
    shutil.rmtree(work)
    return manifest


def _inputs(recipe: Recipe) -> tuple[dict, str]:
    """What the prepared data depends on, and its fingerprint."""
    data = recipe.data
    tokenizer_dir = Path(recipe.tokenizer.dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise UserError(
            f"tokenizer.dir {tokenizer_dir} holds no tokenizer; train it first: "
            "python tokenizer/train_tokenizer.py RECIPE (with the same recipe and overrides)"
        )
    inputs = {
        "format_version": FORMAT_VERSION,
        # weights are left out: the sampler applies them, so a new mixture reuses the prepared data
        "sources": [{k: v for k, v in describe_source(s).items() if k != "weight"} for s in data.sources],
        "clean": dataclasses.asdict(data.clean),
        "filters": dataclasses.asdict(data.filters),
        "dedup": dataclasses.asdict(data.dedup),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer_dir),
        "seq_len": data.seq_len,
        "validation_fraction": data.validation_fraction,
        **(
            {"pairs": {"short_seq_prob": recipe.objective.short_seq_prob, "seed": recipe.train.seed}}
            if recipe.objective.nsp
            else {}
        ),  # fmt: skip
    }
    return inputs, hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _work_dir(recipe: Recipe, fingerprint: str) -> Path:
    """Work space next to data.dir (same filesystem: the finished result is renamed into place). It outlives a
    failed or killed run: the next run with the same inputs redoes only the tasks that had not finished."""
    out_dir = Path(recipe.data.dir)
    return out_dir.parent / f".{out_dir.name}.work-{fingerprint[:12]}-{recipe.data.tasks}tasks-v{WORK_LAYOUT}"


def submit_to_slurm(recipe: Recipe, slurm: SlurmOptions) -> None:
    """Submit the stages as dependent SLURM job arrays (datatrove's SlurmPipelineExecutor), then one job that
    merges the counts and puts data.dir in place: prepare_data again, where every stage's tasks are complete.
    Resubmitting after a failure runs only the tasks that did not complete."""
    _, fingerprint = _inputs(recipe)
    work = _work_dir(recipe, fingerprint)
    Path(recipe.data.dir).parent.mkdir(parents=True, exist_ok=True)
    last, _ = run_stages(recipe, work, slurm.executor)
    slurm.executor(pipeline=[FinishStep(recipe)], tasks=1, workers=1, logging_dir=str(work / "logs" / "finish"),
                   start_method=None, depends=last, cpus_per_task=2).run()  # fmt: skip


class FinishStep(PipelineStep):
    """The last SLURM job: prepare_data, whose stages are all complete by then, merges and writes data.dir."""

    name = "merge the counts, write data.dir"
    type = "lmtrain"

    def __init__(self, recipe: Recipe):
        super().__init__()
        self.recipe = recipe

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        prepare_data(self.recipe)


def read_manifest(data_dir: str | Path) -> dict | None:
    """The manifest of a finished data dir, or None if there is none."""
    path = Path(data_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def open_prepared(data_dir: str | Path, manifest: dict, document_masking: bool) -> tuple[PackedRows, PackedRows]:
    """The train and validation blocks of a prepared data dir, memory-mapped: every source's blocks, numbered
    source after source (the validation rows also carry each block's source index, for bits per byte per
    source). Data of another format version is refused with what to do."""
    if manifest["inputs"].get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{data_dir}: data prepared in format {manifest['inputs'].get('format_version')}, this version reads "
            f"format {FORMAT_VERSION} (per-source uint16 shards); prepare it again: "
            "python data_prep/prepare.py RECIPE (with the same recipe)"
        )
    dtype = np.dtype(manifest["shards"]["dtype"])
    eos_id, seq_len = manifest["eos_id"], manifest["inputs"]["seq_len"]
    count = len(manifest["sources"])
    rows = {
        split: PackedRows(
            [TokenStream(source_dir(data_dir, i, split), dtype) for i in range(count)],
            seq_len,
            eos_id,
            positions=document_masking,
            sources=split != "train",
        )
        for split in SPLITS
    }
    return rows["train"], rows["validation"]


def as_datasets(data_dir: str | Path, rows_per_batch: int = 1024) -> DatasetDict:
    """The prepared blocks as a `datasets.DatasetDict` (train, validation) of `input_ids` rows with each block's
    `source` index, for inspection and `push_to_hub`. Written to the datasets cache as Arrow (≈4 bytes per token):
    the trainer reads the .bin shards directly and never needs this."""
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise UserError(f"{data_dir}: no prepared data (manifest.json missing); run data_prep/prepare.py first")
    train, validation = open_prepared(data_dir, manifest, document_masking=False)
    seq_len = manifest["inputs"]["seq_len"]
    features = Features({"input_ids": List(Value("int32"), length=seq_len), "source": Value("int16")})

    def blocks(rows: PackedRows) -> Iterator[dict]:
        for start in range(0, len(rows), rows_per_batch):
            indices = np.arange(start, min(start + rows_per_batch, len(rows)))
            batch, sources = rows[indices]["input_ids"], rows.source_of(indices)
            for ids, source in zip(batch, sources):
                yield {"input_ids": ids, "source": int(source)}

    return DatasetDict(
        {
            split: Dataset.from_generator(blocks, gen_kwargs={"rows": rows}, features=features)
            for split, rows in (("train", train), ("validation", validation))
        }
    )


def _build(recipe: Recipe, work: Path) -> dict:
    """Run the stages (lmtrain/data/workers.py), check what they made, and merge every task's counts."""
    data = recipe.data
    _, stage_seconds = run_stages(recipe, work)
    tokenizer = load_tokenizer(recipe.tokenizer.dir)
    dtype = token_dtype(len(tokenizer))
    staged = work / "data"
    source_stats, splits, held_out = [], [], {}
    for i, source in enumerate(data.sources):
        stats = merged_stats(work, i, source_label(source, i), data.tasks)
        plan, counts, texts = source_summary(work, i, data.tasks)
        found = {"exact_duplicate": plan["exact_duplicates"], "near_duplicate": plan["near_duplicates"]}
        stats.duplicates.update({kind: n for kind, n in found.items() if n})
        stats.kept, stats.validation_by = plan["kept"], plan["validation_by"]
        stats.validation_note = plan.get("note", "")
        if stats.validation_note:
            print(f"data: {stats.name}: {stats.validation_note}", file=sys.stderr)
        source_stats.append(stats)
        splits.append(
            {split: SplitSummary.of(counts[split], data.seq_len, staged, i, split, dtype) for split in SPLITS}
        )
        held_out[stats.name] = texts
    _check_not_empty(data, source_stats, splits)
    if not recipe.objective.nsp:  # NSP samples pairs, not blocks: write_pairs checks that every source gives some
        _check_enough(data, splits)
    with open(staged / HELD_OUT, "w", encoding="utf-8") as f:
        for name, texts in held_out.items():
            for text in texts:
                f.write(json.dumps({"source": name, "text": text}, ensure_ascii=False) + "\n")
    dedup = Deduplicator(data.dedup).describe() if data.dedup.exact or data.dedup.near else None
    encoder, read_stage = read_task_stats(work, data.tasks)
    report = _report(data, source_stats, splits, dedup, encoder, dtype, tokenizer.eos_token_id)
    report["read_stage"] = read_stage
    report["stage_seconds"] = stage_seconds
    if recipe.objective.nsp:
        spec = pair_spec(recipe, tokenizer)
        pairs = write_pairs(staged, len(data.sources), SPLITS, dtype, tokenizer.eos_token_id, spec, data.batch_size,
                            recipe.train.seed)  # fmt: skip
        report["pairs"] = pairs
        print("data: next-sentence pairs: " + ", ".join(
            f"{split} {sum(c['pairs'] for c in counts):,}" for split, counts in pairs.items()), file=sys.stderr)  # fmt: skip
    return report


def pair_spec(recipe: Recipe, tokenizer) -> PairSpec:
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserError(
            f"{recipe.tokenizer.dir}: objective.nsp builds [CLS] A [SEP] B [SEP] pairs and this tokenizer (a "
            "decoder's) has no [CLS]/[SEP]; train one with this recipe: python tokenizer/train_tokenizer.py RECIPE"
        )
    return PairSpec(recipe.data.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                    recipe.objective.short_seq_prob)  # fmt: skip


@dataclasses.dataclass
class SplitSummary:
    """What one source's split holds on disk."""

    documents: int
    tokens: int
    blocks: int
    dropped_tail_tokens: int
    sha256: str

    @classmethod
    def of(cls, counts: dict, seq_len: int, data_dir: Path, source: int, split: str, dtype: np.dtype) -> SplitSummary:
        blocks, tail = divmod(counts["tokens"], seq_len)
        digest = stream_digest(TokenStream(source_dir(data_dir, source, split), dtype))
        return cls(counts["documents"], counts["tokens"], blocks, tail, digest)


def read_held_out(data_dir: str | Path) -> dict[str, list[str]]:
    """Held-out documents by source name, as data preparation sampled them (HeldOutSample)."""
    path = Path(data_dir) / HELD_OUT
    if not path.is_file():
        raise UserError(f"{path} is missing: the data was prepared by an older version; rerun data_prep/prepare.py")
    texts: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.setdefault(row["source"], []).append(row["text"])
    return texts


def _check_enough(data: DataConfig, splits: list[dict[str, SplitSummary]]) -> None:
    """Each split must fill at least one block, and every weighted source one training block; if not, say by how
    much, and what would fill it."""
    tokens = {split: sum(s[split].tokens for s in splits) for split in SPLITS}
    share = {"train": 1 - data.validation_fraction, "validation": data.validation_fraction}
    for split in SPLITS:
        if sum(s[split].blocks for s in splits):
            continue
        fixes = []
        if split == "validation":
            # Held-out tokens grow in proportion to the fraction (exactly for spans, on average for documents);
            # a quarter more covers the cut moving to a line break and uneven token density.
            fraction = math.ceil(1.25 * data.seq_len / max(sum(tokens.values()), 1) * 1000) / 1000
            if fraction < 0.5:
                fixes.append(f"raise data.validation_fraction to {fraction:g}")
        smallest = min(tokens.values())
        if smallest >= 8:
            fixes.append(f"lower data.seq_len to {smallest} or less (the {min(tokens, key=tokens.get)} split's tokens)")
        missing = math.ceil((data.seq_len - tokens[split]) / share[split])
        fixes.append(f"add at least {missing:,} tokens of text to data.sources")
        documents = sum(s[split].documents for s in splits)
        raise UserError(
            f"data: the {split} split has {documents} document(s), {tokens[split]:,} tokens: not enough "
            f"for one block of data.seq_len={data.seq_len} tokens; {'; or '.join(fixes)}"
        )
    for i, (source, summary) in enumerate(zip(data.sources, splits)):
        if source.weight > 0 and not summary["train"].blocks:
            raise UserError(
                f"data.sources.{i} ({source_label(source, i)}): {summary['train'].tokens:,} training tokens, fewer "
                f"than one block of data.seq_len={data.seq_len}; the sampler cannot draw its weight from it. Add "
                "text to it, lower data.seq_len, or give it weight 0"
            )


def _check_not_empty(data: DataConfig, source_stats: list[SourceStats], splits: list[dict[str, SplitSummary]]) -> None:
    """A weighted source that gives no document cannot be mixed in: say which one and why."""
    read = sum(s.corpus.documents for s in source_stats)
    if read == 0:
        skipped = Counter()
        for s in source_stats:
            skipped.update(s.corpus.skipped)
        raise UserError(
            f"data.sources: the corpus is empty: no documents were read ({_skips(skipped)}); "
            "check the paths and text_column of data.sources"
        )
    for i, (stats, source, summary) in enumerate(zip(source_stats, data.sources, splits)):
        if source.weight == 0 or any(s.documents for s in summary.values()):
            continue
        where = f"data.sources.{i} ({stats.name})"
        if stats.corpus.documents and stats.too_short == stats.corpus.documents:
            min_chars = (source.clean or data.clean).min_chars
            raise UserError(
                f"data.clean: cleaning kept none of the {stats.corpus.documents} document(s) of {where} "
                f"(all shorter than min_chars={min_chars} after cleaning); check the clean settings "
                "and that text_column names the column holding the text"
            )
        raise UserError(
            f"{where}: no document left to pack ({stats.why_empty()}). Loosen its filters, fix its "
            "input, or give it weight 0; the mixture cannot honour its weight without it"
        )


def _report(
    data: DataConfig,
    source_stats: list[SourceStats],
    splits: list[dict[str, SplitSummary]],
    dedup: dict | None,
    encoder: dict,
    dtype: np.dtype,
    eos_id: int,
) -> dict:
    total_weight = sum(s.weight for s in data.sources)
    sources = []
    for source, stats, summary in zip(data.sources, source_stats, splits):
        sources.append(
            {
                "name": stats.name,
                "kind": source.kind,
                "weight": source.weight,
                "target_token_share": round(source.weight / total_weight, 4),
                "documents": sum(s.documents for s in summary.values()),
                "tokens": sum(s.tokens for s in summary.values()),
                "splits": {split: dataclasses.asdict(s) for split, s in summary.items()},
                **stats.to_dict(),
            }
        )
    skipped, examples, filtered = Counter(), {}, Counter()
    for stats in source_stats:
        skipped.update(stats.corpus.skipped)
        filtered.update(stats.filtered)
        for reason, where in stats.corpus.examples.items():
            examples.setdefault(reason, []).extend(where)
    too_short = sum(s.too_short for s in source_stats)
    totals = {
        split: {
            key: sum(getattr(s[split], key) for s in splits)
            for key in ("documents", "tokens", "blocks", "dropped_tail_tokens")
        }
        for split in SPLITS
    }
    return {
        "documents": {
            "read": sum(s.corpus.documents for s in source_stats),
            "kept": sum(t["documents"] for t in totals.values()),
            "skipped": dict(skipped) | ({"too_short_after_cleaning": too_short} if too_short else {}),
            "skip_examples": examples,
        },
        "sources": sources,
        "filters": {
            "removed": dict(filtered),
            "boilerplate_lines_removed": sum(s.boilerplate_lines_removed for s in source_stats),
        },
        "dedup": (dedup or {"exact": False, "near": False})
        | {
            "exact_duplicates": sum(s.duplicates["exact_duplicate"] for s in source_stats),
            "near_duplicates": sum(s.duplicates["near_duplicate"] for s in source_stats),
        },
        "encoder": encoder,
        "eos_id": eos_id,
        "shards": {
            "dtype": dtype.name,
            "bytes_per_token": dtype.itemsize,
            "layout": "sources/<source index, 3 digits>/<split>/<shard>.bin: raw little-endian token ids, "
            "each document followed by eos; blocks of seq_len cut from their concatenation",
        },
        "columns": ["input_ids", "position_ids"] if data.document_masking else ["input_ids"],
        "validation_columns": ["input_ids", "position_ids", "source"]
        if data.document_masking
        else ["input_ids", "source"],
        "splits": totals,
        "notes": [f"{s.name}: {s.validation_note}" for s in source_stats if s.validation_note],
        "content_fingerprint": _content_fingerprint(splits),
    }


def _content_fingerprint(splits: list[dict[str, SplitSummary]]) -> str:
    """sha256 over every source's split digests, in order: what the trainer reads, whatever the weights."""
    digest = hashlib.sha256()
    for summary in splits:
        for split in SPLITS:
            digest.update(summary[split].sha256.encode())
    return digest.hexdigest()


def _skips(skipped: Counter) -> str:
    if not skipped:
        return "nothing was skipped either"
    return "skipped: " + ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in skipped.items())


def _what_changed(old: dict, new: dict) -> str:
    changes = []
    for key in new:
        if old.get(key) == new[key]:
            continue
        if key == "tokenizer_fingerprint":
            changes.append(f"the tokenizer changed ({str(old.get(key))[:12]} -> {new[key][:12]})")
        elif isinstance(new[key], (int, float, str)):
            changes.append(f"{key} changed ({old.get(key)} -> {new[key]})")
        else:
            changes.append(f"{key} changed")
    return "; ".join(changes) or "the previous manifest is from another version"


def _replace_dir(staged: Path, out_dir: Path) -> None:
    """Move the finished `staged` dir to `out_dir`, replacing a previous prepared data dir."""
    if not out_dir.exists():
        staged.rename(out_dir)
        return
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise UserError(
            f"data.dir {out_dir} exists and is not a prepared data directory; "
            "refusing to replace it. Point data.dir elsewhere or remove it"
        )
    retired = staged.parent / "previous"
    out_dir.rename(retired)
    staged.rename(out_dir)
    shutil.rmtree(retired)
