"""End to end on a mixed English/Chinese/code corpus of local files: weights, filters, dedup, masking."""

import gzip
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.data.prepare import open_prepared, prepare_data
from lmtrain.data.sampler import MixtureSampler  # noqa: E402
from lmtrain.errors import UserError  # noqa: E402
from lmtrain.tokenizer.bpe import train_tokenizer  # noqa: E402
from tests.test_dedup import HAN, WORDS, chinese, edit, english  # noqa: E402

SEQ_LEN = 64


def english_doc(i: int) -> str:
    """Varied English prose that passes the default filters (stop words, punctuated lines)."""
    body = english(i, 120).split()
    lines = [" ".join(["the"] + body[j : j + 12] + ["and", "the", "end."]) for j in range(0, 120, 12)]
    return "\n".join(lines)


def chinese_doc(i: int) -> str:
    text = chinese(i, 240)
    return "\n".join("这是" + text[j : j + 40] + "的了。" for j in range(0, 240, 40))


def code_doc(i: int) -> str:
    return f"def f{i}(a, b):\n    if a<b and b>{i}:\n        return {{'x': a * {i}}}\n    return [b] * {i % 7}\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    en = [english_doc(i) for i in range(60)]
    en_dupes = [en[3].upper(), edit(en[5], 0.01, seed=1, vocabulary=WORDS)]  # one exact (case), one near copy
    en_spam = ["\n".join(["buy the cheap phones and the cases now."] * 30)]
    # Early in each source, so they are read before the mixture cuts the source short.
    with gzip.open(root / "en.jsonl.gz", "wt", encoding="utf-8") as f:
        for text in en_spam + en[:6] + en_dupes + en[6:]:
            f.write(json.dumps({"text": text}) + "\n")
    zh = [chinese_doc(i) for i in range(60)]
    zh_near = edit(zh[0], 0.005, seed=3, vocabulary=HAN)
    pq.write_table(
        pa.table({"content": zh[:1] + [zh_near, en[2]] + zh[1:]}), root / "zh.parquet"
    )  # en[2]: a cross-source copy
    (root / "code").mkdir()
    for i in range(80):
        (root / "code" / f"m{i:02d}.txt").write_text(code_doc(i), encoding="utf-8")
    return root


def write_recipe(root: Path, tmp_path: Path, weights=(0.5, 0.3, 0.2), **data) -> Path:
    recipe = {
        "tokenizer": {"dir": str(root / "tokenizer"), "vocab_size": 512},
        "data": {
            "dir": str(tmp_path / "data"),
            "seq_len": SEQ_LEN,
            "validation_fraction": 0.1,
            "batch_size": 16,
            "filters": {"enabled": True, "min_units": 30},
            "sources": [
                {"kind": "files", "name": "en", "paths": [str(root / "en.jsonl.gz")], "weight": weights[0]},
                {
                    "kind": "files",
                    "name": "zh",
                    "paths": [str(root / "zh.parquet")],
                    "text_column": "content",
                    "weight": weights[1],
                },
                {
                    "kind": "files",
                    "name": "code",
                    "paths": [str(root / "code" / "*.txt")],
                    "weight": weights[2],
                    "clean": {"strip_html": False},
                    "filters": {"enabled": False},
                },
            ],
            **data,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    train_tokenizer(load_recipe(write_recipe(corpus, tmp_path_factory.mktemp("tok"))))
    return corpus


def test_mixed_corpus_counts_filters_dedup_and_shares(tokenizer, tmp_path):
    manifest = prepare_data(load_recipe(write_recipe(tokenizer, tmp_path)))
    en, zh, code = manifest["sources"]
    assert en["filtered"] == {"duplicate_lines": 1}  # the spam
    assert (en["exact_duplicates"], en["near_duplicates"]) == (1, 1)
    assert (zh["near_duplicates"], zh["exact_duplicates"]) == (1, 1)  # its edited copy; the English page seen before
    assert code["filtered"] == {} and code["near_duplicates"] == 0
    assert manifest["dedup"]["exact_duplicates"] == 2 and manifest["dedup"]["near_duplicates"] == 2
    assert manifest["filters"]["removed"] == {"duplicate_lines": 1}
    assert list(manifest["encoder"]["documents"]) == ["tiktoken"] and manifest["encoder"]["spot_checked_documents"] > 0
    assert manifest["encoder"]["fell_back_to_tokenizers_at"] is None
    # Every source is prepared whole (the sampler applies the weights), and the counts add up.
    for source in manifest["sources"]:
        assert source["documents"] == source["kept"] > 0
        assert source["tokens"] == sum(split["tokens"] for split in source["splits"].values())
    split_tokens = sum(s["tokens"] for s in manifest["splits"].values())
    assert sum(s["tokens"] for s in manifest["sources"]) == split_tokens
    assert manifest["documents"]["kept"] == sum(s["documents"] for s in manifest["sources"])
    assert len(manifest["content_fingerprint"]) == 64
    assert manifest["shards"]["dtype"] == "uint16"  # vocabulary 512


def test_new_weights_and_document_masking_reuse_the_prepared_data(tokenizer, tmp_path, capsys):
    first = prepare_data(load_recipe(write_recipe(tokenizer, tmp_path)))
    capsys.readouterr()
    again = prepare_data(load_recipe(write_recipe(tokenizer, tmp_path, weights=(1, 0, 1), document_masking=True)))
    assert "reusing" in capsys.readouterr().out
    assert again["content_fingerprint"] == first["content_fingerprint"]


def test_sampler_meets_the_weights_exactly_in_every_window(tokenizer, tmp_path):
    manifest = prepare_data(load_recipe(write_recipe(tokenizer, tmp_path)))
    train, _ = open_prepared(tmp_path / "data", manifest, document_masking=False)
    window = 20  # 0.5 / 0.3 / 0.2 of 20 blocks: 10 / 6 / 4
    sampler = MixtureSampler(train.blocks_per_source, [0.5, 0.3, 0.2], global_batch_size=4, seed=0, window=window)
    stream = np.concatenate([sampler.global_batch(step) for step in range(window * 3 // 4)])
    for start in range(0, len(stream), window):
        sources = train.source_of(stream[start : start + window])
        assert np.bincount(sources, minlength=3).tolist() == [10, 6, 4]
    # each source's blocks are drawn without repeats until all have been drawn once (then a new epoch)
    for s, n in enumerate(train.blocks_per_source):
        drawn = stream[train.source_of(stream) == s][:n]
        assert len(set(drawn.tolist())) == len(drawn)


def test_document_positions_restart_after_each_eos(tokenizer, tmp_path):
    manifest = prepare_data(load_recipe(write_recipe(tokenizer, tmp_path, document_masking=True)))
    train, _ = open_prepared(tmp_path / "data", manifest, document_masking=True)
    rows = train[np.arange(len(train))]
    blocks, positions = rows["input_ids"], rows["position_ids"]
    assert blocks.shape == positions.shape == (manifest["splits"]["train"]["blocks"], SEQ_LEN)
    assert manifest["eos_id"] == 0
    for tokens, pos in zip(blocks.tolist(), positions.tolist()):
        expected, p = [], 0
        for token in tokens:
            expected.append(p)
            p = 0 if token == 0 else p + 1
        assert pos == expected


def test_a_source_emptied_by_filtering_is_named(tokenizer, tmp_path):
    recipe = load_recipe(
        write_recipe(tokenizer, tmp_path), ["data.sources.1.filters={enabled: true, min_units: 100000}"]
    )
    with pytest.raises(
        UserError, match=r"data\.sources\.1 \(zh\): no document left to pack \(62 read, 62 filtered \(too_few_units\)\)"
    ):
        prepare_data(recipe)


def test_training_refuses_a_mixture_the_prepared_data_cannot_serve(tokenizer, tmp_path):
    from lmtrain.training.pretrain import load_packed_splits

    emptied = ["data.sources.1.filters={enabled: true, min_units: 100000}"]
    path = write_recipe(tokenizer, tmp_path, weights=(1, 0, 1))
    prepare_data(load_recipe(path, emptied))
    with pytest.raises(UserError, match=r"data\.sources\.1 \(zh\): weight 0\.3 but no prepared training block"):
        load_packed_splits(load_recipe(path, [*emptied, "data.sources.1.weight=0.3"]))
    extra = '[{kind: files, name: en, paths: ["x"]}, {kind: files, name: zh, paths: ["x"]}, {kind: files, name: code, paths: ["x"]}, {kind: python_stdlib, name: more}]'  # noqa: E501
    with pytest.raises(UserError, match=r"data\.sources\.3 \(more\): .* has no prepared shards for it"):
        load_packed_splits(load_recipe(path, [f"data.sources={extra}"]))
    manifest, train, validation = load_packed_splits(load_recipe(path, emptied))
    assert train.blocks_per_source[1] == 0 and len(train) == sum(train.blocks_per_source) > 0
