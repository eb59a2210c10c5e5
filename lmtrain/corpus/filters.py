"""Heuristic document quality filters in the style of Gopher (Rae et al. 2021), C4 and FineWeb.

The published heuristics count whitespace-separated words, which does not work for Chinese:
a Chinese paragraph has no spaces and would be "one long word". Here every ratio is computed
over *units*: a run of non-CJK letters and digits (an English word) or a single CJK character
(the usual granularity of Chinese n-gram statistics). Line lengths count a CJK character as two
columns, as terminals and editors do. So one set of thresholds applies to both languages.

`filter_document` returns why a document was dropped (one reason, the first check that fails, in
a fixed order) so the manifest can count removals by reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from lmtrain.config.recipe import QualityFilterConfig

CJK_CHARS = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f"
"""Hiragana, Katakana, CJK ideographs (with extensions A-F and compatibility forms), Hangul."""
UNIT = re.compile(rf"[{CJK_CHARS}]|[^\W_{CJK_CHARS}]+")
"""One CJK character, or a run of other letters and digits (a word)."""
_CJK = re.compile(rf"[{CJK_CHARS}]")
_LETTER = re.compile(r"[^\W\d_]")

STOP_WORDS = frozenset(
    {
        "the",
        "be",
        "to",
        "of",
        "and",
        "that",
        "have",
        "with",  # Gopher's English list
        "的",
        "了",
        "是",
        "在",
        "和",
        "有",
        "我",
        "不",
        "这",
        "也",
    }
)  # the commonest Chinese function characters
BULLETS = ("•", "●", "○", "■", "□", "▪", "◦", "‣", "-", "*", "·")
ELLIPSES = ("...", "…")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", ")", "。", "！", "？", "…", "」", "』", "）", "；")
SHORT_LINE_COLUMNS = 30
"""FineWeb's short-line length, in columns (a CJK character is two)."""
_BOILERPLATE_LINE = re.compile(
    r"javascript|cookies?\b.*\b(?:use|policy|accept|consent)|privacy policy|terms of (?:use|service)"
    r"|all rights reserved|版权所有|免责声明|隐私政策|使用条款|用户协议",
    re.IGNORECASE,
)
"""Lines C4 and its Chinese counterparts drop as site furniture, not content."""


@dataclass
class Verdict:
    """The outcome for one document: its text (boilerplate lines removed) or the reason it was dropped."""

    text: str
    reason: str | None = None
    boilerplate_lines: int = 0


def filter_document(text: str, cfg: QualityFilterConfig) -> Verdict:
    """Apply the enabled filters in order; the first that fails names the reason."""
    removed = 0
    if cfg.drop_boilerplate_lines:
        text, removed = remove_boilerplate_lines(text)
    reason = _first_failure(text, cfg)
    return Verdict(text, reason, removed)


def remove_boilerplate_lines(text: str) -> tuple[str, int]:
    lines = text.split("\n")
    kept = [line for line in lines if not _BOILERPLATE_LINE.search(line)]
    return "\n".join(kept), len(lines) - len(kept)


def _first_failure(text: str, cfg: QualityFilterConfig) -> str | None:
    units = UNIT.findall(text.lower())
    n = len(units)
    if n < max(cfg.min_units, 1):
        return "too_few_units"
    if cfg.max_units and n > cfg.max_units:
        return "too_many_units"
    words = [u for u in units if not _CJK.match(u)]
    # Word length means nothing for CJK text; a Chinese page with a few numbers must not fail on them.
    if len(words) * 2 >= n and (cfg.min_mean_word_length or cfg.max_mean_word_length):
        mean = sum(map(len, words)) / len(words)
        if mean < cfg.min_mean_word_length or (cfg.max_mean_word_length and mean > cfg.max_mean_word_length):
            return "mean_word_length"
    if cfg.max_symbol_unit_ratio:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > cfg.max_symbol_unit_ratio:
            return "symbol_ratio"
    if cfg.min_letter_unit_ratio and sum(1 for u in units if _LETTER.search(u)) / n < cfg.min_letter_unit_ratio:
        return "letter_ratio"
    if cfg.min_stop_words and sum(1 for u in units if u in STOP_WORDS) < cfg.min_stop_words:
        return "too_few_stop_words"
    return _line_failure(text, cfg) or _repetition_failure(units, cfg)


def _line_failure(text: str, cfg: QualityFilterConfig) -> str | None:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return "no_lines"
    n = len(lines)
    if cfg.max_bullet_line_ratio and sum(line.startswith(BULLETS) for line in lines) / n > cfg.max_bullet_line_ratio:
        return "bullet_lines"
    if cfg.max_ellipsis_line_ratio and sum(line.endswith(ELLIPSES) for line in lines) / n > cfg.max_ellipsis_line_ratio:
        return "ellipsis_lines"
    seen: set[str] = set()
    duplicate_lines = duplicate_chars = 0
    for line in lines:
        if line in seen:
            duplicate_lines += 1
            duplicate_chars += len(line)
        seen.add(line)
    if cfg.max_duplicate_line_ratio and duplicate_lines / n > cfg.max_duplicate_line_ratio:
        return "duplicate_lines"
    if cfg.max_duplicate_line_char_ratio and duplicate_chars / sum(map(len, lines)) > cfg.max_duplicate_line_char_ratio:
        return "duplicate_line_chars"
    if (
        cfg.min_terminal_punctuation_line_ratio
        and sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / n < cfg.min_terminal_punctuation_line_ratio
    ):
        return "few_terminal_punctuation_lines"
    if (
        cfg.max_short_line_ratio
        and sum(_columns(line) < SHORT_LINE_COLUMNS for line in lines) / n > cfg.max_short_line_ratio
    ):
        return "short_lines"
    return None


def _columns(line: str) -> int:
    return len(line) + len(_CJK.findall(line))


def _repetition_failure(units: list[str], cfg: QualityFilterConfig) -> str | None:
    """Gopher's repetition checks, over units; the characters counted are the units' own."""
    total_chars = sum(map(len, units))
    for n, limit in enumerate(cfg.max_top_ngram_char_ratios, start=2):
        if limit and len(units) >= n:
            ngram, count = Counter(zip(*(units[i:] for i in range(n)))).most_common(1)[0]
            if count > 1 and count * sum(map(len, ngram)) / total_chars > limit:
                return f"top_{n}gram_ratio"
    for n, limit in enumerate(cfg.max_duplicate_ngram_char_ratios, start=5):
        if limit and len(units) >= n and _duplicate_ngram_chars(units, n) / total_chars > limit:
            return f"duplicate_{n}gram_ratio"
    return None


def _duplicate_ngram_chars(units: list[str], n: int) -> int:
    """Characters of the units covered by an n-gram that occurred earlier in the document."""
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(units)
    for i, ngram in enumerate(zip(*(units[j:] for j in range(n)))):
        if ngram in seen:
            covered[i : i + n] = [True] * n
        seen.add(ngram)
    return sum(len(u) for u, c in zip(units, covered) if c)
