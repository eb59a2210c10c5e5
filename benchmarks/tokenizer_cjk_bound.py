"""Choosing the bound on CJK pre-tokens: compression and the trainer's word table at each bound.

    python benchmarks/tokenizer_cjk_bound.py --zh PATH.csv [--zh-column review] [--bounds 0,2,3,4,6,8,16]

For each bound on the CJK pre-tokens the trainer sees (tokenizer.cjk_training_chunk_chars; 0: a CJK run kept
whole, format version 3's training, the baseline) this trains the project's BPE (`train_bpe`, the path
`train_tokenizer` takes) on the same text at vocabulary 8,192 (the smoke's) and 64,000 (the 7B's), then
measures bytes per token on held-out Chinese, English and code, encoding as the tokenizer does (CJK runs
whole); and on Chinese also with the text cut at encoding as in training ("cut alike": the alternative of
one bounded pattern for both). Text: the Chinese
CSV's documents and the standard library's .py files, each split by the data pipeline's validation hash
(10 % held out); training takes all the Chinese and --code-chars of code. English: the comments and
docstrings of the held-out .py files.

The trainer's memory grows with its word table (each distinct pre-token, with a list of its symbols and an
entry per pair in the index that tells where each pair occurs), so this also reports, on the Chinese
training text, the distinct CJK pre-tokens and their total characters per million characters of text (the
part of that table that Chinese adds), and the exponent of its growth with the text between successive
doublings (1: linear, as many new characters in the table per character of text at any size). Peak memory itself: benchmarks/tokenizer_scale.py.
Prints a table, then one JSON line with each bound's figures and its ratios to the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tokenizers import Regex, pre_tokenizers  # noqa: E402

from lmtrain.corpus.sources import is_validation_document, python_stdlib_files  # noqa: E402
from lmtrain.tokenizer import bpe  # noqa: E402
from lmtrain.tokenizer.report import bytes_per_token, python_prose, read_sample  # noqa: E402

VOCAB_SIZES = (8192, 64000)
HELD_OUT = 0.1
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zh", required=True, help="a CSV (or any file data.sources reads) of Chinese text")
    parser.add_argument("--zh-column", default="review")
    parser.add_argument("--bounds", default="0,2,3,4,6,8,16", help="CJK pre-token bounds; 0 = unbounded")
    parser.add_argument("--code-chars", type=int, default=3_200_000, help="code characters to train on")
    args = parser.parse_args()
    train, held_out = corpus(args.zh, args.zh_column, args.code_chars)
    bounds = [int(b) for b in args.bounds.split(",")]
    results = {str(bound): measure(bound, train, held_out) for bound in bounds}
    baseline = results[str(bounds[0])]
    for figures in results.values():
        figures["vs_baseline"] = ratios(figures, baseline)
    print_table(results)
    print(json.dumps({"baseline_bound": bounds[0], "bounds": results}))


def corpus(zh_path: str, zh_column: str, code_chars: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Training texts (zh, code) and held-out texts (zh, en, code), split by the validation hash."""
    zh = read_sample([zh_path], zh_column, max_chars=10**12)
    code = [path.read_text(encoding="utf-8", errors="replace") for path in python_stdlib_files()]
    train_code, total = [], 0
    for text in (t for t in code if not is_validation_document(t, HELD_OUT)):
        if total >= code_chars:
            break
        train_code.append(text)
        total += len(text)
    held_code = [t for t in code if is_validation_document(t, HELD_OUT)]
    train = {"zh": [t for t in zh if not is_validation_document(t, HELD_OUT)], "code": train_code}
    held_out = {
        "zh": [t for t in zh if is_validation_document(t, HELD_OUT)],
        "en": [p for p in map(python_prose, held_code) if p],
        "code": held_code,
    }
    return train, held_out


def measure(bound: int, train: dict[str, list[str]], held_out: dict[str, list[str]]) -> dict:
    pattern = bpe.split_pattern(bound or None)
    figures = word_table(pattern, train["zh"])
    cut_alike = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), pre_tokenizers.ByteLevel(False, use_regex=False)]
    )
    for vocab_size in VOCAB_SIZES:
        start = time.perf_counter()
        tokenizer = bpe.train_bpe(interleaved(train["zh"], train["code"]), vocab_size, 2, cjk_chunk_chars=bound)
        figures[f"train_seconds_{vocab_size}"] = round(time.perf_counter() - start, 1)
        for lang, texts in held_out.items():
            figures[f"bytes_per_token_{lang}_{vocab_size}"] = bytes_per_token(tokenizer, texts)
        # The alternative: the same merges, with text cut at encoding as in training (both engines would then
        # split CJK runs every `bound` characters).
        tokenizer.pre_tokenizer = cut_alike
        figures[f"bytes_per_token_zh_{vocab_size}_cut_alike"] = bytes_per_token(tokenizer, held_out["zh"])
    return figures


def word_table(pattern: str, texts: list[str]) -> dict:
    """Distinct CJK pre-tokens of `texts` and their characters, per million characters of text; and how the
    characters in the table grow with the text: the exponent b of table ∝ text^b between successive doublings of
    a prefix (1 = linear; the documents in a fixed random order, so that the file's order does not show)."""
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    texts = random.Random(0).sample(texts, len(texts))
    total = sum(map(len, texts))
    marks = [total // 8, total // 4, total // 2, total]
    distinct: set[str] = set()
    table_chars, text_chars, points = 0, 0, []
    for text in texts:
        for piece, _ in split.pre_tokenize_str(text):
            if CJK.search(piece) and piece not in distinct:
                distinct.add(piece)
                table_chars += len(piece)
        text_chars += len(text)
        while len(points) < len(marks) and text_chars >= marks[len(points)]:
            points.append((text_chars, table_chars))
    exponents = [round(math.log(b[1] / a[1]) / math.log(b[0] / a[0]), 2) for a, b in itertools.pairwise(points)]
    return {
        "zh_train_chars": total,
        "distinct_cjk_pre_tokens_per_million_chars": round(len(distinct) * 1e6 / total),
        "distinct_cjk_pre_token_chars_per_million_chars": round(table_chars * 1e6 / total),
        "table_growth_exponents": exponents,
    }


def interleaved(*sources: list[str], batch_size: int = 1000):
    """Batches that mix the sources evenly, as the recipe's mixture does (the alphabet is chosen from the
    first batches, so Chinese must not come last)."""
    documents = [doc for group in zip(*(_spread(s, max(map(len, sources))) for s in sources)) for doc in group]
    documents = [doc for doc in documents if doc is not None]
    for i in range(0, len(documents), batch_size):
        yield documents[i : i + batch_size]


def _spread(texts: list[str], length: int) -> list[str | None]:
    """`texts` spread over `length` slots, None between them."""
    slots: list[str | None] = [None] * length
    for i, text in enumerate(texts):
        slots[i * length // len(texts)] = text
    return slots


def ratios(figures: dict, baseline: dict) -> dict:
    return {
        key: round(value / baseline[key], 4)
        for key, value in figures.items()
        if key.startswith(("bytes_per_token", "distinct")) and value and baseline.get(key)
    }


def print_table(results: dict) -> None:
    langs = ("zh", "en", "code")
    head = ["bound", "CJK pre-tokens/M", "their chars/M", "table growth exponents"]
    head += [f"{lang}@{v}" for v in VOCAB_SIZES for lang in langs] + [f"zh@{v} cut alike" for v in VOCAB_SIZES]
    print(" | ".join(head))
    for bound, f in results.items():
        row = [bound if bound != "0" else "none"]
        row += [str(f[f"distinct_cjk_{what}_per_million_chars"]) for what in ("pre_tokens", "pre_token_chars")]
        row += [", ".join(map(str, f["table_growth_exponents"]))]
        row += [f"{f[f'bytes_per_token_{lang}_{v}']:.3f}" for v in VOCAB_SIZES for lang in langs]
        row += [f"{f[f'bytes_per_token_zh_{v}_cut_alike']:.3f}" for v in VOCAB_SIZES]
        print(" | ".join(row))


if __name__ == "__main__":
    main()
