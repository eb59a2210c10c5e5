"""Packing: tokenized documents in, fixed-length training blocks out.

Every document is followed by the eos token, documents are concatenated across the whole
stream (a batch's leftover tokens are carried into the next batch, never thrown away), and
the stream is cut into blocks of exactly `seq_len` tokens. There is no padding: only the
final partial block is dropped, and its size is reported. All work is done on numpy arrays.

Document-aware packing (`document_positions=True`) also returns per-document position ids:
they restart at 0 at every document start and at every block start, and the eos belongs to
the document it ends. transformers' Llama reads a restart as a document boundary and builds a
block-diagonal causal mask from them (masking_utils.find_packed_sequence_indices, with sdpa and
eager attention, when it gets `position_ids`, no attention_mask and `use_cache=False`), so no
token attends to another document, and RoPE sees each document from position 0 as when it is
run alone. `document_labels` then stops the loss on a document's first token, whose prediction
would come from the previous document's eos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # only for annotations: data preparation need not import torch
    import torch

IGNORE_INDEX = -100
"""Label that transformers' cross-entropy skips."""

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
        return self._add(documents, with_positions=False)[0]

    def add_with_positions(self, documents: TokenBatch) -> tuple[np.ndarray, np.ndarray]:
        """Like `add`, and also the per-document position ids of the blocks (same shape, int32)."""
        return self._add(documents, with_positions=True)

    def _add(self, documents: TokenBatch, with_positions: bool) -> tuple[np.ndarray, np.ndarray | None]:
        joined = join_with_eos(documents, self.eos_id)
        self.documents += len(documents)
        self.tokens += len(joined)
        stream = np.concatenate([self._remainder, joined])
        num_blocks = len(stream) // self.seq_len
        cut = num_blocks * self.seq_len
        self._remainder = stream[cut:]
        self.blocks += num_blocks
        blocks = stream[:cut].reshape(num_blocks, self.seq_len)
        if not with_positions:
            return blocks, None
        # The remainder always starts a block, so block starts are multiples of seq_len in `stream`;
        # documents start at the stream's first token and after every eos.
        is_start = np.zeros(cut, dtype=bool)
        is_start[:: self.seq_len] = True
        is_start[np.flatnonzero(blocks.reshape(-1)[:-1] == self.eos_id) + 1] = True
        index = np.arange(cut, dtype=np.int32)
        positions = index - np.maximum.accumulate(np.where(is_start, index, 0))
        return blocks, positions.reshape(num_blocks, self.seq_len)

    @property
    def remainder_tokens(self) -> int:
        """Tokens waiting for the next batch; after the last batch, the dropped tail."""
        return len(self._remainder)


class TagPacker:
    """The per-token tags (a document's source index) of the blocks a `Packer` cuts from the same documents:
    each document's tag on its tokens and on the eos that ends it, carried across batches as the Packer
    carries its remainder, so that tag blocks and token blocks line up."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self._remainder = np.empty(0, dtype=np.int16)

    def add(self, tags: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Tags of a batch of documents of `lengths` tokens (eos not counted); the tag blocks completed so far."""
        stream = np.concatenate([self._remainder, np.repeat(np.asarray(tags, dtype=np.int16), np.asarray(lengths) + 1)])
        cut = len(stream) // self.seq_len * self.seq_len
        self._remainder = stream[cut:]
        return stream[:cut].reshape(-1, self.seq_len)


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


def document_labels(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Causal-LM labels for document-aware packed blocks, (batch, seq_len) like the inputs.

    A label equals its input id (the model shifts labels itself), except IGNORE_INDEX where a
    document starts after another one inside the block (position 0 anywhere but the first column):
    that token would be predicted from the hidden state of the previous document's eos."""
    labels = input_ids.clone()
    starts_after_another = position_ids == 0
    starts_after_another[:, 0] = False
    labels[starts_after_another] = IGNORE_INDEX
    return labels
