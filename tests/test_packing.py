import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from lmtrain.packing import Packer, join_with_eos  # noqa: E402

EOS = 0


def random_documents(n: int, seed: int) -> list[list[int]]:
    """Documents of ids 1..999 (never the eos id), some empty, some longer than a block."""
    rng = random.Random(seed)
    return [[rng.randint(1, 999) for _ in range(rng.choice([0, 1, 3, 7, 20, 50]))] for _ in range(n)]


def pack_all(batches, seq_len: int) -> tuple[np.ndarray, Packer]:
    packer = Packer(seq_len, EOS)
    blocks = [packer.add(batch) for batch in batches]
    return np.concatenate(blocks) if blocks else np.empty((0, seq_len), np.int32), packer


def test_small_example_by_hand():
    blocks, packer = pack_all([[[1, 2, 3], [4], [5, 6, 7, 8, 9]]], seq_len=4)
    # stream: 1 2 3 eos 4 eos 5 6 7 8 9 eos
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 0, 5, 6], [7, 8, 9, 0]]
    assert packer.remainder_tokens == 0
    assert (packer.documents, packer.tokens, packer.blocks) == (3, 12, 3)


def test_remainder_is_carried_across_batches():
    one_batch, _ = pack_all([[[1, 2, 3], [4], [5, 6, 7, 8, 9]]], seq_len=4)
    # Each batch alone is shorter than a block; nothing may be lost at batch boundaries.
    per_document, packer = pack_all([[[1, 2, 3]], [[4]], [[5, 6, 7, 8, 9]]], seq_len=4)
    assert per_document.tolist() == one_batch.tolist()
    assert packer.remainder_tokens == 0


def test_final_partial_block_is_dropped_and_reported():
    blocks, packer = pack_all([[[1, 2, 3, 4, 5]], [[6, 7]]], seq_len=4)
    assert blocks.tolist() == [[1, 2, 3, 4], [5, 0, 6, 7]]
    assert packer.remainder_tokens == 1  # the eos after the last document


@pytest.mark.parametrize("seq_len", [8, 64, 257])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_invariants_on_random_documents(seq_len, batch_size):
    docs = random_documents(300, seed=seq_len + batch_size)
    batches = [docs[i:i + batch_size] for i in range(0, len(docs), batch_size)]
    blocks, packer = pack_all(batches, seq_len)

    expected_stream = [t for doc in docs for t in doc + [EOS]]  # built without the code under test
    total = len(expected_stream)
    assert blocks.dtype == np.int32
    assert blocks.shape == (total // seq_len, seq_len)
    assert packer.tokens == total
    assert packer.blocks * seq_len + packer.remainder_tokens == total
    assert packer.remainder_tokens == total % seq_len < seq_len
    assert packer.documents == len(docs)
    # The blocks are exactly the stream, in order: eos after every document, no padding, nothing lost.
    assert blocks.reshape(-1).tolist() == expected_stream[:blocks.size]


def test_eos_separates_every_two_documents():
    docs = [[5, 5], [6], [7, 7, 7], [8]]
    blocks, _ = pack_all([docs], seq_len=3)
    stream = blocks.reshape(-1).tolist()
    assert stream == [5, 5, 0, 6, 0, 7, 7, 7, 0]
    assert stream.count(EOS) == 3  # the 4th document's tail (8, eos) is the dropped partial block


def test_output_is_deterministic():
    docs = random_documents(200, seed=1)
    first, _ = pack_all([docs[:50], docs[50:]], seq_len=32)
    second, _ = pack_all([docs[:50], docs[50:]], seq_len=32)
    assert np.array_equal(first, second)


def test_arrow_inputs_match_python_lists():
    docs = random_documents(100, seed=2)
    from_lists, _ = pack_all([docs], seq_len=16)
    list_array = pa.array(docs, type=pa.list_(pa.int32()))
    from_arrow, _ = pack_all([list_array], seq_len=16)
    sliced = pa.chunked_array([list_array.slice(0, 40), list_array.slice(40)])  # offsets not starting at 0
    from_chunks, _ = pack_all([sliced], seq_len=16)
    assert np.array_equal(from_lists, from_arrow)
    assert np.array_equal(from_lists, from_chunks)


def test_empty_batch_and_empty_documents():
    assert join_with_eos([], EOS).tolist() == []
    assert join_with_eos([[], [3], []], EOS).tolist() == [0, 3, 0, 0]
    blocks, packer = pack_all([[]], seq_len=4)
    assert blocks.shape == (0, 4) and packer.remainder_tokens == 0
