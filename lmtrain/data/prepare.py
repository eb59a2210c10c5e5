"""Data preparation: raw sources -> cleaned, filtered, deduplicated, mixed, packed `datasets` on disk.

    per source: read (sources.py) -> clean -> quality filters -> dedup (mixture.py, one index
    across sources) -> assign split (whole documents by a hash of the text; the tail of the text
    for a source of few documents) -> tokenize (batches, all cores)
    then: weighted mixture by tokens -> pack into seq_len blocks (packing.py) -> Arrow shards

The whole run is one pass over lazy streams: memory holds one batch of documents per source and
one batch of blocks per split, plus, while a source's validation mode is decided (`validation_by: auto`),
its first ⌈5 / validation_fraction⌉ documents (a whole source held out by spans, `validation_by: spans`). data.dir then holds `train` and
`validation` splits with `input_ids` (int32, exactly seq_len long; with data.document_masking also
`position_ids`; the validation split also `source`, the index in the manifest's `sources` of the document each
token belongs to, for bits per byte per source), held_out.jsonl (a sample of each source's held-out documents, from
which evaluation builds downstream tasks never seen in training), plus manifest.json: inputs, counts per source, filter reason and duplicate kind,
how each source's validation text was held out (and why, in `notes`, where by spans),
the achieved token share of every source, and a sha256 of the packed content. The input
fingerprint covers the sources (including file sizes and mtimes), cleaning, filter, dedup and
packing settings and the tokenizer content: a re-run with the same inputs reuses data.dir; any
change rebuilds it. Work happens in a scratch directory next to data.dir, renamed into place
when complete, so a stale or half-written result is never picked up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import chain, islice
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, List, Value
from tqdm.auto import tqdm

from lmtrain.config.recipe import DataConfig, Recipe
from lmtrain.corpus.dedup import Deduplicator
from lmtrain.corpus.mixture import SourceStats, WeightedMixture, open_sources
from lmtrain.corpus.sources import describe_source, is_validation_document
from lmtrain.data.packing import Packer, TagPacker
from lmtrain.data.pairs import PairSpec, PairWriter
from lmtrain.errors import UserError
from lmtrain.tokenizer.bpe import CorpusEncoder, corpus_encoder, load_tokenizer, tokenizer_fingerprint

MANIFEST = "manifest.json"
HELD_OUT = "held_out.jsonl"
HELD_OUT_CHARS = 2_000_000
"""Characters of held-out documents kept per source in held_out.jsonl (whole documents, up to the first past it)."""
SPLITS = ("train", "validation")
_FORMAT_VERSION = 4
"""Bump when the pipeline's output changes for the same inputs, so old data dirs are rebuilt."""


def prepare_data(recipe: Recipe) -> dict:
    """Build (or reuse) the packed splits in data.dir; return the manifest."""
    data = recipe.data
    tokenizer_dir = Path(recipe.tokenizer.dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise UserError(
            f"tokenizer.dir {tokenizer_dir} holds no tokenizer; train it first: "
            "python tokenizer/train_tokenizer.py RECIPE (with the same recipe and overrides)"
        )
    inputs = {
        "format_version": _FORMAT_VERSION,
        "sources": [describe_source(s) for s in data.sources],
        "clean": dataclasses.asdict(data.clean),
        "filters": dataclasses.asdict(data.filters),
        "dedup": dataclasses.asdict(data.dedup),
        "document_masking": data.document_masking,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer_dir),
        "seq_len": data.seq_len,
        "validation_fraction": data.validation_fraction,
        **({"pairs": pair_settings(recipe)} if recipe.objective.nsp else {}),
    }
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    out_dir = Path(data.dir)
    previous = read_manifest(out_dir)
    if previous is not None and previous["input_fingerprint"] == fingerprint:
        print(f"data: reusing {out_dir} (inputs unchanged, fingerprint {fingerprint[:12]})")
        return previous
    if previous is not None:
        print(f"data: rebuilding {out_dir}: {_what_changed(previous['inputs'], inputs)}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Scratch space next to data.dir: same filesystem, so the finished result is renamed into place.
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as scratch:
        start = time.perf_counter()
        staged = Path(scratch) / "data"
        manifest = _build(recipe, tokenizer_dir, staged, Path(scratch))
        manifest = {
            "input_fingerprint": fingerprint,
            "inputs": inputs,
            "tokenizer_dir": str(tokenizer_dir),
            **manifest,
            "seconds": round(time.perf_counter() - start, 2),
        }
        # manifest.json is written last: a data dir without one is never mistaken for a finished one.
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace_dir(staged, out_dir)
    return manifest


def pair_settings(recipe: Recipe) -> dict:
    """What NSP pairs depend on beyond the packed data's inputs (lmtrain/data/pairs.py)."""
    return {"short_seq_prob": recipe.objective.short_seq_prob, "seed": recipe.train.seed}


def pair_spec(recipe: Recipe, tokenizer_dir: Path) -> PairSpec:
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserError(
            f"{tokenizer_dir}: objective.nsp builds [CLS] A [SEP] B [SEP] pairs and this tokenizer (a decoder's) has "
            "no [CLS]/[SEP]; train one with this recipe: python tokenizer/train_tokenizer.py RECIPE"
        )
    return PairSpec(recipe.data.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                    recipe.objective.short_seq_prob)  # fmt: skip


def read_manifest(data_dir: str | Path) -> dict | None:
    """The manifest of a finished data dir, or None if there is none."""
    path = Path(data_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _build(recipe: Recipe, tokenizer_dir: Path, out_dir: Path, scratch: Path) -> dict:
    data = recipe.data
    eos_id = load_tokenizer(tokenizer_dir).eos_token_id
    dedup = Deduplicator(data.dedup) if data.dedup.exact or data.dedup.near else None
    streams, source_stats = open_sources(data, dedup, split=True)
    encoder = corpus_encoder(tokenizer_dir)
    held_out = HeldOutSample(scratch / HELD_OUT, len(streams))
    tokenized = [
        tokenized_documents(docs, encoder, data.batch_size, data.validation_fraction, held_out.sink(i))
        for i, docs in enumerate(streams)
    ]
    mixture = WeightedMixture(tokenized, [s.weight for s in data.sources], size=lambda doc: len(doc[1]) + 1)
    writers = {
        split: SplitWriter(
            scratch / f"{split}.arrow", data.seq_len, eos_id, data.document_masking, data.batch_size, split != "train"
        )
        if not recipe.objective.nsp
        else PairWriter(
            scratch / f"{split}.arrow", pair_spec(recipe, tokenizer_dir), data.batch_size, recipe.train.seed, split
        )  # fmt: skip
        for split in SPLITS
    }
    progress = tqdm(desc="Preparing", unit=" docs", disable=not sys.stderr.isatty())
    for source, (validation, ids) in mixture:
        writers["validation" if validation else "train"].add(source, ids)
        progress.update()
    progress.close()
    for writer in writers.values():
        writer.close()
    _check_not_empty(data, source_stats, mixture)
    _check_enough(data, writers)
    DatasetDict({split: Dataset.from_file(str(w.path)) for split, w in writers.items()}).save_to_disk(str(out_dir))
    held_out.close(out_dir / HELD_OUT, [s.name for s in source_stats])
    return _report(data, source_stats, mixture, writers, dedup, encoder)


def tokenized_documents(
    documents: Iterator[str],
    encoder: CorpusEncoder,
    batch_size: int,
    validation_fraction: float,
    held_out: Callable[[str], None] = lambda text: None,
) -> Iterator[tuple[bool, list[int]]]:
    """(is validation, token ids) per document, encoded a batch at a time on all cores; the text of each
    validation document the mixture takes goes to `held_out`. No batch is read ahead: with several sources,
    which copy of a cross-source duplicate is kept, and the documents each source reports read, follow the
    order the mixture takes documents in."""
    while batch := list(islice(documents, batch_size)):
        for text, ids in zip(batch, encoder.encode_batch(batch)):
            validation = is_validation_document(text, validation_fraction)
            if validation:
                held_out(str(text))
            yield validation, ids


class HeldOutSample:
    """The first HELD_OUT_CHARS characters of held-out documents of every source, as JSONL lines
    {"source": name, "text": document}: text the model never trains on, for building downstream tasks."""

    def __init__(self, path: Path, sources: int):
        self.path = path
        self.texts: list[list[str]] = [[] for _ in range(sources)]
        self.chars = [0] * sources

    def sink(self, source: int) -> Callable[[str], None]:
        def keep(text: str) -> None:
            if self.chars[source] < HELD_OUT_CHARS:
                self.texts[source].append(text)
                self.chars[source] += len(text)

        return keep

    def close(self, out_path: Path, names: list[str]) -> None:
        with open(out_path, "w", encoding="utf-8") as f:
            for name, texts in zip(names, self.texts):
                for text in texts:
                    f.write(json.dumps({"source": name, "text": text}, ensure_ascii=False) + "\n")


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


class SplitWriter:
    """Packs one split's documents into blocks and appends them to an Arrow file, a batch at a time."""

    def __init__(
        self, path: Path, seq_len: int, eos_id: int, document_masking: bool, batch_size: int, source_column: bool
    ):
        self.path = path
        self.packer = Packer(seq_len, eos_id)
        self.document_masking = document_masking
        self.batch_size = batch_size
        self.tags = TagPacker(seq_len) if source_column else None
        self.features = split_features(seq_len, document_masking, source_column)
        self.writer = pa.ipc.new_stream(str(path), self.features.arrow_schema)
        self.digest = hashlib.sha256()
        self.tokens_by_source: Counter = Counter()
        self._pending: list[list[int]] = []
        self._sources: list[int] = []

    def add(self, source: int, ids: list[int]) -> None:
        self._pending.append(ids)
        self._sources.append(source)
        self.tokens_by_source[source] += len(ids) + 1
        if len(self._pending) == self.batch_size:
            self._flush()

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def stats(self) -> dict:
        return {
            "documents": self.packer.documents,
            "tokens": self.packer.tokens,
            "blocks": self.packer.blocks,
            "dropped_tail_tokens": self.packer.remainder_tokens,
        }

    def _flush(self) -> None:
        if not self._pending:
            return
        # np.fromiter over the flattened ids is ~4x faster than pa.array on the list of lists (measured).
        lengths = np.fromiter(map(len, self._pending), dtype=np.int32, count=len(self._pending))
        flat = np.fromiter(chain.from_iterable(self._pending), dtype=np.int32, count=int(lengths.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)])
        documents = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        sources = np.array(self._sources, dtype=np.int16)
        self._pending, self._sources = [], []
        if self.document_masking:
            blocks, positions = self.packer.add_with_positions(documents)
            columns = {"input_ids": blocks, "position_ids": positions}
        else:
            columns = {"input_ids": self.packer.add(documents)}
        if self.tags is not None:
            columns["source"] = self.tags.add(sources, lengths)
        if len(columns["input_ids"]) == 0:
            return
        arrays = []
        for name, array in columns.items():
            if name != "source":  # the data fingerprint checked on resume: what is trained on, as before tags existed
                self.digest.update(array.tobytes())
            arrays.append(pa.FixedSizeListArray.from_arrays(array.reshape(-1), array.shape[1]))
        self.writer.write_batch(pa.record_batch(arrays, schema=self.features.arrow_schema))


def split_features(seq_len: int, document_masking: bool, source_column: bool = False) -> Features:
    block = List(Value("int32"), length=seq_len)
    features = {"input_ids": block, "position_ids": block} if document_masking else {"input_ids": block}
    if source_column:
        features["source"] = List(Value("int16"), length=seq_len)
    return Features(features)


def _check_enough(data: DataConfig, writers: dict[str, SplitWriter]) -> None:
    """Each split must fill at least one block; if one does not, say by how much, and what would fill it."""
    tokens = {split: writer.packer.tokens for split, writer in writers.items()}
    share = {"train": 1 - data.validation_fraction, "validation": data.validation_fraction}
    for split, writer in writers.items():
        if writer.packer.blocks:
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
        raise UserError(
            f"data: the {split} split has {writer.packer.documents} document(s), {tokens[split]:,} tokens: not enough "
            f"for one block of data.seq_len={data.seq_len} tokens; {'; or '.join(fixes)}"
        )


def _check_not_empty(data: DataConfig, source_stats: list[SourceStats], mixture: WeightedMixture) -> None:
    """A source that gives no document ends the mixture at once: say which one and why."""
    read = sum(s.corpus.documents for s in source_stats)
    if read == 0:
        skipped = Counter()
        for s in source_stats:
            skipped.update(s.corpus.skipped)
        raise UserError(
            f"data.sources: the corpus is empty: no documents were read ({_skips(skipped)}); "
            "check the paths and text_column of data.sources"
        )
    i = mixture.exhausted
    if i is None or mixture.items[i] > 0:
        return
    stats, source = source_stats[i], data.sources[i]
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
    mixture: WeightedMixture,
    writers: dict[str, SplitWriter],
    dedup: Deduplicator | None,
    encoder: CorpusEncoder,
) -> dict:
    total_weight = sum(s.weight for s in data.sources)
    shares = mixture.shares()
    sources = []
    for i, (source, stats) in enumerate(zip(data.sources, source_stats)):
        sources.append(
            {
                "name": stats.name,
                "kind": source.kind,
                "weight": source.weight,
                "target_token_share": round(source.weight / total_weight, 4),
                "token_share": round(shares[i], 4),
                "documents": mixture.items[i],
                "tokens": mixture.taken[i],
                "ran_out": mixture.exhausted == i,
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
    ended_by = source_stats[mixture.exhausted].name if mixture.exhausted is not None else None
    digest = hashlib.sha256()
    for writer in writers.values():
        digest.update(writer.digest.digest())
    return {
        "documents": {
            "read": sum(s.corpus.documents for s in source_stats),
            "kept": sum(mixture.items),
            "skipped": dict(skipped) | ({"too_short_after_cleaning": too_short} if too_short else {}),
            "skip_examples": examples,
        },
        "sources": sources,
        "mixture": {"ended_when_source_ran_out": ended_by},
        "filters": {
            "removed": dict(filtered),
            "boilerplate_lines_removed": sum(s.boilerplate_lines_removed for s in source_stats),
        },
        "dedup": (dedup.describe() if dedup else {"exact": False, "near": False})
        | {
            "exact_duplicates": sum(s.duplicates["exact_duplicate"] for s in source_stats),
            "near_duplicates": sum(s.duplicates["near_duplicate"] for s in source_stats),
        },
        "encoder": encoder.stats(),
        "columns": list(split_features(data.seq_len, data.document_masking)),
        "validation_columns": list(split_features(data.seq_len, data.document_masking, source_column=True)),
        "splits": {split: writer.stats() for split, writer in writers.items()},
        "notes": [f"{s.name}: {s.validation_note}" for s in source_stats if s.validation_note],
        "content_fingerprint": digest.hexdigest(),
    }


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
