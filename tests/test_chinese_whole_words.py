"""Chinese whole-word masking (issue 13): objective.chinese_words chooses what a Chinese word is for whole-word
masking, each character (the default) or jieba's words. The expectation is built independently of the masker: the
words are jieba's own segmentation of the sentence (rjieba.cut), the tokens' characters the tokenizer's own offsets,
and the masker is only watched from outside, through which tokens it labels."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import rjieba
import torch
import yaml
from tokenizers import Tokenizer, models
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from lmtrain.config.recipe import ObjectiveConfig, RecipeError, load_recipe
from lmtrain.data.masking import DynamicMasker, LinearWholeWordCollator
from lmtrain.errors import UserError
from lmtrain.tokenizer.bpe import train_tokenizer
from tests.conftest import run_cli

CJK_TEXTS = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
"""The standard library's codec test texts: a Chinese description of Python in gb2312-utf8.txt and its kin."""

SENTENCE = "用户在操作系统中学习计算机程序设计，鳄鱼在河里游泳，相关的资源非常多。"
"""Words of the training text in a new order, so tokens hold one character, several, or part of a word; and
鳄鱼, 河里 and 游泳, whose characters the tokenizer never saw, so each is split into its UTF-8 bytes."""

WHOLE_WORDS = {"kind": "mlm", "mask_rate": 0.3, "whole_word_mask": True, "mask_replace_prob": 1.0,
               "random_replace_prob": 0.0}  # fmt: skip
SEEDS = 200


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """An encoder tokenizer trained, as a user would, on the Chinese codec texts and some standard-library code."""
    root = tmp_path_factory.mktemp("zh-tokenizer")
    recipe = {
        "tokenizer": {"vocab_size": 1024, "dir": str(root / "tokenizer")},
        "data": {
            "sources": [
                {"kind": "files", "paths": [str(CJK_TEXTS / "g*-utf8.txt")]},
                {"kind": "python_stdlib", "max_documents": 40},
            ],
            "dir": str(root / "data"),
        },
        "model": {"architecture": "modernbert"},
        "objective": {"kind": "mlm"},
        "run_dir": str(root / "run"),
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return train_tokenizer(load_recipe(root / "recipe.yaml"))


def masks_over_steps(tokenizer, ids: list[int], chinese_words: str) -> torch.Tensor:
    """(SEEDS, tokens): which tokens of `[CLS] ids [SEP]` are chosen at each of SEEDS steps, [CLS] and [SEP] cut off."""
    masker = DynamicMasker(tokenizer, ObjectiveConfig(**WHOLE_WORDS, chinese_words=chinese_words), seed=0)
    block = torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]])
    return torch.stack([masker(block.clone(), np.array([0]), step)[1][0, 1:-1] != -100 for step in range(SEEDS)])


def expected_units(token_spans: list[tuple[int, int]], unit_of_char: list[int]) -> list[int]:
    """Per token, the unit it must be chosen with: tokens that share a unit (a word, or a character) are one unit,
    transitively (a token holding the end of one word and the start of the next joins the two)."""
    parent = list(range(len(token_spans)))

    def root(t: int) -> int:
        while parent[t] != t:
            t = parent[t]
        return t

    first_token_of_unit: dict[int, int] = {}
    for t, (start, end) in enumerate(token_spans):
        for char in range(start, end):
            other = first_token_of_unit.setdefault(unit_of_char[char], t)
            parent[root(t)] = root(other)
    return [root(t) for t in range(len(token_spans))]


def jieba_word_of_char(text: str) -> list[int]:
    words = rjieba.Jieba().cut(text)
    assert "".join(words) == text
    return [w for w, word in enumerate(words) for _ in word]


def assert_chosen_in_units(chosen: torch.Tensor, units: list[int]) -> None:
    """Tokens of one unit are chosen together at every step; tokens of two units are not (over SEEDS steps at a rate
    of 0.3, two independent units agree everywhere with probability 0.58^200)."""
    for a in range(len(units)):
        for b in range(a + 1, len(units)):
            same_choices = torch.equal(chosen[:, a], chosen[:, b])
            assert same_choices == (units[a] == units[b]), f"tokens {a} and {b}"


def encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], encoded["offset_mapping"]


def tokens_of(spans: list[tuple[int, int]], char: str) -> list[int]:
    """The tokens of SENTENCE that hold `char` and nothing else (its bytes, where it is split)."""
    return [t for t, (start, end) in enumerate(spans) if SENTENCE[start:end] == char]


def test_the_sentence_tests_words_split_over_tokens_and_tokens_over_words(tokenizer):
    ids, spans = encode(tokenizer, SENTENCE)
    word_of_char = jieba_word_of_char(SENTENCE)
    words_of_token = [{word_of_char[c] for c in range(s, e)} for s, e in spans]
    assert sum(len(words) > 1 for words in words_of_token) >= 2  # a token holds parts of several words
    tokens_of_word = [sum(w in words for words in words_of_token) for w in range(max(word_of_char) + 1)]
    assert sum(n > 1 for n in tokens_of_word) >= 5  # a word spread over several tokens
    assert sum(e - s == 1 and spans.count((s, e)) == 3 for s, e in spans) >= 9  # characters split into 3 bytes


def test_jieba_chooses_each_word_whole(tokenizer):
    ids, spans = encode(tokenizer, SENTENCE)
    units = expected_units(spans, jieba_word_of_char(SENTENCE))
    chosen = masks_over_steps(tokenizer, ids, "jieba")
    assert_chosen_in_units(chosen, units)
    assert 0.2 < chosen.float().mean() < 0.45
    # words of several characters in several tokens are chosen, whole: 鳄鱼's six byte tokens among them
    crocodile = tokens_of(spans, "鳄") + tokens_of(spans, "鱼")
    assert len(crocodile) == 6 and chosen[:, crocodile].all(1).sum() > 20


def test_characters_are_the_default_and_chosen_alone(tokenizer):
    assert ObjectiveConfig().chinese_words == "characters"
    ids, spans = encode(tokenizer, SENTENCE)
    units = expected_units(spans, list(range(len(SENTENCE))))  # each character a word; its byte tokens together
    chosen = masks_over_steps(tokenizer, ids, "characters")
    assert_chosen_in_units(chosen, units)
    alone = chosen[:, tokens_of(spans, "河")].all(1) & ~chosen[:, tokens_of(spans, "里")].any(1)
    assert alone.sum() > 20  # 河 without 里: half of the word 河里


def test_a_block_cut_inside_a_character_keeps_the_rest_in_words(tokenizer):
    """Packing cuts blocks anywhere: a block may start with the last bytes of a character."""
    ids, spans = encode(tokenizer, SENTENCE)
    cut = tokens_of(spans, "鳄")[0] + 1  # the block starts with the 2nd and 3rd bytes of 鳄
    rest = SENTENCE[spans[cut + 2][0] :]  # the text after the cut character
    assert encode(tokenizer, rest)[0] == ids[cut + 2 :]
    rest_spans = [(s - spans[cut + 2][0], e - spans[cut + 2][0]) for s, e in spans[cut + 2 :]]
    # the two bytes of 鳄 are a unit of their own; every other token's unit is jieba's word of the rest
    units = [-1, -1, *expected_units(rest_spans, jieba_word_of_char(rest))]
    assert_chosen_in_units(masks_over_steps(tokenizer, ids[cut:], "jieba"), units)


def test_jieba_masks_depend_on_seed_step_and_block_only(tokenizer):
    objective = ObjectiveConfig(**WHOLE_WORDS, chinese_words="jieba")
    ids = torch.tensor(encode(tokenizer, SENTENCE * 3)[0][:48])
    blocks = torch.stack([ids.roll(shift) for shift in range(4)])
    masker = DynamicMasker(tokenizer, objective, seed=7)
    together = masker(blocks.clone(), np.array([10, 11, 12, 13]), step=5)
    for i in (3, 1):  # one block at a time, in another order: another process, a resumed run
        alone = masker(blocks[i : i + 1].clone(), np.array([10 + i]), step=5)
        assert torch.equal(alone[0][0], together[0][i]) and torch.equal(alone[1][0], together[1][i])
    fresh = DynamicMasker(tokenizer, objective, seed=7)  # a new process: a new segmenter
    assert torch.equal(fresh(blocks.clone(), np.array([10, 11, 12, 13]), step=5)[1], together[1])
    assert not torch.equal(masker(blocks.clone(), np.array([10, 11, 12, 13]), step=6)[1], together[1])


def recipe_with(tmp_path, objective: dict) -> Path:
    recipe = {
        "tokenizer": {"vocab_size": 512},
        "data": {"sources": [{"kind": "python_stdlib"}]},
        "model": {"architecture": "modernbert"},
        "objective": objective,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_jieba_without_whole_word_masking_is_a_recipe_error_reported_with_the_others(tmp_path):
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe_with(tmp_path, {"kind": "mlm", "chinese_words": "jieba", "mask_rate": 2.0}))
    text = str(error.value)
    assert "objective.chinese_words: jieba segments Chinese for whole-word masking only" in text
    assert "set objective.whole_word_mask=true" in text
    assert "objective.mask_rate: 2.0 must be in (0, 1)" in text and "2 problem(s)" in text
    with pytest.raises(RecipeError, match="objective.chinese_words"):
        load_recipe(recipe_with(tmp_path, {"kind": "mlm", "chinese_words": "jeiba", **WHOLE_WORDS}))
    recipe = load_recipe(recipe_with(tmp_path, {**WHOLE_WORDS, "chinese_words": "jieba"}))
    assert recipe.objective.chinese_words == "jieba"


def test_whole_word_expansion_equals_the_librarys():
    """LinearWholeWordCollator expands chosen tokens to their words as transformers' own code does, in O(tokens)."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        new_word = rng.random((3, 200)) < rng.uniform(0.05, 0.9)
        word_ids = np.cumsum(new_word, axis=1)
        word_ids[rng.random((3, 200)) < 0.1] = -1  # special tokens
        if trial == 0:
            word_ids[1] = -1  # a row of special tokens only
        mask = torch.from_numpy(rng.random((3, 200)) < 0.15)
        expected = DataCollatorForLanguageModeling._whole_word_mask(word_ids, mask)
        assert np.array_equal(LinearWholeWordCollator._whole_word_mask(word_ids, mask), expected)


def test_whole_words_with_a_tokenizer_that_is_not_byte_level_is_a_user_error():
    """Words are read from the tokens' bytes; a WordPiece-style vocabulary (a BERT tokenizer pointed at by
    tokenizer.dir) has no bytes to read, which must be said before training, not masked wrongly."""
    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "你好": 5, "##ing": 6}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip
    with pytest.raises(UserError, match=r"token 5 \('你好'\) is not byte-level BPE"):
        DynamicMasker(tokenizer, ObjectiveConfig(**WHOLE_WORDS), seed=0)
    DynamicMasker(tokenizer, ObjectiveConfig(kind="mlm"), seed=0)  # token masking reads no words


def test_the_benchmark_runs_and_ends_with_its_json_line():
    result = run_cli("benchmarks/chinese_wwm.py", "--blocks", "4", "--repeats", "1", "--seq-len", "128",
                     "--vocab", "1024")  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["ms_per_block"]) == {"tokens", "characters", "jieba", "characters_library_expansion"}
    assert all(ms > 0 for ms in report["ms_per_block"].values()) and 0.3 < report["han_share"] <= 1
