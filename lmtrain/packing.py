"""Packing: tokenized documents in, fixed-length training blocks out.

Every document is followed by the eos token, documents are concatenated across the whole
stream (a batch's leftover tokens are carried into the next batch, never thrown away), and
the stream is cut into blocks of exactly `seq_len` tokens. There is no padding: only the
final partial block is dropped, and its size is reported. All work is done on numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TokenBatch = pa.ListArray | pa.LargeListArray | pa.ChunkedArray | Sequence[Sequence[int]]
"""A batch of tokenized documents: an Arrow list column (zero-copy) or plain lists of ids."""


class Packer:
    """Packs batches of tokenized documents into (n, seq_len) int32 blocks, carrying the remainder."""

    def __init__(self, seq_len: int, eos_id: int):
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.documents = 0
        self.tokens = 0
        """Tokens entered, eos included: blocks * seq_len + remainder_tokens, always."""
        self.blocks = 0
        self._remainder = np.empty(0, dtype=np.int32)

    def add(self, documents: TokenBatch) -> np.ndarray:
        """Append a batch of documents; return the blocks completed so far, shape (n, seq_len)."""
        joined = join_with_eos(documents, self.eos_id)
        self.documents += len(documents)
        self.tokens += len(joined)
        stream = np.concatenate([self._remainder, joined])
        num_blocks = len(stream) // self.seq_len
        cut = num_blocks * self.seq_len
        self._remainder = stream[cut:]
        self.blocks += num_blocks
        return stream[:cut].reshape(num_blocks, self.seq_len)

    @property
    def remainder_tokens(self) -> int:
        """Tokens waiting for the next batch; after the last batch, the dropped tail."""
        return len(self._remainder)


def join_with_eos(documents: TokenBatch, eos_id: int) -> np.ndarray:
    """One int32 stream: each document's ids followed by eos."""
    docs = _as_list_array(documents)
    ids = docs.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    lengths = pc.list_value_length(docs).to_numpy(zero_copy_only=False)
    eos_positions = np.cumsum(lengths + 1) - 1
    stream = np.empty(len(ids) + len(lengths), dtype=np.int32)
    is_token = np.ones(len(stream), dtype=bool)
    is_token[eos_positions] = False
    stream[is_token] = ids
    stream[eos_positions] = eos_id
    return stream


def _as_list_array(documents: TokenBatch) -> pa.ListArray | pa.LargeListArray:
    if isinstance(documents, pa.ChunkedArray):
        return documents.combine_chunks()
    if isinstance(documents, (pa.ListArray, pa.LargeListArray)):
        return documents
    return pa.array(documents, type=pa.list_(pa.int32()))
