import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from lmtrain.config.recipe import QualityFilterConfig  # noqa: E402
from lmtrain.corpus.filters import UNIT, filter_document  # noqa: E402

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


def test_zero_thresholds_turn_filters_off():
    off = QualityFilterConfig(
        enabled=True,
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
    assert filter_document("#... x\n- y\n- y", off).reason is None
