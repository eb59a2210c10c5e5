"""Compact token shards: per source and split, the documents' token ids back to back, each followed by eos.

On disk (format version 5):

    data.dir/sources/<i>/<split>/<task>.bin     raw little-endian uint16 ids (uint32 when the vocabulary
                                                 exceeds 65,536), no header: np.memmap reads them as they are

A source's split is the concatenation of its .bin files in name order, cut into blocks of seq_len tokens
(the last partial block is left out and reported). Nothing else is stored per token: 2 bytes per token for a
vocabulary up to 65,536. Document boundaries are derived when a block is read: positions restart at 0 at the
block's first token and after every eos, exactly as lmtrain/data/packing.py's Packer.add_with_positions stored
them in format 4 (tests/test_shards.py checks the two agree). A document never holds the eos id (the encoder
does not produce special tokens), so the eos marks ends and nothing else.

Reading is O(1) per block on any number of ranks: every .bin is memory-mapped (the OS pages in what is read),
and a block is at most two slices (it may straddle two files).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import numpy as np

SHARD_SUFFIX = ".bin"
UINT16_VOCAB = 2**16


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary ≤ 65,536), else uint32."""
    return np.dtype("<u2") if vocab_size <= UINT16_VOCAB else np.dtype("<u4")


class ShardWriter:
    """Appends documents (ids + eos) to one .bin file; the file appears under its name only when closed, so a
    killed writer leaves no shard a reader could take for finished. Tracks documents, tokens and a sha256 of
    the bytes written (the content fingerprint)."""

    def __init__(self, path: Path, dtype: np.dtype, eos_id: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "wb")
        self.dtype = dtype
        self.eos_id = eos_id
        self.documents = 0
        self.tokens = 0
        self.digest = hashlib.sha256()

    def add(self, documents: list[list[int]]) -> None:
        """Write a batch of tokenized documents, each followed by eos."""
        if not documents:
            return
        lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
        stream = np.full(int(lengths.sum()) + len(documents), self.eos_id, dtype=self.dtype)
        is_token = np.ones(len(stream), dtype=bool)
        is_token[np.cumsum(lengths + 1) - 1] = False
        ids = itertools.chain.from_iterable(documents)  # C-level iteration: 1.8x a generator expression's speed
        stream[is_token] = np.fromiter(ids, dtype=np.int64, count=int(lengths.sum()))
        data = stream.tobytes()
        self._file.write(data)
        self.digest.update(data)
        self.documents += len(documents)
        self.tokens += len(stream)

    def add_stream(self, ids: np.ndarray, documents: int) -> None:
        """Write ids that already hold their eos tokens (`documents` of them end in this stream)."""
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self._file.write(data)
        self.digest.update(data)
        self.documents += documents
        self.tokens += len(ids)

    def close(self) -> None:
        self._file.close()
        os.replace(self._partial, self.path)


class TokenStream:
    """The concatenation of a directory's .bin shards, memory-mapped; `read(start, length)` copies a slice."""

    def __init__(self, directory: Path, dtype: np.dtype):
        self.files = sorted(Path(directory).glob(f"*{SHARD_SUFFIX}")) if Path(directory).is_dir() else []
        self.maps = [np.memmap(f, dtype=dtype, mode="r") for f in self.files if f.stat().st_size]
        self.starts = np.cumsum([0, *map(len, self.maps)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        offset = start - int(self.starts[first])
        piece = self.maps[first][offset : offset + length]
        if len(piece) == length:
            return np.array(piece)
        pieces = [piece]  # the block straddles shards
        while sum(map(len, pieces)) < length:
            first += 1
            pieces.append(self.maps[first][: length - sum(map(len, pieces))])
        return np.concatenate(pieces)


def derive_positions(blocks: np.ndarray, eos_id: int) -> np.ndarray:
    """Per-document position ids of (n, seq_len) blocks: 0 at each block's first token and after every eos,
    counting up inside a document (the eos belongs to the document it ends)."""
    n, seq_len = blocks.shape
    is_start = np.zeros((n, seq_len), dtype=bool)
    is_start[:, 0] = True
    is_start[:, 1:] = blocks[:, :-1] == eos_id
    index = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (n, seq_len))
    return (index - np.maximum.accumulate(np.where(is_start, index, 0), axis=1)).astype(np.int32)


class PackedRows:
    """`rows[indices]` over the blocks of several sources' streams, numbered source after source: the reading
    interface of the trainer (a dict of (len(indices), seq_len) arrays: input_ids int32, with `positions` also
    position_ids derived from the eos tokens, with `sources` also `source`, the block's source index per token)."""

    def __init__(self, streams: list[TokenStream], seq_len: int, eos_id: int, positions: bool, sources: bool = False):
        self.streams, self.seq_len, self.eos_id = streams, seq_len, eos_id
        self.positions, self.sources = positions, sources
        self.blocks_per_source = [len(s) // seq_len for s in streams]
        self.offsets = np.cumsum([0, *self.blocks_per_source])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def source_of(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, indices, side="right") - 1

    def __getitem__(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"block index out of range: {len(self)} blocks")
        source = self.source_of(indices)
        blocks = np.empty((len(indices), self.seq_len), dtype=np.int32)
        for row, (s, i) in enumerate(zip(source, indices)):
            blocks[row] = self.streams[s].read(int(i - self.offsets[s]) * self.seq_len, self.seq_len)
        rows = {"input_ids": blocks}
        if self.positions:
            rows["position_ids"] = derive_positions(blocks, self.eos_id)
        if self.sources:
            rows["source"] = np.repeat(source[:, None], self.seq_len, axis=1).astype(np.int16)
        return rows


def source_dir(data_dir: str | Path, source: int, split: str) -> Path:
    return Path(data_dir) / "sources" / f"{source:03d}" / split


def stream_digest(stream: TokenStream) -> str:
    """sha256 of a split's token bytes, shard after shard: equal whatever the number of shards it was cut into."""
    digest = hashlib.sha256()
    for m in stream.maps:
        digest.update(m.tobytes())
    return digest.hexdigest()
