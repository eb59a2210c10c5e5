"""Chinese at scale: the trainer sees CJK runs in bounded chunks, and encoding stays identical in both engines."""

import os
import random
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import tiktoken  # noqa: E402
import yaml  # noqa: E402
from tokenizers import Regex, Tokenizer, pre_tokenizers  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.errors import UserError  # noqa: E402
from lmtrain.tokenizer import bpe  # noqa: E402
from lmtrain.tokenizer.bpe import (  # noqa: E402
    CJK_TRAINING_CHUNK_CHARS,
    CorpusEncoder,
    split_pattern,
    train_bpe,
    train_tokenizer,
    training_record,
)
from lmtrain.tokenizer.report import BUILT_IN_CHINESE  # noqa: E402

HAN = re.compile(r"[\u3400-\u9fff]")
TRAINING_SPLIT_PATTERN = split_pattern(CJK_TRAINING_CHUNK_CHARS)
LONG_RUN = "中华人民共和国国务院新闻办公室今天上午举行新闻发布会介绍有关情况"  # 31 Han characters, no punctuation
MIXED = [
    LONG_RUN,
    "第" + "一二三四五六七八九十" * 3 + "章 Chapter 12: 机器学习是人工智能的一个重要分支领域，Python是一种语言。",
    "价格1999元（含税）共计3件商品总重量为12.5公斤左右请您注意查收谢谢合作!!\n下一行继续写很长的没有标点的中文句子",
    " 前面有空格的汉字串很长很长很长很长很长 and English words between 汉字汉字汉字汉字汉字汉字\t制表符后面的汉字串也很长",
    "ひらがなとカタカナと漢字が混ざった長い日本語の文章です한국어문장도길게이어집니다",
]


def pieces(pattern: str, text: str) -> list[str]:
    return [piece for piece, _ in pre_tokenizers.Split(Regex(pattern), behavior="isolated").pre_tokenize_str(text)]


def tiktoken_pieces(pattern: str, text: str, expected: list[str]) -> list[str]:
    """How tiktoken's regex engine (fancy-regex) splits `text`: every expected piece is made a whole token, which
    tiktoken takes in one piece; a piece it splits otherwise is not a token and comes back as several bytes."""
    ranks = {bytes([b]): b for b in range(256)}
    for piece in map(str.encode, expected):
        ranks.setdefault(piece, len(ranks))
    encoding = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    return [token.decode("utf-8", "replace") for token in encoding.decode_tokens_bytes(encoding.encode_ordinary(text))]


def test_training_cuts_a_long_han_run_into_pieces_of_at_most_the_bound():
    n = CJK_TRAINING_CHUNK_CHARS
    expected = [LONG_RUN[i : i + n] for i in range(0, len(LONG_RUN), n)]  # counted by hand: consecutive slices
    assert pieces(TRAINING_SPLIT_PATTERN, LONG_RUN) == expected
    assert pieces(bpe.SPLIT_PATTERN, LONG_RUN) == [LONG_RUN]  # encoding keeps the run whole


def random_mixed_texts(count: int = 200) -> list[str]:
    """Han, kana, Hangul, Latin letters, digits, CJK and ASCII punctuation, spaces and newlines, in random runs."""
    rng = random.Random(0)
    alphabet = "中华人民共和国的一是了我不在有人这上们来到时大地为子中你说生国年着就那和要她出也得里后自以会ひらがなカタカナ한국어"
    alphabet += "abcXYZé0123456789，。！？、；：（）「」,.!?'()-_ \t\n\u3000"
    return ["".join(rng.choices(alphabet, k=rng.randint(1, 120))) for _ in range(count)]


@pytest.mark.parametrize("pattern", [TRAINING_SPLIT_PATTERN, bpe.SPLIT_PATTERN], ids=["training", "encoding"])
def test_both_regex_engines_split_alike(pattern):
    for text in MIXED + random_mixed_texts():
        expected = pieces(pattern, text)
        assert "".join(expected) == text
        assert tiktoken_pieces(pattern, text, expected) == expected
        if pattern == TRAINING_SPLIT_PATTERN:
            assert max(len(HAN.findall(p)) for p in expected) <= CJK_TRAINING_CHUNK_CHARS


def chinese_corpus() -> list[str]:
    """The built-in passage's sentences, each many times and in many combinations: long repeated runs, which an
    unbounded trainer turns into long tokens."""
    sentences = [s + "。" for s in re.split("[。；：]", BUILT_IN_CHINESE) if s]
    return [" ".join(sentences[i:] + sentences[:i]) for i in range(len(sentences))] * 20 + MIXED * 10


def longest_han_token(tokenizer) -> int:
    symbols = bpe._byte_symbols()
    byte_of = {symbol: byte for byte, symbol in enumerate(symbols)}
    texts = [bytes(byte_of[c] for c in token).decode("utf-8", "replace") for token in tokenizer.get_vocab()]
    return max(len(HAN.findall(text)) for text in texts)


@pytest.fixture(scope="module")
def cjk_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokcjk") / "tokenizer.json"
    tokenizer = train_bpe([chinese_corpus()], vocab_size=1024, min_frequency=2)
    tokenizer.save(str(path))
    return tokenizer, path


def test_no_learned_token_holds_more_han_characters_than_the_bound(cjk_tokenizer):
    tokenizer, _ = cjk_tokenizer
    assert longest_han_token(tokenizer) == CJK_TRAINING_CHUNK_CHARS
    assert longest_han_token(train_bpe([chinese_corpus()], 1024, 2, cjk_chunk_chars=2)) == 2
    # Trained on whole runs (format version 3), the same text gives longer tokens: the bound is what keeps them short.
    assert longest_han_token(train_bpe([chinese_corpus()], 1024, 2, cjk_chunk_chars=0)) > 2 * CJK_TRAINING_CHUNK_CHARS


def test_tiktoken_and_tokenizers_give_the_same_ids_on_long_cjk_runs(cjk_tokenizer):
    tokenizer, path = cjk_tokenizer
    encoder = CorpusEncoder(path)
    assert encoder.fast is not None  # the tokenizer is of this project's design: tiktoken encodes it
    texts = MIXED + [BUILT_IN_CHINESE, BUILT_IN_CHINESE.replace("，", "").replace("。", "")]
    expected = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert encoder.fast_ids(texts) == expected
    assert all(tokenizer.decode(ids) == text for ids, text in zip(expected, texts))


def test_the_recipe_sets_the_bound_and_a_new_bound_retrains(tmp_path, capsys):
    (tmp_path / "zh.txt").write_text("\n\n".join(chinese_corpus()), encoding="utf-8")
    recipe = {
        "tokenizer": {"dir": str(tmp_path / "tokenizer"), "vocab_size": 1024},
        "data": {"dir": str(tmp_path / "data"), "sources": [{"kind": "files", "paths": [str(tmp_path / "zh.txt")],
                 "txt_documents": "paragraphs"}], "clean": {"strip_html": False}},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    train_tokenizer(load_recipe(path, ["tokenizer.cjk_training_chunk_chars=2"]))
    assert longest_han_token(Tokenizer.from_file(str(tmp_path / "tokenizer" / "tokenizer.json"))) == 2
    assert training_record(tmp_path / "tokenizer")["settings"]["cjk_training_chunk_chars"] == 2
    train_tokenizer(load_recipe(path))  # the default bound: not the tokenizer trained above
    assert "settings or corpus changed" in capsys.readouterr().out
    assert (
        longest_han_token(Tokenizer.from_file(str(tmp_path / "tokenizer" / "tokenizer.json")))
        == CJK_TRAINING_CHUNK_CHARS
    )


def test_a_negative_bound_is_a_user_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"tokenizer": {"cjk_training_chunk_chars": -1}}), encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer.cjk_training_chunk_chars: must be >= 0"):
        load_recipe(path)
