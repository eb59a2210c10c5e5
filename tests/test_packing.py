import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from lmtrain.data.packing import Packer, document_labels, join_with_eos  # noqa: E402

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
    batches = [docs[i : i + batch_size] for i in range(0, len(docs), batch_size)]
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
    assert blocks.reshape(-1).tolist() == expected_stream[: blocks.size]


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


# ---------------------------------------------------------------- document-aware packing


def expected_positions(stream: list[int], seq_len: int) -> list[int]:
    """Positions by the definition, one token at a time: 0 at every block start and after every eos."""
    positions, position = [], 0
    for i, token in enumerate(stream):
        if i % seq_len == 0:
            position = 0
        positions.append(position)
        position = 0 if token == EOS else position + 1
    return positions


def test_positions_small_example_by_hand():
    packer = Packer(4, EOS)
    blocks, positions = packer.add_with_positions([[1, 2, 3], [4], [5, 6, 7, 8, 9]])
    # stream: 1 2 3 eos | 4 eos 5 6 | 7 8 9 eos   (the third document continues into the last block)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 0, 5, 6], [7, 8, 9, 0]]
    assert positions.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1], [0, 1, 2, 3]]


@pytest.mark.parametrize("seq_len", [8, 64])
def test_positions_match_the_definition_across_batches(seq_len):
    docs = random_documents(300, seed=seq_len)
    packer = Packer(seq_len, EOS)
    pieces = [packer.add_with_positions(docs[i : i + 7]) for i in range(0, len(docs), 7)]
    blocks = np.concatenate([b for b, _ in pieces])
    positions = np.concatenate([p for _, p in pieces])
    stream = [t for doc in docs for t in doc + [EOS]][: blocks.size]
    assert blocks.reshape(-1).tolist() == stream  # positions do not change the blocks
    assert positions.dtype == np.int32
    assert positions.reshape(-1).tolist() == expected_positions(stream, seq_len)


def test_document_labels_mask_only_documents_starting_inside_a_block():
    input_ids = torch.tensor([[1, 2, 3, 0, 4, 0, 0, 5], [6, 7, 0, 8, 9, 0, 1, 1]])
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 0], [0, 1, 2, 0, 1, 2, 0, 1]])
    labels = document_labels(input_ids, position_ids)
    assert labels.tolist() == [[1, 2, 3, 0, -100, 0, -100, -100], [6, 7, 0, -100, 9, 0, -100, 1]]
    assert input_ids[0, 4] == 4  # the inputs are not modified


def tiny_llama(attn_implementation: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config).eval()


def segments(position_row: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of positions counting up from 0 in one block."""
    starts = [i for i, p in enumerate(position_row) if p == 0] + [len(position_row)]
    return list(zip(starts, starts[1:]))


@pytest.fixture(scope="module")
def packed_blocks():
    docs = [d for d in random_documents(60, seed=3) if d]
    blocks, positions = Packer(48, EOS).add_with_positions(docs)
    assert max(len(segments(row)) for row in positions.tolist()) >= 3  # several documents share a block
    return torch.tensor(blocks, dtype=torch.long), torch.tensor(positions, dtype=torch.long)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_document_logits_in_a_packed_block_equal_logits_alone(attn_implementation, packed_blocks):
    model = tiny_llama(attn_implementation)
    input_ids, position_ids = packed_blocks
    with torch.no_grad():
        packed = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        plain = model(input_ids=input_ids, use_cache=False).logits  # ordinary packing, as a control
        checked = leaked = 0
        for row in range(len(input_ids)):
            for start, end in segments(position_ids[row].tolist()):
                alone = model(input_ids=input_ids[row : row + 1, start:end]).logits[0]
                torch.testing.assert_close(packed[row, start:end], alone, atol=1e-5, rtol=1e-4)
                checked += 1
                leaked += start > 0 and not torch.allclose(plain[row, start:end], alone, atol=1e-3)
    assert checked > len(input_ids) and leaked > 0  # the control does see other documents


def test_document_masking_needs_use_cache_false(packed_blocks):
    """transformers only builds the per-document mask without a KV cache; the config default
    (use_cache=True) creates one even in training mode, and documents then attend to each other."""
    model = tiny_llama("sdpa").train()
    input_ids, position_ids = packed_blocks
    row = next(r for r in range(len(input_ids)) if len(segments(position_ids[r].tolist())) > 1)
    start, end = segments(position_ids[row].tolist())[1]
    with torch.no_grad():
        alone = model(input_ids=input_ids[row : row + 1, start:end]).logits[0]
        with_cache = model(input_ids=input_ids[row : row + 1], position_ids=position_ids[row : row + 1]).logits[0]
        without = model(
            input_ids=input_ids[row : row + 1], position_ids=position_ids[row : row + 1], use_cache=False
        ).logits[0]
    assert not torch.allclose(with_cache[start:end], alone, atol=1e-3)
    torch.testing.assert_close(without[start:end], alone, atol=1e-5, rtol=1e-4)


def test_block_rows_reads_the_same_rows_as_the_dataset():
    import datasets

    from lmtrain.training.pretrain import BlockRows

    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32"), length=8),
            "position_ids": datasets.Sequence(datasets.Value("int32"), length=8),
        }
    )
    parts = [
        datasets.Dataset.from_dict(
            {"input_ids": [[start + i] * 8 for i in range(n)], "position_ids": [list(range(8))] * n}, features=features
        )
        for start, n in ((0, 5), (100, 3), (200, 7))
    ]
    blocks = datasets.concatenate_datasets(parts)  # three Arrow chunks
    rows = BlockRows(blocks)
    assert rows.views is not None  # the fast path is the one under test
    indices = np.array([14, 0, 5, 7, 8, 4, 14, 9])
    fast = rows[indices]
    assert [r[0] for r in fast["input_ids"]] == [206, 0, 100, 102, 200, 4, 206, 201]
    expected = blocks[indices.tolist()]
    for name in ("input_ids", "position_ids"):
        assert np.array_equal(fast[name], np.asarray(expected[name]))
    selected = BlockRows(blocks.select([3, 1]))  # an indices mapping: read through the Dataset
    assert selected.views is None and selected[np.array([0])]["input_ids"] == [[3] * 8]
    with pytest.raises(IndexError):
        rows[np.array([15])]
