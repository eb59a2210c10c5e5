import hashlib
import itertools
import json
import os
import random
import sysconfig
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.errors import UserError  # noqa: E402
from lmtrain.tokenizer import bpe as tokenization  # noqa: E402
from lmtrain.tokenizer.bpe import (  # noqa: E402
    SPECIAL_TOKENS,
    SPOT_CHECK_EVERY,
    CorpusEncoder,
    corpus_encoder,
    load_tokenizer,
    tokenizer_fingerprint,
    train_bpe,
    train_tokenizer,
    training_record,
)

ENGLISH = "The quick brown fox jumps over the lazy dog. It's 2024; numbers like 3.14159 and 1,000,000 appear.\n"
CHINESE = "机器学习是人工智能的一个分支。我们用大量文本训练语言模型，然后评估它的表现。\n"
CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n\tx: int = 0\n"

ROUND_TRIP_CASES = {
    "english": ENGLISH,
    "chinese": CHINESE + "全角空格\u3000和标点：「引号」！",
    "emoji": "Hi 👋🏽 family 👨‍👩‍👧‍👦 flags 🇨🇳🇺🇸 ❤️ keycap 1️⃣",
    "control_characters": "nul\x00 bell\x07 esc\x1b[31m del\x7f c1\x85\x9f zero-width\u200b bom\ufeff",
    "whitespace": "\r\n\tindented\r\n    four spaces\n\n\n  trailing   \t\n",
    "leading_spaces": "   leading",
    "only_spaces": "     ",
    "empty": "",
    "special_token_text": "literal <|endoftext|> and <|pad|> in text",
    "mixed_scripts": "Русский текст, ελληνικά, العربية, हिन्दी, 日本語のかなカナ, 한국어",
    "combining_marks": "e\u0301 a\u0308 Z\u0351\u0352\u0353",
}


def write_recipe(tmp_path: Path, paths: list[str], **overrides) -> Path:
    """A recipe YAML in tmp_path whose tokenizer and data dirs also live in tmp_path."""
    recipe = {
        "tokenizer": {"dir": str(tmp_path / "tokenizer"), "vocab_size": 384, "min_frequency": 2},
        "data": {
            "dir": str(tmp_path / "data"),
            "sources": [{"kind": "files", "paths": paths}],
            "clean": {"strip_html": False},
            "validation_fraction": 0.2,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 384-token tokenizer trained once on a small English/Chinese/code corpus."""
    tmp_path = tmp_path_factory.mktemp("tok")
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"{i}: " + ENGLISH + CHINESE + CODE, encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path, [str(tmp_path / "*.txt")]))
    train_tokenizer(recipe)
    return recipe


def test_loads_with_auto_tokenizer_without_custom_code(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    assert tokenizer.is_fast
    assert tokenizer.clean_up_tokenization_spaces is False
    assert tokenizer.model_max_length == trained.data.seq_len
    config = json.loads((Path(trained.tokenizer.dir) / "tokenizer_config.json").read_text())
    assert "auto_map" not in config  # nothing to trust_remote_code


def test_vocab_size_is_exactly_the_recipes(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    assert len(tokenizer) == trained.tokenizer.vocab_size == 384
    assert len(tokenizer) % 64 == 0
    assert max(tokenizer.get_vocab().values()) == 383


def test_tiny_corpus_is_padded_with_reserved_tokens(tmp_path):
    (tmp_path / "tiny.txt").write_text("hello hello world world " * 10, encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path, [str(tmp_path / "tiny.txt")]), ["data.validation_fraction=0.01"])
    train_tokenizer(recipe)
    tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer.dir)
    stats = training_record(recipe.tokenizer.dir)["stats"]
    # 4 special tokens + 256 bytes + a handful of merges: the rest must be reserved padding.
    assert 260 < stats["learned_vocab_size"] < 300
    assert len(tokenizer) == 384
    reserved = 384 - stats["learned_vocab_size"]
    assert tokenizer.convert_tokens_to_ids("<|reserved_0|>") == stats["learned_vocab_size"]
    assert tokenizer.convert_ids_to_tokens(383) == f"<|reserved_{reserved - 1}|>"
    assert tokenizer.decode(tokenizer.encode("hello world", add_special_tokens=False)) == "hello world"


def test_special_tokens_and_their_ids(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|pad|>", 1)
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [2, 3]
    # Each special token is one id, never split into pieces.
    assert tokenizer.encode("<|im_start|>user<|im_end|>", add_special_tokens=False)[0] == 2
    assert tokenizer.decode([0, 1, 2], skip_special_tokens=True) == ""


@pytest.mark.parametrize("name", ROUND_TRIP_CASES)
def test_round_trip_through_auto_tokenizer(trained, name):
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    text = ROUND_TRIP_CASES[name]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_round_trip_random_unicode(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    rng = random.Random(0)
    planes = [
        (0x0, 0x2FF),
        (0x3000, 0x9FFF),
        (0xAC00, 0xD7A3),
        (0xE000, 0xFFFD),
        (0x1F300, 0x1FAFF),
        (0x20000, 0x2A6DF),
    ]
    texts = ["".join(chr(rng.randint(*rng.choice(planes))) for _ in range(200)) for _ in range(20)]
    for text, ids in zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
        assert tokenizer.decode(ids) == text


def test_no_special_tokens_are_added_to_plain_text(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    ids = tokenizer("hello")["input_ids"]
    assert tokenizer.decode(ids) == "hello"  # the data pipeline appends eos itself


def test_digits_are_split_one_by_one(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    assert tokenizer.tokenize("2024") == ["2", "0", "2", "4"]


def test_corpus_encoder_treats_special_token_strings_as_text(trained):
    encoder = corpus_encoder(trained.tokenizer.dir)
    [ids] = encoder.encode_batch(["a <|endoftext|> b"])
    assert 0 not in ids and len(ids) > 3
    assert encoder.reference.decode(ids) == "a <|endoftext|> b"


def reference_ids(tokenizer_json: Path, texts: list[str]) -> list[list[int]]:
    """What `tokenizers` itself gives, special-token strings encoded as text."""
    reference = Tokenizer.from_file(str(tokenizer_json))
    reference.encode_special_tokens = True
    return [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]


def stdlib_and_cjk_texts() -> list[str]:
    """Real text every machine has: standard-library sources, and its CJK codec test texts where installed."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(root.glob("*.py"))[:150] + sorted((root / "test" / "cjkencodings").glob("*-utf8.txt"))
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


@pytest.fixture(scope="module")
def larger_tokenizer(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 4,096-token tokenizer trained on half of stdlib_and_cjk_texts(), and the other half."""
    texts = stdlib_and_cjk_texts()
    path = tmp_path_factory.mktemp("tok4k") / "tokenizer.json"
    train_bpe([texts[::2]], vocab_size=4096, min_frequency=2).save(str(path))
    return path, texts[1::2]


def test_corpus_encoder_gives_exactly_the_ids_of_tokenizers(larger_tokenizer):
    """tiktoken's BPE, used for speed, must encode as `tokenizers` does: on held-out real text, the
    round-trip cases and random Unicode, with and without the spot check noticing anything."""
    path, held_out = larger_tokenizer
    rng = random.Random(0)
    planes = [(0x0, 0x2FF), (0x3000, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF)]
    random_texts = ["".join(chr(rng.randint(*rng.choice(planes))) for _ in range(300)) for _ in range(50)]
    texts = held_out + list(ROUND_TRIP_CASES.values()) + random_texts
    encoder = CorpusEncoder(path)
    assert encoder.fast is not None
    assert encoder.encode_batch(texts) == reference_ids(path, texts)
    assert encoder.stats() == {
        "documents": {"tiktoken": len(texts)},
        "spot_checked_documents": len(texts[::SPOT_CHECK_EVERY]),
        "fell_back_to_tokenizers_at": None,
    }
    assert sum(map(len, reference_ids(path, held_out))) > 100_000


def test_corpus_encoder_falls_back_to_tokenizers_at_the_first_difference(larger_tokenizer, capsys):
    path, held_out = larger_tokenizer
    encoder = CorpusEncoder(path)
    fast = encoder.fast

    first, second = held_out[:10], held_out[10:20]

    class Differing:  # a tiktoken that disagrees on the first document, which the spot check sees
        def encode_ordinary(self, text):
            return fast.encode_ordinary(text)[::-1] if text == first[0] else fast.encode_ordinary(text)

    encoder.fast = Differing()
    assert encoder.encode_batch(first) == reference_ids(path, first)
    assert encoder.encode_batch(second) == reference_ids(path, second)
    assert encoder.fast is None
    assert encoder.stats() == {
        "documents": {"tokenizers": 20},
        "spot_checked_documents": 1,
        "fell_back_to_tokenizers_at": first[0][:200],
    }
    assert "encoding this batch and the rest with tokenizers" in capsys.readouterr().err


def test_a_process_checks_a_tokenizers_tiktoken_once_and_each_encoder_keeps_its_own_state(larger_tokenizer):
    """Each data-preparation task makes its encoder: the checked tiktoken encoding is shared, a fallback is not."""
    path, held_out = larger_tokenizer
    first = CorpusEncoder(path)
    first.fast = None  # as after a difference found in one task
    first.encode_batch(held_out[:3])
    second = CorpusEncoder(path)
    assert second.fast is not None and second.fast is CorpusEncoder(path).fast
    assert second.stats()["documents"] == {} and first.stats()["documents"] == {"tokenizers": 3}
    other = path.with_name("other.json")
    other.write_text(path.read_text(encoding="utf-8").replace('"dropout": null', '"dropout": 0.5'), encoding="utf-8")
    assert CorpusEncoder(other).fast is None  # another tokenizer.json is checked anew (BPE dropout: refused)


def test_texts_are_cut_into_contiguous_slices_of_about_equal_size():
    texts = [chr(ord("a") + i) * n for i, n in enumerate([5, 1, 1, 1, 10, 1, 1, 0, 1, 3, 2, 8])]
    slices = tokenization._slices_of_equal_size(texts, 4)
    assert len(slices) == 4 and [t for part in slices for t in part] == texts
    # 34 characters, 8.5 a slice: the 10-character text gets a slice of its own.
    assert [sum(map(len, part)) for part in slices] == [8, 10, 8, 8]
    assert tokenization._slices_of_equal_size([], 4) == []
    assert [t for part in tokenization._slices_of_equal_size(["", ""], 3) for t in part] == ["", ""]


def tiktoken_for(spec: dict):
    return tokenization._tiktoken_encoding(spec, Tokenizer.from_str(json.dumps(spec)))


def test_tiktoken_is_used_only_for_this_projects_design(larger_tokenizer):
    path, _ = larger_tokenizer
    spec = json.loads(path.read_text(encoding="utf-8"))
    assert tiktoken_for(spec) is not None
    model, merges, vocab = spec["model"], spec["model"]["merges"], spec["model"]["vocab"]
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    gpt2_regex = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    other_regex = spec | {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split | {"pattern": {"Regex": gpt2_regex}}, byte_level]}
    }
    plain_added = spec | {
        "added_tokens": [
            *spec["added_tokens"],
            {
                "id": len(vocab),
                "content": "hello",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": False,
            },
        ]
    }
    # Each new token made by one merge, in id order, yet "QZJ" is built only from QZ + J while Z + J merge
    # first: tokenizers gives [Q, ZJ] for the text "QZJ", tiktoken (a piece that is a token is taken whole) [QZJ].
    a, b, c = next(
        t for t in itertools.permutations("QZJXKV", 3) if not {t[0] + t[1], t[1] + t[2], "".join(t)} & set(vocab)
    )
    unreachable = spec | {
        "model": model
        | {
            "vocab": vocab | {b + c: len(vocab), a + b: len(vocab) + 1, a + b + c: len(vocab) + 2},
            "merges": [*merges, [b, c], [a, b], [a + b, c]],
        }
    }
    assert Tokenizer.from_str(json.dumps(unreachable)).encode(a + b + c).tokens == [a, b + c]
    for other in (
        spec | {"normalizer": {"type": "NFC"}},
        spec | {"model": model | {"merges": [*merges, merges[-1]]}},  # two merges make one token
        spec | {"model": model | {"byte_fallback": True}},
        other_regex,
        plain_added,
        unreachable,
    ):
        assert tiktoken_for(other) is None


def test_fingerprint_is_sha256_of_tokenizer_json(trained):
    path = Path(trained.tokenizer.dir) / "tokenizer.json"
    assert tokenizer_fingerprint(trained.tokenizer.dir) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_retraining_with_the_same_settings_reuses(trained, capsys):
    tokenizer_json = Path(trained.tokenizer.dir) / "tokenizer.json"
    before = tokenizer_json.stat().st_mtime_ns
    train_tokenizer(trained)
    assert "reusing" in capsys.readouterr().out
    assert tokenizer_json.stat().st_mtime_ns == before


def test_changed_settings_or_corpus_retrain(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(ENGLISH * 20, encoding="utf-8")
    (tmp_path / "b.txt").write_text(CHINESE * 20, encoding="utf-8")
    recipe_path = write_recipe(tmp_path, [str(tmp_path / "*.txt")])
    train_tokenizer(load_recipe(recipe_path))
    first = tokenizer_fingerprint(tmp_path / "tokenizer")

    train_tokenizer(load_recipe(recipe_path, ["tokenizer.vocab_size=448"]))
    assert "retraining" in capsys.readouterr().out
    assert len(load_tokenizer(tmp_path / "tokenizer")) == 448

    (tmp_path / "c.txt").write_text(CODE * 20, encoding="utf-8")
    train_tokenizer(load_recipe(recipe_path, ["tokenizer.vocab_size=448"]))
    assert "retraining" in capsys.readouterr().out
    assert tokenizer_fingerprint(tmp_path / "tokenizer") != first


def test_changed_context_length_updates_without_retraining(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(ENGLISH * 20, encoding="utf-8")
    recipe_path = write_recipe(tmp_path, [str(tmp_path / "a.txt")])
    train_tokenizer(load_recipe(recipe_path))
    fingerprint = tokenizer_fingerprint(tmp_path / "tokenizer")
    tokenizer = train_tokenizer(load_recipe(recipe_path, ["data.seq_len=64"]))
    assert "reusing" in capsys.readouterr().out
    assert tokenizer.model_max_length == 64
    assert load_tokenizer(tmp_path / "tokenizer").model_max_length == 64
    assert tokenizer_fingerprint(tmp_path / "tokenizer") == fingerprint


def test_max_training_chars_caps_the_training_text(tmp_path):
    for i in range(30):
        (tmp_path / f"{i:02d}.txt").write_text(f"{i} " + ENGLISH * 5, encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path, [str(tmp_path / "*.txt")]), ["tokenizer.max_training_chars=1000"])
    train_tokenizer(recipe)
    assert training_record(recipe.tokenizer.dir)["stats"]["training_chars"] == 1000


def test_empty_corpus_is_a_user_error(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="no training text"):
        train_tokenizer(load_recipe(write_recipe(tmp_path, [str(tmp_path / "empty.txt")])))


def test_loading_a_missing_tokenizer_says_how_to_train_one(tmp_path):
    with pytest.raises(UserError, match="train_tokenizer.py"):
        load_tokenizer(tmp_path / "nothing")


def test_quality_report_next_to_the_tokenizer(trained):
    report = json.loads((Path(trained.tokenizer.dir) / "quality_report.json").read_text(encoding="utf-8"))
    assert set(report["bytes_per_token"]) == {"en", "zh", "code"}
    assert all(isinstance(v, float) and v >= 1.0 for v in report["bytes_per_token"].values())
    assert report["samples"]["code"]["documents"] > 0 and report["samples"]["en"]["documents"] > 0
    shares = report["vocabulary_share_by_script"]
    assert abs(sum(shares.values()) - 1) < 1e-3
    assert shares["cjk"] > 0 and shares["latin"] > shares["cjk"]  # the corpus has Chinese, but less than English


def test_quality_report_on_given_samples_matches_an_independent_count(trained, tmp_path):
    zh_file = tmp_path / "zh.txt"
    zh_file.write_text(CHINESE * 3, encoding="utf-8")
    train_tokenizer(trained, {"zh": [str(zh_file)]})  # reused tokenizer, re-measured
    report = json.loads((Path(trained.tokenizer.dir) / "quality_report.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    expected = len((CHINESE * 3).encode("utf-8")) / len(tokenizer.encode(CHINESE * 3, add_special_tokens=False))
    assert report["bytes_per_token"]["zh"] == pytest.approx(expected, abs=1e-3)
    assert report["samples"]["zh"]["source"] == str(zh_file)
    assert report["bytes_per_token"]["zh"] > 2.0  # trained on this text: several characters per token


def synthetic_corpus(documents: int = 400, seed: int = 0) -> list[str]:
    """English-like words, runs of 300 different Han characters, digits, punctuation: many pairs."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "re", "mi", "sun", "the", "ing", "pro", "al", "ex", "qu", "ze"]
    han = [chr(0x4E00 + i * 37) for i in range(300)]
    docs = []
    for _ in range(documents):
        parts = []
        for _ in range(40):
            if rng.random() < 0.5:
                parts.append(" " + "".join(rng.choices(syllables, k=rng.randint(1, 3))))
            else:
                parts.append("".join(rng.choices(han[: rng.choice([30, 300])], k=rng.randint(2, 12))) + "，")
            if rng.random() < 0.1:
                parts.append(f" {rng.randint(0, 9999)}.\n")
        docs.append("".join(parts))
    return docs


def test_train_bpe_fills_the_vocabulary_exactly():
    tokenizer = train_bpe([synthetic_corpus()], vocab_size=1024, min_frequency=2)
    vocab = tokenizer.get_vocab()
    assert len(vocab) == tokenizer.get_vocab_size() == 1024
    assert sorted(vocab.values()) == list(range(1024))
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3]


def test_byte_level_model_encodes_as_the_character_level_one():
    """Trained on characters and written as byte-level BPE: the same tokens, spelled in bytes, for
    text of alphabet characters; any other character falls back to bytes, and decoding is exact."""
    docs = synthetic_corpus()
    char_level, alphabet = tokenization._train_characters([docs], vocab_size=1024, min_frequency=2)
    byte_level = tokenization._byte_level(char_level, alphabet)
    symbol = tokenization._byte_symbols()
    known = {chr(i) for i in range(128)} | set(alphabet)
    assert 0 < len(alphabet) < 300  # the rarest Han characters are left to bytes
    texts = synthetic_corpus(documents=50, seed=1)
    checked = 0
    for text in texts:
        for piece in text.split("，"):
            if set(piece) <= known:
                expected = ["".join(symbol[b] for b in t.encode("utf-8")) for t in char_level.encode(piece).tokens]
                assert byte_level.encode(piece).tokens == expected
                checked += 1
        assert byte_level.decode(byte_level.encode(text).ids) == text
    assert checked > 100
    rare = next(c for c in (chr(0x4E00 + i * 37) for i in range(300)) if c not in known)
    assert len(byte_level.encode(rare).ids) > 1  # not in the alphabet: bytes
    assert byte_level.decode(byte_level.encode(rare + "丘").ids) == rare + "丘"


def test_frequent_characters_are_single_tokens(trained):
    """In a 384-token vocabulary, half of the 124 learnable tokens may go to whole characters (and the
    byte prefixes that build them): most of the corpus's Chinese characters, the most frequent first."""
    tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer.dir)
    single = [c for c in sorted(set(CHINESE.strip())) if len(tokenizer.encode(c, add_special_tokens=False)) == 1]
    assert "的" in single and len(single) >= 25


def test_merges_run_on_one_thread_on_two_cores_after_the_corpus_is_read(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    seen = []

    def corpus():
        for batch in (["a"], ["b"]):
            seen.append(os.environ["TOKENIZERS_PARALLELISM"])
            yield batch

    for cores, after_reading in ((2, "false"), (8, "true")):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        seen.clear()
        with tokenization._serial_merges() as switch:
            assert list(switch(corpus())) == [["a"], ["b"]]
            assert seen == ["true", "true"]  # the text is read in parallel
            assert os.environ["TOKENIZERS_PARALLELISM"] == after_reading
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
