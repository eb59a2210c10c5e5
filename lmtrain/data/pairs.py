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

Rows: input_ids and token_type_ids (0 for [CLS] A [SEP], 1 for B [SEP]), padded to seq_len with the pad token,
and next_sentence_label, all int32 fixed-length columns (the label a list of one), so `BlockRows` reads them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Features, List, Value

from lmtrain.errors import UserError

IS_NEXT, NOT_NEXT = 0, 1
MIN_DOCUMENT_TOKENS = 2
"""A document gives pairs if it has at least one token for A and one for B."""


@dataclass
class PairCounts:
    """What `_check_enough` and the manifest read from a split writer's packer: documents, tokens and rows."""

    documents: int = 0
    tokens: int = 0
    """Tokens of the pairs, [CLS] and [SEP] included, padding not."""
    blocks: int = 0
    """Pairs written."""
    usable_documents: int = 0
    remainder_tokens: int = 0


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
    """Builds one split's pairs a batch of documents at a time and appends them to an Arrow file; the same
    interface as prepare.SplitWriter (add, close, stats, digest, packer counts)."""

    def __init__(self, path: Path, spec: PairSpec, batch_size: int, seed: int, split: str):
        self.path, self.spec, self.batch_size, self.split = path, spec, batch_size, split
        self.rng = np.random.default_rng([seed, int.from_bytes(split.encode(), "little")])
        self.features = pair_features(spec.seq_len)
        self.writer = pa.ipc.new_stream(str(path), self.features.arrow_schema)
        self.digest = hashlib.sha256()
        self.packer = PairCounts()
        self.tokens_by_source: dict[int, int] = {}
        self._pending: list[np.ndarray] = []
        self._previous: list[np.ndarray] = []

    def add(self, source: int, ids: list[int]) -> None:
        self.packer.documents += 1
        self.tokens_by_source[source] = self.tokens_by_source.get(source, 0) + len(ids)
        if len(ids) >= MIN_DOCUMENT_TOKENS:
            self.packer.usable_documents += 1
            self._pending.append(np.asarray(ids, dtype=np.int32))
        if len(self._pending) == self.batch_size:
            self._flush()

    def close(self) -> None:
        self._flush()
        self.writer.close()
        c = self.packer
        if c.usable_documents < 2 or not c.blocks:
            raise UserError(
                f"data: next-sentence pairs need documents of at least {MIN_DOCUMENT_TOKENS} tokens, two of them at "
                f"least, in each split; the {self.split} split has {c.usable_documents} usable of {c.documents} "
                "document(s). Add longer documents to data.sources, raise data.validation_fraction, or train "
                "without objective.nsp"
            )

    def stats(self) -> dict:
        c = self.packer
        return {"documents": c.documents, "usable_documents": c.usable_documents, "tokens": c.tokens,
                "pairs": c.blocks, "blocks": c.blocks, "dropped_tail_tokens": 0}  # fmt: skip

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
        self.packer.blocks += n
        self.packer.tokens += sum(len(p[0]) for p in pairs)
        arrays = []
        for array in (ids, types, labels):
            self.digest.update(array.tobytes())
            arrays.append(pa.FixedSizeListArray.from_arrays(array.reshape(-1), array.shape[1]))
        self.writer.write_batch(pa.record_batch(arrays, schema=self.features.arrow_schema))
