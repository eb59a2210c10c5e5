"""Bits per byte per held-out source (lmtrain/training/pretrain.py), on the mixed English/Chinese/code corpus of
tests/test_data_mixture.py.

- token_byte_lengths: the bytes of a text's tokens add up to its UTF-8 bytes, in English, Chinese and code.
- TagPacker: the tag blocks line up with the token blocks a Packer cuts from the same documents, across batches.
- data prep: the validation split's `source` column names, for every token, the source whose held-out document
  holds it (each run of one source decodes to text of that source's held-out sample), and held_out.jsonl holds
  validation text only.
- PretrainTask.evaluate: eval_bpb and eval_bpb/<source> equal the bits per byte computed by hand, block by block,
  from the model's log-probabilities; eval_loss is the mean over the same tokens.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmtrain.config.recipe import load_recipe
from lmtrain.data.packing import Packer, TagPacker
from lmtrain.data.prepare import as_datasets, prepare_data, read_held_out
from lmtrain.tokenizer.bpe import load_tokenizer, token_byte_lengths
from lmtrain.training.pretrain import PretrainTask, metric_name
from tests.test_data_mixture import SEQ_LEN, chinese_doc, code_doc, corpus, english_doc, tokenizer, write_recipe

__all__ = ["corpus", "tokenizer"]  # module fixtures used here

TINY_MODEL = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "train.micro_batch_size=2",
    "train.global_batch_size=2",
    "train.eval_batches=0",
]


@pytest.fixture(scope="module")
def prepared(corpus, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("bpb")
    recipe = load_recipe(write_recipe(corpus, root), TINY_MODEL + [f"run_dir={root / 'run'}"])
    return recipe, prepare_data(recipe)


def test_token_bytes_add_up_to_the_utf8_bytes_of_the_text(corpus, tokenizer):
    tok = load_tokenizer(corpus / "tokenizer")
    lengths = token_byte_lengths(tok)
    for text in [english_doc(3), chinese_doc(4), code_doc(5), "naïve café — 中文，混合 text\n\ttab"]:
        assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))
    assert lengths[tok.all_special_ids].sum() == 0


def test_tag_blocks_line_up_with_token_blocks_across_batches():
    rng = np.random.default_rng(0)
    packer, tags = Packer(16, eos_id=0), TagPacker(16)
    for _ in range(5):
        sources = rng.integers(0, 3, size=4)
        lengths = rng.integers(1, 20, size=4)
        # token ids that say their source: 100 × source + 1 (eos stays 0)
        documents = [[100 * int(s) + 1] * int(n) for s, n in zip(sources, lengths)]
        blocks = packer.add(documents)
        tag_blocks = tags.add(sources, lengths)
        assert tag_blocks.shape == blocks.shape
        is_token = blocks != 0
        assert np.array_equal(tag_blocks[is_token], blocks[is_token] // 100)
        # an eos carries the tag of the document it ends (the token before it)
        flat_blocks, flat_tags = blocks.reshape(-1), tag_blocks.reshape(-1)
        for i in np.flatnonzero(flat_blocks == 0):
            if i > 0:
                assert flat_tags[i] == flat_blocks[i - 1] // 100
    assert len(tags._remainder) == packer.remainder_tokens


def test_validation_tokens_carry_the_source_of_their_held_out_document(prepared):
    recipe, manifest = prepared
    splits = as_datasets(recipe.data.dir)
    validation = splits["validation"]
    tok = load_tokenizer(recipe.tokenizer.dir)
    held_out = read_held_out(recipe.data.dir)
    names = [s["name"] for s in manifest["sources"]]
    assert set(held_out) == set(names)
    ids, tags = (
        np.array(validation["input_ids"]).reshape(-1),
        np.repeat(np.array(validation["source"]), SEQ_LEN),
    )  # each block comes from one source
    runs = np.flatnonzero(np.diff(tags)) + 1
    seen = set()
    for start, end in zip([0, *runs], [*runs, len(ids)]):
        source = names[tags[start]]
        pieces = tok.decode(ids[start:end]).split(tok.eos_token)
        for piece in [p for p in pieces if len(p) > 20]:
            assert any(piece in doc for doc in held_out[source]), (source, piece[:60])
        seen.add(source)
    assert seen == set(names)  # every source has validation text
    train_text = tok.decode(np.array(splits["train"]["input_ids"]).reshape(-1))
    for docs in held_out.values():
        assert not any(doc in train_text for doc in docs)


def test_bits_per_byte_per_source_equal_the_hand_computation(prepared):
    recipe, manifest = prepared
    torch.manual_seed(0)
    task = PretrainTask(recipe)
    model = task.build_model().eval()
    accelerator = SimpleNamespace(
        process_index=0, num_processes=1, device=torch.device("cpu"), reduce=lambda t, reduction: t
    )
    metrics = task.evaluate(model, accelerator)

    validation = as_datasets(recipe.data.dir)["validation"]
    lengths = token_byte_lengths(task.tokenizer)
    names = [metric_name(s["name"]) for s in manifest["sources"]]
    nll, nbytes = {n: 0.0 for n in names}, {n: 0 for n in names}
    with torch.no_grad():
        for row in validation:
            ids = torch.tensor(row["input_ids"])
            logprobs = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
            for t in range(1, len(ids)):
                name = names[row["source"]]
                nll[name] -= logprobs[t - 1, ids[t]].item()
                nbytes[name] += int(lengths[ids[t]])
    targets = len(validation) * (SEQ_LEN - 1)
    assert metrics["eval_loss"] == pytest.approx(sum(nll.values()) / targets, rel=1e-6)
    assert metrics["eval_bpb"] == pytest.approx(sum(nll.values()) / math.log(2) / sum(nbytes.values()), rel=1e-6)
    assert {k for k in metrics if k.startswith("eval_bpb/")} == {f"eval_bpb/{n}" for n in names}
    for name in names:
        assert metrics[f"eval_bpb/{name}"] == pytest.approx(nll[name] / math.log(2) / nbytes[name], rel=1e-6)


def test_metric_names_of_sources_are_plain():
    assert metric_name("en") == "en"
    assert metric_name("data/zh/*.parquet (+2)") == "data_zh_.parquet_2"
    assert metric_name("HuggingFaceFW/fineweb-edu") == "HuggingFaceFW_fineweb-edu"


def test_best_model_by_bits_per_byte_keeps_the_lowest():
    from lmtrain.training.loop import _update_best

    state, exported = {"best": None}, []
    for step, value in [(1, 2.0), (2, 1.5), (3, 1.8)]:
        _update_best(state, {"eval_bpb": value}, step, "eval_bpb", lambda: exported.append(step))
    assert state["best"] == {"metric": "eval_bpb", "value": 1.5, "step": 2} and exported == [1, 2]
