"""Our tokenizer training vs sentencepiece BPE: training time, and bytes per token on held-out English and Chinese.

    python benchmarks/tokenizer_vs_sentencepiece.py [--corpus PATH ...] [--zh-corpus PATH ...] [--text-column NAME]
                                                    [--repeats N] [--per-language] [--input-stage] [--bytes]

Both train byte-fallback/byte-level BPE with the same vocabulary size on the same text, with no
normalization (sentencepiece: identity rule, digits split, byte fallback, whitespace kept), on the
same cores. The text: English (by default the comments and docstrings of the running interpreter's
standard library, offline on every machine) and Chinese (--zh-corpus; without it, only a short
built-in passage is measured and nothing Chinese is trained on, which the output says). Documents
are split 90/10 into training and held-out text by a hash, the same for both tokenizers.

Each trains --repeats times (default 3), alternating ours and theirs so that both see the same
machine load, and the best (shortest) time of each is compared. --per-language also times each
trained on English only and on Chinese only. --input-stage also times `tokenizers`' trainer with no
merges at all (reading the text, counting its words and their pairs): a floor under any training
with it, whatever the merges cost. --bytes also times the plain byte-level trainer
(`new_tokenizer()` + `bpe_trainer()`, how this project trained before) and measures its
compression. Prints a table, then one JSON line: train_time_vs_spm
(ours / theirs), bytes_per_token_vs_spm_en and bytes_per_token_vs_spm_zh (ours / theirs: above 1
means we compress better).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import sentencepiece as spm  # noqa: E402
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from lmtrain.corpus.sources import is_validation_document, python_stdlib_files  # noqa: E402
from lmtrain.tokenizer.bpe import SPLIT_PATTERN, bpe_trainer, new_tokenizer, train_bpe  # noqa: E402
from lmtrain.tokenizer.report import BUILT_IN_CHINESE, python_prose, read_sample  # noqa: E402

VOCAB_SIZE = 8192
HELD_OUT = 0.1
MAX_CHARS = 8_000_000
"""Characters of each language read, so that sentencepiece trains in about a minute."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="PATH",
        help="English text files or globs (.txt, .jsonl, .jsonl.gz, .parquet, .csv); "
        "default: standard-library comments and docstrings",
    )
    parser.add_argument("--zh-corpus", action="append", default=[], metavar="PATH", help="Chinese text files or globs")
    parser.add_argument("--text-column", default="text", help="text column of .jsonl/.parquet/.csv files")
    parser.add_argument("--repeats", type=int, default=3, help="trainings of each, alternating; the best counts")
    parser.add_argument("--per-language", action="store_true", help="also time each on English only and Chinese only")
    parser.add_argument(
        "--input-stage",
        action="store_true",
        help="also time tokenizers' trainer with no merges (a floor under its training time)",
    )
    parser.add_argument("--bytes", action="store_true", help="also time and measure the plain byte-level trainer")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    english = read_sample(args.corpus, args.text_column, MAX_CHARS) if args.corpus else stdlib_prose()
    chinese = read_sample(args.zh_corpus, args.text_column, MAX_CHARS) if args.zh_corpus else []
    train_en, held_en = split(english)
    train_zh, held_zh = split(chinese)
    if not held_zh:
        held_zh = [BUILT_IN_CHINESE]
    training = train_en + train_zh
    print(
        f"training text: {len(train_en):,} English + {len(train_zh):,} Chinese documents, "
        f"{sum(len(t.encode()) for t in training) / 1e6:.1f} MB; held out: {len(held_en):,} English, "
        f"{len(held_zh):,} Chinese{' (built-in passage: no --zh-corpus)' if not chinese else ''}; "
        f"vocab {VOCAB_SIZE:,}; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}"
    )

    ours, ours_s, theirs, theirs_s = race(training, args.repeats, "all training text")
    if args.per_language:
        for lang, texts in (("English only", train_en), ("Chinese only", train_zh)):
            if texts:
                race(texts, args.repeats, lang)
    if args.input_stage:
        race(training, args.repeats, "all, ours with no merges", train_input_stage)
    if args.bytes:
        plain, _, spm_model, _ = race(training, args.repeats, "all, ours trained on bytes", train_bytes)
        measured = {lang: bytes_per_token(plain, spm_model, held) for lang, held in (("en", held_en), ("zh", held_zh))}
        print(
            "  trained on bytes, bytes/token ours / theirs: "
            + ", ".join(f"{lang} {a:.3f} / {b:.3f}" for lang, (a, b) in measured.items())
        )
    rows = {lang: bytes_per_token(ours, theirs, held) for lang, held in (("en", held_en), ("zh", held_zh))}

    print(f"\nload average now {os.getloadavg()[0]:.1f}")
    print(f"\n{'':<28}{'ours (tokenizers)':>20}{'sentencepiece':>16}{'ours / theirs':>15}")
    print(f"{'training seconds (best)':<28}{ours_s:>20.2f}{theirs_s:>16.2f}{ours_s / theirs_s:>15.2f}")
    for lang, (a, b) in rows.items():
        print(f"{'bytes/token, held-out ' + lang:<28}{a:>20.3f}{b:>16.3f}{a / b:>15.3f}")
    print(
        json.dumps(
            {
                "train_time_vs_spm": round(ours_s / theirs_s, 3),
                "bytes_per_token_vs_spm_en": round(rows["en"][0] / rows["en"][1], 3),
                "bytes_per_token_vs_spm_zh": round(rows["zh"][0] / rows["zh"][1], 3),
            }
        )
    )


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


def bytes_per_token(ours: Tokenizer, theirs: spm.SentencePieceProcessor, held: list[str]) -> tuple[float, float]:
    """Bytes per token of each on the held-out texts, line by line (sentencepiece trains on lines)."""
    lines = [line for text in held for line in text.split("\n") if line]
    size = sum(len(line.encode("utf-8")) for line in lines)
    ours_tokens = sum(len(e.ids) for e in ours.encode_batch_fast(lines, add_special_tokens=False))
    theirs_tokens = sum(len(ids) for ids in theirs.encode(lines))
    return size / ours_tokens, size / theirs_tokens


def race(texts: list[str], repeats: int, label: str, train=None):
    """Train both `repeats` times, alternating; the tokenizers and best times of each."""
    ours_times, theirs_times = [], []
    for _ in range(repeats):
        ours, seconds = (train or train_ours)(texts)
        ours_times.append(seconds)
        theirs, seconds = train_sentencepiece(texts)
        theirs_times.append(seconds)
    print(
        f"{label}: ours {' '.join(f'{t:.2f}' for t in ours_times)} s, sentencepiece "
        f"{' '.join(f'{t:.2f}' for t in theirs_times)} s; best {min(ours_times):.2f} / {min(theirs_times):.2f} "
        f"= {min(ours_times) / min(theirs_times):.2f}"
    )
    return ours, min(ours_times), theirs, min(theirs_times)


def train_ours(texts: list[str]):
    start = time.perf_counter()
    tokenizer = train_bpe((texts[i : i + 1000] for i in range(0, len(texts), 1000)), VOCAB_SIZE, min_frequency=2)
    return tokenizer, time.perf_counter() - start


def train_bytes(texts: list[str]):
    start = time.perf_counter()
    tokenizer = new_tokenizer()
    tokenizer.train_from_iterator(
        (texts[i : i + 1000] for i in range(0, len(texts), 1000)), bpe_trainer(VOCAB_SIZE, min_frequency=2)
    )
    return tokenizer, time.perf_counter() - start


def train_input_stage(texts: list[str]):
    """`tokenizers`' BPE trainer as `train_bpe` runs it (on characters, same pre-tokenizer; its input stage
    uses every core), with a vocabulary smaller than the alphabet: it reads the text, counts words and
    pairs, merges nothing."""
    start = time.perf_counter()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    tokenizer.train_from_iterator(
        (texts[i : i + 1000] for i in range(0, len(texts), 1000)),
        trainers.BpeTrainer(vocab_size=1, show_progress=False),
    )
    return tokenizer, time.perf_counter() - start


def train_sentencepiece(texts: list[str]):
    lines = [line for text in texts for line in text.split("\n") if line]
    model = io.BytesIO()
    start = time.perf_counter()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        max_sentence_length=1 << 20,
        input_sentence_size=0,
        num_threads=os.cpu_count(),
        minloglevel=2,
    )
    seconds = time.perf_counter() - start
    return spm.SentencePieceProcessor(model_proto=model.getvalue()), seconds


if __name__ == "__main__":
    main()
