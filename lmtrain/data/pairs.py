"""Next-sentence-prediction pairs (BERT): `[CLS] A [SEP] B [SEP]` rows built from the documents data prep has
cleaned, filtered, deduplicated and split, in place of packed blocks.

As BERT's create_pretraining_data.py: each document is walked from its start in chunks of the target length
(seq_len - 3 tokens, or with probability objective.short_seq_prob a random length from 2, so the model also sees
short inputs); a chunk is cut at a random point into A and B. With probability 1/2, B is the rest of the chunk
(the true continuation, label 0 = "is next", transformers' convention); otherwise B is as many tokens from a
random place in another document (label 1), and the rest of the chunk goes back to the document for the next
pair. BERT cut at sentence ends; this pipeline keeps no sentence boundaries (code, Chinese and English alike), so
A and B are cut between tokens. The other document is drawn from the current and the previous batch of
data.batch_size documents of the same split (BERT draws from the whole corpus, held in memory): memory stays one
batch or two, whatever the corpus. transformers has no pair builder any more (TextDatasetForNextSentencePrediction
went in v5), hence this module.

Pairs are built once, after data prep has written every source's documents (`write_pairs`, reading the shards
back): data.dir/pairs/<split>/ is a `datasets` directory of each source's pairs, source after source, and the
manifest's `pairs` section says how many each source gave, so the sampler applies the mixture weights to pairs as
it does to packed blocks.

Rows: input_ids and token_type_ids (0 for [CLS] A [SEP], 1 for B [SEP]), padded to seq_len with the pad token,
and next_sentence_label, all int32 fixed-length columns (the label a list of one), so `BlockRows` reads them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, List, Value, concatenate_datasets, load_from_disk

from lmtrain.data.shards import TokenStream, source_dir
from lmtrain.errors import UserError

PAIRS_DIR = "pairs"

IS_NEXT, NOT_NEXT = 0, 1
MIN_DOCUMENT_TOKENS = 2
"""A document gives pairs if it has at least one token for A and one for B."""


@dataclass
class PairCounts:
    """What a PairWriter has seen and written (the manifest's `pairs` section)."""

    documents: int = 0
    usable_documents: int = 0
    """Documents of at least MIN_DOCUMENT_TOKENS tokens."""
    tokens: int = 0
    """Tokens of the pairs, [CLS] and [SEP] included, padding not."""
    pairs: int = 0


@dataclass(frozen=True)
class PairSpec:
    seq_len: int
    cls_id: int
    sep_id: int
    pad_id: int
    short_seq_prob: float


def pair_features(seq_len: int) -> Features:
    block = List(Value("int32"), length=seq_len)
    return Features(
        {"input_ids": block, "token_type_ids": block, "next_sentence_label": List(Value("int32"), length=1)}
    )


def build_pairs(
    documents: list[np.ndarray], others: list[np.ndarray], spec: PairSpec, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(input_ids, token_type_ids, label) for every pair of `documents` (unpadded); B segments of "not next"
    pairs come from another document of `documents` or of `others` (the previous batch)."""
    pool = [d for d in documents + others if len(d) >= 1]
    pairs = []
    max_tokens = spec.seq_len - 3
    for doc in documents:
        position = 0
        while len(doc) - position >= MIN_DOCUMENT_TOKENS:
            target = max_tokens if rng.random() >= spec.short_seq_prob else int(rng.integers(2, max_tokens + 1))
            chunk = doc[position : position + target]
            if len(chunk) < MIN_DOCUMENT_TOKENS:
                break
            a_end = int(rng.integers(1, len(chunk)))
            other = _other_document(pool, doc, rng) if rng.random() < 0.5 else None
            if other is None:
                a, b, label = chunk[:a_end], chunk[a_end:], IS_NEXT
                position += len(chunk)
            else:
                b_len = max(1, len(chunk) - a_end)
                start = int(rng.integers(0, max(1, len(other) - b_len + 1)))
                a, b, label = chunk[:a_end], other[start : start + b_len], NOT_NEXT
                position += a_end  # the unused rest of the chunk is the start of the next pair, as BERT
            pairs.append(_pair(a, b, label, spec))
    return pairs


def _other_document(pool: list[np.ndarray], doc: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A random document of `pool` other than `doc` (None if there is none: the pair is then a true one)."""
    if len(pool) < 2:
        return None
    while (other := pool[int(rng.integers(len(pool)))]) is doc:
        pass
    return other


def _pair(a: np.ndarray, b: np.ndarray, label: int, spec: PairSpec) -> tuple[np.ndarray, np.ndarray, int]:
    ids = np.concatenate([[spec.cls_id], a, [spec.sep_id], b, [spec.sep_id]]).astype(np.int32)
    types = np.concatenate([np.zeros(len(a) + 2, np.int32), np.ones(len(b) + 1, np.int32)])
    return ids, types, label


class PairWriter:
    """Builds one source's pairs of one split, a batch of documents at a time, and appends them to an Arrow file."""

    def __init__(self, path: Path, spec: PairSpec, batch_size: int, seed: int, split: str, source: int):
        self.path, self.spec, self.batch_size, self.split, self.source = path, spec, batch_size, split, source
        self.rng = np.random.default_rng([seed, source, int.from_bytes(split.encode(), "little")])
        self.features = pair_features(spec.seq_len)
        self.writer = pa.ipc.new_stream(str(path), self.features.arrow_schema)
        self.digest = hashlib.sha256()
        self.counts = PairCounts()
        self._pending: list[np.ndarray] = []
        self._previous: list[np.ndarray] = []

    def add(self, ids: np.ndarray) -> None:
        self.counts.documents += 1
        if len(ids) >= MIN_DOCUMENT_TOKENS:
            self.counts.usable_documents += 1
            self._pending.append(np.asarray(ids, dtype=np.int32))
        if len(self._pending) == self.batch_size:
            self._flush()

    def close(self) -> None:
        self._flush()
        self.writer.close()
        c = self.counts
        if c.usable_documents < 2 or not c.pairs:
            raise UserError(
                f"data: next-sentence pairs need documents of at least {MIN_DOCUMENT_TOKENS} tokens, two of them at "
                f"least, in each split of each source; data.sources.{self.source}'s {self.split} split has "
                f"{c.usable_documents} usable of {c.documents} "
                "document(s). Add longer documents to data.sources, raise data.validation_fraction, or train "
                "without objective.nsp"
            )

    def stats(self) -> dict:
        c = self.counts
        return {"documents": c.documents, "usable_documents": c.usable_documents, "tokens": c.tokens,
                "pairs": c.pairs, "sha256": self.digest.hexdigest()}  # fmt: skip

    def _flush(self) -> None:
        if not self._pending:
            return
        pairs = build_pairs(self._pending, self._previous, self.spec, self.rng)
        self._previous, self._pending = self._pending, []
        if not pairs:
            return
        n, width = len(pairs), self.spec.seq_len
        ids = np.full((n, width), self.spec.pad_id, dtype=np.int32)
        types = np.zeros((n, width), dtype=np.int32)
        for row, (pair_ids, pair_types, _) in enumerate(pairs):
            ids[row, : len(pair_ids)], types[row, : len(pair_types)] = pair_ids, pair_types
        labels = np.array([[label] for _, _, label in pairs], dtype=np.int32)
        self.counts.pairs += n
        self.counts.tokens += sum(len(p[0]) for p in pairs)
        arrays = []
        for array in (ids, types, labels):
            self.digest.update(array.tobytes())
            arrays.append(pa.FixedSizeListArray.from_arrays(array.reshape(-1), array.shape[1]))
        self.writer.write_batch(pa.record_batch(arrays, schema=self.features.arrow_schema))


def documents_of(stream: TokenStream, eos_id: int, chunk_tokens: int = 1 << 22) -> Iterator[np.ndarray]:
    """The documents of a prepared token stream, in order, without their eos; read a chunk at a time."""
    rest = np.empty(0, dtype=np.int32)
    for start in range(0, len(stream), chunk_tokens):
        tokens = np.concatenate([rest, stream.read(start, min(chunk_tokens, len(stream) - start)).astype(np.int32)])
        ends = np.flatnonzero(tokens == eos_id)
        begin = 0
        for end in ends.tolist():
            yield tokens[begin:end]
            begin = end + 1
        rest = tokens[begin:]
    if len(rest):
        yield rest


def write_pairs(data_dir: Path, sources: int, splits: tuple[str, ...], dtype: np.dtype, eos_id: int, spec: PairSpec,
                batch_size: int, seed: int) -> dict[str, list[dict]]:  # fmt: skip
    """Every source's pairs of every split into data_dir/pairs/<split>/, source after source; per split, each
    source's counts (the manifest's `pairs` section)."""
    counts = {}
    (data_dir / PAIRS_DIR).mkdir()
    for split in splits:
        parts, counts[split] = [], []
        for source in range(sources):
            writer = PairWriter(
                data_dir / PAIRS_DIR / f"{split}-{source:03d}.arrow", spec, batch_size, seed, split, source
            )
            for document in documents_of(TokenStream(source_dir(data_dir, source, split), dtype), eos_id):
                writer.add(document)
            writer.close()
            counts[split].append(writer.stats())
            parts.append(Dataset.from_file(str(writer.path)))
        concatenate_datasets(parts).save_to_disk(str(data_dir / PAIRS_DIR / split))
        for source in range(sources):
            (data_dir / PAIRS_DIR / f"{split}-{source:03d}.arrow").unlink()
    return counts


def read_pairs(data_dir: str | Path, split: str) -> Dataset:
    """One split's pairs, memory-mapped, numpy-formatted."""
    return load_from_disk(str(Path(data_dir) / PAIRS_DIR / split)).with_format("numpy")
