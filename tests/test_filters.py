import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from lmtrain.config.recipe import QualityFilterConfig  # noqa: E402
from lmtrain.corpus.filters import UNIT, _line_failure, filter_document  # noqa: E402

ON = QualityFilterConfig(enabled=True)

ENGLISH = "\n".join(
    [
        "The river runs through the old town, and the bridges that cross it are older than the houses.",
        "Every spring the water rises with the melting snow of the mountains to the north of the valley.",
        "Fishermen have worked along its banks for centuries, and their boats still line the eastern quay.",
        "Visitors come for the markets, the music in the squares, and the long walks beside the water.",
        "In the evening the lamps are lit one by one, and their light is reflected in the slow current.",
    ]
)
CHINESE = "\n".join(
    [
        "这座城市的老街沿着河流延伸，两岸的石桥比房屋还要古老。",
        "每年春天，北方山上的积雪融化，河水便慢慢地涨起来。",
        "几百年来，渔民一直在河边工作，他们的小船至今仍停靠在东边的码头。",
        "游客们来这里逛集市，在广场上听音乐，也喜欢沿着河岸散步。",
        "到了傍晚，路灯一盏一盏地亮起来，灯光倒映在缓缓流动的河水里。",
    ]
)


def reason(text: str, **overrides) -> str | None:
    return filter_document(text, QualityFilterConfig(enabled=True, **overrides)).reason


def test_units_are_words_or_single_cjk_characters():
    assert UNIT.findall("Hello, 世界! it's 2024_x") == ["Hello", "世", "界", "it", "s", "2024", "x"]


@pytest.mark.parametrize("text", [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_good_prose_passes_in_both_languages(text):
    verdict = filter_document(text, ON)
    assert verdict.reason is None and verdict.text == text


def test_too_few_units():
    assert reason("Short note about the river and the town.") == "too_few_units"
    assert reason("河水很清，我们在岸边散步。") == "too_few_units"  # 12 CJK units < 50


def test_mean_word_length_ignores_chinese():
    assert reason(" ".join(["a"] * 60) + " the and") == "mean_word_length"
    assert reason(CHINESE, min_mean_word_length=5) is None  # no non-CJK words: exempt


def test_symbol_ratio():
    assert reason(ENGLISH + "\n" + "#tag " * 40) == "symbol_ratio"


def test_letter_ratio_in_both_languages():
    numbers = " ".join(str(i) for i in range(100, 160))
    assert reason(f"{numbers} the and of", min_mean_word_length=0) == "letter_ratio"
    assert reason("的是" + "１２３４５６７８９" * 8, min_units=1) == "letter_ratio"  # full-width digits are not letters


def test_stop_words_in_both_languages():
    no_stop_words = "\n".join(
        f"Line {i}: rivers run through old towns; bridges cross them, older than houses." for i in range(8)
    )
    assert (
        reason(no_stop_words, max_duplicate_ngram_char_ratios=[], max_top_ngram_char_ratios=[]) == "too_few_stop_words"
    )
    no_function_characters = CHINESE
    for character in "的了是在和有我不这也":
        no_function_characters = no_function_characters.replace(character, "")
    assert reason(no_function_characters) == "too_few_stop_words"


def test_line_filters():
    bullets = "\n".join(f"- item number {i} of the list that we have with us" for i in range(20))
    assert reason(bullets) == "bullet_lines"
    ellipses = "\n".join(line[:-1] + "..." for line in ENGLISH.split("\n"))
    assert reason(ellipses, max_symbol_unit_ratio=0) == "ellipsis_lines"
    repeated = ENGLISH + "\n" + "\n".join([ENGLISH.split("\n")[0]] * 4)
    assert reason(repeated, max_duplicate_ngram_char_ratios=[], max_top_ngram_char_ratios=[]) == "duplicate_lines"
    assert reason(ENGLISH.replace(".", ""), min_terminal_punctuation_line_ratio=0.5) == "few_terminal_punctuation_lines"


def test_short_lines_count_cjk_characters_double():
    chinese_lines = "\n".join(
        ["河水慢慢地流过古老的石桥和房屋。"] * 1 + [f"第{i}行：游客们在广场上一边听音乐一边散步。" for i in range(20)]
    )
    # 18 CJK characters and 3 others = 39 columns: not short, although 21 < 30 characters
    assert (
        reason(
            chinese_lines, max_duplicate_ngram_char_ratios=[], max_top_ngram_char_ratios=[], max_duplicate_line_ratio=0
        )
        is None
    )
    english_short = "\n".join(f"the and of {i}." for i in range(30))
    assert (
        reason(
            english_short,
            min_mean_word_length=0,
            min_letter_unit_ratio=0,
            max_top_ngram_char_ratios=[],
            max_duplicate_ngram_char_ratios=[],
        )
        == "short_lines"
    )


def test_repetition_over_characters_catches_chinese_spam():
    spam = "\n".join([f"点击这里购买最便宜的手机，点击这里购买最便宜的手机，编号{i}的了是。" for i in range(10)])
    assert reason(spam).startswith(("top_", "duplicate_"))
    assert reason(ENGLISH + " " + ENGLISH.replace("\n", " ")).startswith("duplicate_")


def test_boilerplate_lines_are_removed_and_counted():
    page = "We use cookies to improve your experience. Accept cookies policy\n" + ENGLISH + "\n版权所有 © 2024 某某公司"
    verdict = filter_document(page, ON)
    assert verdict.reason is None and verdict.text == ENGLISH and verdict.boilerplate_lines == 2


# ---------------------------------------------------------------- each threshold at its boundary, one filter at a time

OFF = dict(
    min_units=0,
    max_units=0,
    min_mean_word_length=0,
    max_mean_word_length=0,
    min_letter_unit_ratio=0,
    max_symbol_unit_ratio=0,
    min_stop_words=0,
    max_bullet_line_ratio=0,
    max_ellipsis_line_ratio=0,
    max_duplicate_line_ratio=0,
    max_duplicate_line_char_ratio=0,
    max_top_ngram_char_ratios=[],
    max_duplicate_ngram_char_ratios=[],
    min_terminal_punctuation_line_ratio=0,
    max_short_line_ratio=0,
    drop_boilerplate_lines=False,
)


def test_zero_thresholds_turn_filters_off():
    assert filter_document("#... x\n- y\n- y", QualityFilterConfig(enabled=True, **OFF)).reason is None


def only(text: str, **setting) -> str | None:
    """The reason with every filter off except `setting`."""
    return filter_document(text, QualityFilterConfig(enabled=True, **{**OFF, **setting})).reason


def test_unit_count_bounds_are_inclusive():
    assert only("a b c", min_units=3) is None and only("a b", min_units=3) == "too_few_units"
    assert only("a", min_units=0) is None and only("... !", min_units=0) == "too_few_units"  # at least one unit
    assert only("a b c", max_units=3) is None and only("a b c d", max_units=3) == "too_many_units"


def test_mean_word_length_bounds_are_inclusive():
    assert only("abc de fghi", min_mean_word_length=3) is None  # (3 + 2 + 4) / 3 = 3
    assert only("ab cd", min_mean_word_length=3) == "mean_word_length"  # only the lower bound set: still checked
    assert only("abcd efgh", max_mean_word_length=4) is None
    assert only("abcd efghi", max_mean_word_length=4) == "mean_word_length"  # 4.5
    # one word and one CJK character: words are half the units, which is enough to judge their length
    assert only("ab 河", min_mean_word_length=3) == "mean_word_length"
    assert only("ab 河水", min_mean_word_length=3) is None  # words are a third: exempt


def test_symbol_ratio_counts_hashes_and_both_ellipses():
    assert only("a b c d # …", max_symbol_unit_ratio=0.5) is None  # 2 symbols / 4 units = 0.5
    assert only("a b c d # ... …", max_symbol_unit_ratio=0.5) == "symbol_ratio"  # 3 / 4
    assert only("a b c d ... …", max_symbol_unit_ratio=0.25) == "symbol_ratio"  # 2 / 4
    assert only("a b c d # #", max_symbol_unit_ratio=0.25) == "symbol_ratio"


def test_letter_and_stop_word_bounds_are_inclusive():
    assert only("a b 1 2", min_letter_unit_ratio=0.5) is None and only("a 1 2", min_letter_unit_ratio=0.5) == (
        "letter_ratio"
    )
    assert only("the and river", min_stop_words=2) is None
    assert only("the river", min_stop_words=2) == "too_few_stop_words"


def test_line_ratio_bounds_are_inclusive():
    assert only("- a\nb", max_bullet_line_ratio=0.5) is None
    assert only("- a\n• b\nc", max_bullet_line_ratio=0.5) == "bullet_lines"
    assert only("a...\nb", max_ellipsis_line_ratio=0.5) is None
    assert only("a...\nb…\nc", max_ellipsis_line_ratio=0.5) == "ellipsis_lines"
    assert only("a.\nb", min_terminal_punctuation_line_ratio=0.5) is None
    assert only("a.\nb\nc", min_terminal_punctuation_line_ratio=0.5) == "few_terminal_punctuation_lines"


def test_duplicate_lines_and_their_characters():
    assert only("a\nb\nc\na", max_duplicate_line_ratio=0.25) is None  # 1 repeated line of 4
    assert only("a\nb\na\na", max_duplicate_line_ratio=0.25) == "duplicate_lines"  # 2 of 4
    # 12 characters; the repeats "aaaa" and "bb" are 6 of them
    assert only("aaaa\nbb\naaaa\nbb", max_duplicate_line_char_ratio=0.5) is None
    assert only("aaaa\nbb\naaaa\nbb", max_duplicate_line_char_ratio=0.45) == "duplicate_line_chars"


def test_short_lines_are_those_under_30_columns():
    thirty, twenty_nine = "x" * 30, "y" * 29
    assert only(f"{thirty}\n{twenty_nine}", max_short_line_ratio=0.5) is None  # 1 short line of 2
    assert only(f"{thirty}\n{twenty_nine}\n{'z' * 29}", max_short_line_ratio=0.5) == "short_lines"


def test_top_bigram_ratio_counts_characters():
    # units aa bb aa bb cc dd: 12 characters; the bigram (aa, bb) occurs twice: 2 * 4 / 12 = 2/3; no trigram repeats
    text = "aa bb aa bb cc dd"
    assert only(text, max_top_ngram_char_ratios=[2 / 3]) is None
    assert only(text, max_top_ngram_char_ratios=[0.6]) == "top_2gram_ratio"
    assert only(text, max_top_ngram_char_ratios=[0, 0.01]) is None  # 0 turns the bigram check off
    assert only("aaaaaaaa b c", max_top_ngram_char_ratios=[0.5]) is None  # a bigram seen once is no repetition


def test_duplicate_5gram_ratio_counts_each_covered_unit_once():
    # 5-grams of b a a b a b a b a b b: those at 4 and 5 repeat those at 2 and 3, covering units 4..9: 6 of 11 chars
    text = "b a a b a b a b a b b"
    assert only(text, max_duplicate_ngram_char_ratios=[6 / 11]) is None
    assert only(text, max_duplicate_ngram_char_ratios=[0.5]) == "duplicate_5gram_ratio"
    # a repeated 5-gram with no repeated 6-gram: a b c d e x a b c d e, 5 of 11 chars
    assert only("a b c d e x a b c d e", max_duplicate_ngram_char_ratios=[0.4]) == "duplicate_5gram_ratio"


def test_boilerplate_count_is_zero_when_not_dropping():
    verdict = filter_document("a b\nAll rights reserved", QualityFilterConfig(enabled=True, **OFF))
    assert (verdict.text, verdict.reason, verdict.boilerplate_lines) == ("a b\nAll rights reserved", None, 0)


def test_a_text_without_lines_has_no_lines():
    assert _line_failure("\n  \n", QualityFilterConfig(enabled=True)) == "no_lines"
