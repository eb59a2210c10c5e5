"""Our tokenizer training vs sentencepiece BPE: training time, and bytes per token on held-out English and Chinese.

    python benchmarks/tokenizer_vs_sentencepiece.py [--corpus PATH ...] [--zh-corpus PATH ...] [--text-column NAME]

Both train byte-fallback/byte-level BPE with the same vocabulary size on the same text, with no
normalization (sentencepiece: identity rule, digits split, byte fallback, whitespace kept), on the
same cores. The text: English (by default the comments and docstrings of the running interpreter's
standard library, offline on every machine) and Chinese (--zh-corpus; without it, only a short
built-in passage is measured and nothing Chinese is trained on, which the output says). Documents
are split 90/10 into training and held-out text by a hash, the same for both tokenizers. Prints a
table, then one JSON line: train_time_vs_spm (ours / theirs), bytes_per_token_vs_spm_en and
bytes_per_token_vs_spm_zh (ours / theirs: above 1 means we compress better).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import sentencepiece as spm  # noqa: E402

from lmtrain.corpus import is_validation_document, python_stdlib_files  # noqa: E402
from lmtrain.tokenization import bpe_trainer, new_tokenizer  # noqa: E402
from lmtrain.tokenizer_report import BUILT_IN_CHINESE, python_prose, read_sample  # noqa: E402

VOCAB_SIZE = 8192
HELD_OUT = 0.1
MAX_CHARS = 8_000_000
"""Characters of each language read, so that sentencepiece trains in about a minute."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", default=[], metavar="PATH",
                        help="English text files or globs (.txt, .jsonl, .jsonl.gz, .parquet, .csv); "
                             "default: standard-library comments and docstrings")
    parser.add_argument("--zh-corpus", action="append", default=[], metavar="PATH", help="Chinese text files or globs")
    parser.add_argument("--text-column", default="text", help="text column of .jsonl/.parquet/.csv files")
    args = parser.parse_args()

    english = read_sample(args.corpus, args.text_column, MAX_CHARS) if args.corpus else stdlib_prose()
    chinese = read_sample(args.zh_corpus, args.text_column, MAX_CHARS) if args.zh_corpus else []
    train_en, held_en = split(english)
    train_zh, held_zh = split(chinese)
    if not held_zh:
        held_zh = [BUILT_IN_CHINESE]
    training = train_en + train_zh
    print(f"training text: {len(train_en):,} English + {len(train_zh):,} Chinese documents, "
          f"{sum(len(t.encode()) for t in training) / 1e6:.1f} MB; held out: {len(held_en):,} English, "
          f"{len(held_zh):,} Chinese{' (built-in passage: no --zh-corpus)' if not chinese else ''}; "
          f"vocab {VOCAB_SIZE:,}; {os.cpu_count()} CPU cores")

    ours, ours_s = train_ours(training)
    theirs, theirs_s = train_sentencepiece(training)
    rows = {}
    for lang, held in (("en", held_en), ("zh", held_zh)):
        lines = [line for text in held for line in text.split("\n") if line]
        size = sum(len(line.encode("utf-8")) for line in lines)
        ours_tokens = sum(len(e.ids) for e in ours.encode_batch_fast(lines, add_special_tokens=False))
        theirs_tokens = sum(len(ids) for ids in theirs.encode(lines))
        rows[lang] = (size / ours_tokens, size / theirs_tokens)

    print(f"\n{'':<28}{'ours (tokenizers)':>20}{'sentencepiece':>16}{'ours / theirs':>15}")
    print(f"{'training seconds':<28}{ours_s:>20.1f}{theirs_s:>16.1f}{ours_s / theirs_s:>15.2f}")
    for lang, (a, b) in rows.items():
        print(f"{'bytes/token, held-out ' + lang:<28}{a:>20.3f}{b:>16.3f}{a / b:>15.3f}")
    print(json.dumps({"train_time_vs_spm": round(ours_s / theirs_s, 3),
                      "bytes_per_token_vs_spm_en": round(rows["en"][0] / rows["en"][1], 3),
                      "bytes_per_token_vs_spm_zh": round(rows["zh"][0] / rows["zh"][1], 3)}))


def stdlib_prose() -> list[str]:
    texts, chars = [], 0
    for path in python_stdlib_files():
        try:
            prose = python_prose(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        if prose:
            texts.append(prose)
            chars += len(prose)
            if chars >= MAX_CHARS:
                break
    return texts


def split(texts: list[str]) -> tuple[list[str], list[str]]:
    held = [is_validation_document(t, HELD_OUT) for t in texts]
    return [t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h]


def train_ours(texts: list[str]):
    start = time.perf_counter()
    tokenizer = new_tokenizer()
    tokenizer.train_from_iterator((texts[i:i + 1000] for i in range(0, len(texts), 1000)),
                                  bpe_trainer(VOCAB_SIZE, min_frequency=2))
    return tokenizer, time.perf_counter() - start


def train_sentencepiece(texts: list[str]):
    lines = [line for text in texts for line in text.split("\n") if line]
    model = io.BytesIO()
    start = time.perf_counter()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, max_sentence_length=1 << 20,
        input_sentence_size=0, num_threads=os.cpu_count(), minloglevel=2)
    seconds = time.perf_counter() - start
    return spm.SentencePieceProcessor(model_proto=model.getvalue()), seconds


if __name__ == "__main__":
    main()
