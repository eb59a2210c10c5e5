"""Compact shards: uint16 round trip, blocks across shard files, boundaries derived equal to the stored ones."""

import json

import numpy as np
import pytest

from lmtrain.data.packing import Packer, document_labels
from lmtrain.data.shards import PackedRows, ShardWriter, TokenStream, derive_positions, token_dtype
from lmtrain.errors import UserError

EOS = 0


def random_documents(count: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=rng.integers(1, 90)).tolist() for _ in range(count)]


def test_token_dtype_is_uint16_up_to_65536_then_uint32():
    assert token_dtype(65_536) == np.dtype("<u2") and token_dtype(64_000).itemsize == 2
    assert token_dtype(65_537) == np.dtype("<u4")


@pytest.mark.parametrize("vocab", [65_536, 100_000])
def test_round_trip_keeps_every_id_and_takes_2_bytes_per_token_when_it_fits(tmp_path, vocab):
    docs = random_documents(200, vocab, seed=1) + [[vocab - 1, 1, vocab - 1]]  # the largest id survives
    writer = ShardWriter(tmp_path / "s" / "00000.bin", token_dtype(vocab), EOS)
    writer.add(docs[:100])
    writer.add(docs[100:])
    writer.close()
    expected = [t for d in docs for t in [*d, EOS]]
    stream = TokenStream(tmp_path / "s", token_dtype(vocab))
    assert stream.read(0, len(stream)).tolist() == expected
    assert (tmp_path / "s" / "00000.bin").stat().st_size == len(expected) * (2 if vocab <= 65_536 else 4)
    assert writer.tokens == len(expected) and writer.documents == len(docs)


def test_blocks_straddling_shard_files_read_as_one_stream(tmp_path):
    docs = random_documents(120, 1000, seed=2)
    for i, part in enumerate((docs[:7], docs[7:8], docs[8:])):  # a tiny middle file: blocks span three files
        writer = ShardWriter(tmp_path / "s" / f"{i:05d}.bin", token_dtype(1000), EOS)
        writer.add(part)
        writer.close()
    flat = np.array([t for d in docs for t in [*d, EOS]])
    rows = PackedRows([TokenStream(tmp_path / "s", token_dtype(1000))], seq_len=50, eos_id=EOS, positions=False)
    assert len(rows) == len(flat) // 50
    picked = np.array([len(rows) - 1, 0, 3, 3])
    assert rows[picked]["input_ids"].tolist() == [flat[i * 50 : (i + 1) * 50].tolist() for i in picked]
    with pytest.raises(IndexError):
        rows[np.array([len(rows)])]


def test_derived_positions_and_labels_equal_what_format_4_stored(tmp_path):
    """Format 4 stored the Packer's position ids per token; format 5 derives them from the eos tokens. Same
    documents, same seq_len: the same position ids, hence the same document_labels."""
    docs = random_documents(300, 5000, seed=3)
    packer = Packer(seq_len=64, eos_id=EOS)
    stored_blocks, stored_positions = zip(*(packer.add_with_positions(docs[i : i + 37]) for i in range(0, 300, 37)))
    stored_blocks, stored_positions = np.concatenate(stored_blocks), np.concatenate(stored_positions)

    writer = ShardWriter(tmp_path / "s" / "00000.bin", token_dtype(5000), EOS)
    writer.add(docs)
    writer.close()
    rows = PackedRows([TokenStream(tmp_path / "s", token_dtype(5000))], seq_len=64, eos_id=EOS, positions=True)
    read = rows[np.arange(len(rows))]
    assert len(rows) == len(stored_blocks)
    assert np.array_equal(read["input_ids"], stored_blocks)
    assert np.array_equal(read["position_ids"], stored_positions)
    import torch

    ids, positions = torch.from_numpy(read["input_ids"]).long(), torch.from_numpy(read["position_ids"]).long()
    stored = document_labels(torch.from_numpy(stored_blocks).long(), torch.from_numpy(stored_positions).long())
    assert torch.equal(document_labels(ids, positions), stored)


def test_derive_positions_by_hand():
    blocks = np.array([[5, 6, EOS, 7, EOS, EOS, 8, 9], [1, EOS, 2, 3, 4, 5, 6, 7]])
    assert derive_positions(blocks, EOS).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 0, 1, 2, 3, 4, 5]]


def test_data_of_the_old_format_is_refused_with_prepare_again(tmp_path):
    from lmtrain.data.prepare import open_prepared

    manifest = {"inputs": {"format_version": 4, "seq_len": 64}, "sources": []}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"format 4.*prepare it again: python data_prep/prepare.py"):
        open_prepared(tmp_path, manifest, document_masking=True)


def test_flex_attention_on_derived_boundaries_gives_the_document_masked_sdpa_logits_and_loss(tmp_path):
    """The varlen path: blocks read from shards, boundaries derived from the eos tokens, through FlexAttention's
    document block mask (CPU forward; torch has no FlexAttention backward on CPU) equal sdpa's dense
    document-masked result (transformers builds a block-diagonal mask from the same position_ids)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmtrain.model.llama import llama_config
    from tests.test_speed import tiny_recipe

    writer = ShardWriter(tmp_path / "s" / "00000.bin", token_dtype(384), EOS)
    writer.add(random_documents(12, 384, seed=4))
    writer.close()
    rows = PackedRows([TokenStream(tmp_path / "s", token_dtype(384))], seq_len=48, eos_id=EOS, positions=True)
    read = rows[np.arange(2)]
    ids, positions = torch.from_numpy(read["input_ids"]).long(), torch.from_numpy(read["position_ids"]).long()
    assert (positions[:, 1:] == 0).any()  # the blocks hold several documents
    batch = {"input_ids": ids, "position_ids": positions, "labels": document_labels(ids, positions), "use_cache": False}
    config = llama_config(tiny_recipe())
    torch.manual_seed(0)
    flex = AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention").eval()
    sdpa = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(flex.state_dict())
    with torch.no_grad():
        varlen, dense = flex(**batch), sdpa(**batch)
        one_document = sdpa(input_ids=ids, labels=batch["labels"], use_cache=False)
    torch.testing.assert_close(varlen.logits, dense.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(varlen.loss, dense.loss, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(varlen.logits, one_document.logits, atol=1e-3)  # the boundaries are what matter
