"""Text cleaning: one document in, one cleaned document out, as set by `CleanConfig`.

Every step keeps leading indentation and tabs, so Python source survives, and none of them
folds Chinese text (no NFKC; the ideographic space U+3000 is kept).
"""

from __future__ import annotations

import functools
import html
import re
import sys
import unicodedata

from lmtrain.config.recipe import CleanConfig

# C0 and C1 control characters except tab and newline (\r is unified to \n before this runs).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Unicode space separators that are not a plain space. U+3000 (ideographic space) is left
# alone: it is ordinary punctuation-like spacing in Chinese and Japanese text.
_EXOTIC_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f]")
_THREE_OR_MORE_BLANK_LINES = re.compile(r"\n{4,}")

_HTML_COMMENT_OR_SCRIPT = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
# Block-level tags become a line break so that "a</p><p>b" does not glue two paragraphs.
_HTML_BLOCK_TAG = re.compile(
    r"</?(?:br|p|div|li|ul|ol|tr|table|h[1-6]|blockquote|pre|section|article|header|footer)\b[^<>]*>", re.IGNORECASE
)
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def clean_text(text: str, cfg: CleanConfig) -> str:
    """Apply the enabled cleaning steps to one document, in an order where none undoes another."""
    if cfg.strip_html:
        text = _strip_html(text)  # first: unescaping can produce NBSP, control chars, decomposed accents
    if cfg.unicode_nfc:
        text = unicodedata.normalize("NFC", text)
    if cfg.normalize_whitespace:
        text = _unify_line_breaks(text)  # before dropping control chars, which would delete a bare \r
    if cfg.drop_control_chars:
        text = _CONTROL_CHARS.sub("", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_punctuation:
        text = text.translate(_punctuation_table())
    if cfg.normalize_whitespace:
        text = _normalize_spaces(text)  # last: the steps above can leave trailing spaces behind
    return text


def _strip_html(text: str) -> str:
    if "<" in text:
        text = _HTML_COMMENT_OR_SCRIPT.sub("", text)
        text = _HTML_BLOCK_TAG.sub("\n", text)
        text = _HTML_TAG.sub("", text)
    return html.unescape(text) if "&" in text else text


def _unify_line_breaks(text: str) -> str:
    # str.replace and `in` are memchr-fast; a regex over the whole text costs 10x more.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    return text


def _normalize_spaces(text: str) -> str:
    text = _EXOTIC_SPACES.sub(" ", text)
    # Per-line rstrip is ~10x faster than a multiline `[ \t]+$` regex, which backtracks on indentation.
    text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    if "\n\n\n\n" in text:  # keep at most two blank lines (PEP 8 spacing between definitions)
        text = _THREE_OR_MORE_BLANK_LINES.sub("\n\n\n", text)
    # Only blank lines go: the first line's indentation is content.
    return text.lstrip("\n").rstrip("\n")


@functools.cache
def _punctuation_table() -> dict[int, None]:
    """str.translate table deleting every character of Unicode category P* (built once, ~0.2 s)."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}
