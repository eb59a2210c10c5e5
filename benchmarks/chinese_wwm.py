"""The cost of Chinese whole-word masking: DynamicMasker's time per block with objective.chinese_words=jieba against
whole-word masking by characters and against plain token masking, in the same run, on one core.

    python benchmarks/chinese_wwm.py --corpus ../shared/data/zh/ChnSentiCorp_htl_all.csv --text-column review
    python benchmarks/chinese_wwm.py            # the standard library's Chinese codec test texts, repeated

A tokenizer is trained on the corpus (tokenizer/train_tokenizer.py's code, an encoder vocabulary of --vocab), the
documents are encoded and packed as the encoder trains on them ([CLS], then documents each ended by [SEP]) into
--blocks blocks of --seq-len tokens, and each masker masks every block, one at a time as in training, --repeats
times; the fastest pass counts. Prints a line per masker, then one JSON line: `jieba_vs_characters` is the jieba
masker's time over the characters masker's, `segment_ms_per_block` the segmentation alone (ChineseWords),
`linear_expansion_speedup` the characters masker with transformers' own whole-word expansion over ours.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import rjieba
import torch
import yaml
from transformers import DataCollatorForLanguageModeling

from lmtrain.config.recipe import ObjectiveConfig, load_recipe
from lmtrain.data.masking import DynamicMasker
from lmtrain.data.words import ChineseWords, is_han, token_bytes
from lmtrain.tokenizer.bpe import train_tokenizer

CODEC_TEXTS = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
WHOLE_WORDS = {"kind": "mlm", "mask_rate": 0.15, "whole_word_mask": True, "mask_replace_prob": 1.0,
               "random_replace_prob": 0.0}  # fmt: skip
MASKERS = {
    "tokens": {"kind": "mlm", "mask_rate": 0.15},
    "characters": WHOLE_WORDS | {"chinese_words": "characters"},
    "jieba": WHOLE_WORDS | {"chinese_words": "jieba"},
    "characters_library_expansion": WHOLE_WORDS | {"chinese_words": "characters"},
}
"""The last: transformers' own whole-word expansion (a tokens x tokens matrix per block) in place of
LinearWholeWordCollator's, the baseline of that change."""

HAN_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
"""Runs of Chinese characters (the Basic Multilingual Plane's blocks), what the comparison with `jieba` segments."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--corpus", help="a .txt file (one document per line) or a .csv file (default: the codec texts)"
    )
    parser.add_argument("--text-column", default="text", help="the .csv column that holds the text")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=1024, help="modernbert-base's 1,024; BERT's 128 and 512")
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--against-jieba",
        action="store_true",
        help="also segment the corpus's Chinese with the `jieba` package (pip install jieba==0.42.1) and compare",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the cost per core; masking runs in the training process
    documents = read_documents(args.corpus, args.text_column)
    with tempfile.TemporaryDirectory(prefix="chinese-wwm-") as tmp:
        tokenizer = train_on(Path(tmp), documents, args)
    blocks = pack(tokenizer, documents, args.blocks, args.seq_len)
    pieces = token_bytes(tokenizer)
    text = b"".join(pieces[i] for i in blocks.flatten().tolist()).decode("utf-8", "replace")
    han_share = is_han(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)).mean()
    print(f"{len(blocks)} blocks of {args.seq_len} tokens, {len(text) / blocks.numel():.2f} characters per token, "
          f"{han_share:.1%} of them Chinese")  # fmt: skip
    ms = {
        name: time_masker(tokenizer, objective, blocks, args.repeats, name.endswith("library_expansion"))
        for name, objective in MASKERS.items()
    }
    segment_ms = time_segmentation(tokenizer, blocks, args.repeats)
    for name, value in ms.items():
        print(f"{name:>28}: {value:7.3f} ms/block, {args.seq_len / value * 1000:12,.0f} tokens/s on one core")
    print(f"segmentation alone (ChineseWords): {segment_ms:.3f} ms/block")
    if args.against_jieba:
        compare_with_jieba_package(documents)
    print(json.dumps({
        "jieba_vs_characters": ms["jieba"] / ms["characters"], "jieba_vs_tokens": ms["jieba"] / ms["tokens"],
        "linear_expansion_speedup": ms["characters_library_expansion"] / ms["characters"],
        "ms_per_block": ms, "segment_ms_per_block": segment_ms,
        "jieba_tokens_per_s_one_core": args.seq_len / ms["jieba"] * 1000, "seq_len": args.seq_len,
        "blocks": len(blocks), "han_share": han_share, "corpus": args.corpus or "cjkencodings",
    }))  # fmt: skip


def compare_with_jieba_package(documents: list[str]) -> None:
    """rjieba against the `jieba` package on every run of Chinese in the documents: the same words (HMM on, then off)
    and each one's characters per second on one core. `jieba` is not a dependency of the project."""
    import jieba

    runs = [run for text in documents for run in HAN_RUN.findall(text)]
    chars = sum(map(len, runs))
    start = time.perf_counter()
    package = jieba.Tokenizer()  # its own instance, as ChineseWords keeps its own rjieba one
    package.initialize()
    print(f"jieba: {len(runs):,} runs of Chinese, {chars:,} characters; dictionary built in "
          f"{time.perf_counter() - start:.2f} s")  # fmt: skip
    ours = rjieba.Jieba()
    for hmm in (True, False):
        rates, words = {}, {}
        for name, cut in (("jieba", lambda r: package.lcut(r, HMM=hmm)), ("rjieba", lambda r: ours.cut(r, hmm))):
            start = time.perf_counter()
            words[name] = [w for run in runs for w in cut(run)]
            rates[name] = chars / (time.perf_counter() - start)
        same, speedup = words["jieba"] == words["rjieba"], rates["rjieba"] / rates["jieba"]
        print(f"HMM {'on ' if hmm else 'off'}: {len(words['jieba']):,} words, identical: {same}; characters/s: "
              f"jieba {rates['jieba']:,.0f}, rjieba {rates['rjieba']:,.0f} ({speedup:.1f}x)")  # fmt: skip


def read_documents(corpus: str | None, text_column: str) -> list[str]:
    if corpus is None:
        return [p.read_text(encoding="utf-8") for p in sorted(CODEC_TEXTS.glob("g*-utf8.txt"))]
    if corpus.endswith(".csv"):
        with open(corpus, encoding="utf-8", newline="") as f:
            return [row[text_column] for row in csv.DictReader(f) if row[text_column]]
    return [line for line in Path(corpus).read_text(encoding="utf-8").splitlines() if line.strip()]


def train_on(root: Path, documents: list[str], args):
    """An encoder tokenizer trained on the documents by the project's own trainer, as a recipe would."""
    (root / "corpus.txt").write_text("\n".join(documents), encoding="utf-8")
    recipe = {
        "tokenizer": {"vocab_size": args.vocab, "dir": str(root / "tokenizer")},
        "data": {
            "sources": [{"kind": "files", "paths": [str(root / "corpus.txt")], "txt_documents": "lines"}],
            "dir": str(root / "data"),
            "seq_len": args.seq_len,
        },  # fmt: skip
        "model": {"architecture": "modernbert"},
        "objective": {"kind": "mlm"},
        "run_dir": str(root / "run"),
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return train_tokenizer(load_recipe(root / "recipe.yaml"))


def pack(tokenizer, documents: list[str], n_blocks: int, seq_len: int) -> torch.Tensor:
    """[CLS], then documents each ended by [SEP], cut into blocks; the documents repeat if they are too few."""
    encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    while len(stream) < n_blocks * (seq_len - 1):
        for ids in encoded:
            stream += [*ids, tokenizer.sep_token_id]
    body = torch.tensor(stream[: n_blocks * (seq_len - 1)]).view(n_blocks, seq_len - 1)
    return torch.cat([torch.full((n_blocks, 1), tokenizer.cls_token_id), body], dim=1)


def time_masker(tokenizer, objective: dict, blocks: torch.Tensor, repeats: int, library_expansion: bool) -> float:
    """The fastest pass's milliseconds per block, masking one block per call as the encoder's batches do."""
    masker = DynamicMasker(tokenizer, ObjectiveConfig(**objective), seed=0)
    if library_expansion:
        masker.collator._whole_word_mask = DataCollatorForLanguageModeling._whole_word_mask
    indices = np.arange(len(blocks))
    return best_ms(lambda: [masker(blocks[i : i + 1], indices[i : i + 1], 1) for i in indices], len(blocks), repeats)


def time_segmentation(tokenizer, blocks: torch.Tensor, repeats: int) -> float:
    words = ChineseWords(token_bytes(tokenizer))
    arrays = [ids.numpy() for ids in blocks]
    return best_ms(lambda: [words.inside_words(ids) for ids in arrays], len(blocks), repeats)


def best_ms(work, n_blocks: int, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times) / n_blocks * 1000


if __name__ == "__main__":
    main()
