"""Tokenize+pack throughput and memory of data_prep, against the run_clm.py way and the raw tokenizer.

    python benchmarks/data_prep_speed.py [--corpus PATH ...] [--text-column NAME] [--batch-size N]

Same corpus, same tokenizer (byte-level BPE, 8,192 tokens, trained on the corpus first), same
cores, documents already cleaned and in memory; each way runs ROUNDS times in turn and its
fastest run counts (shared machines are noisy):
- raw limit: the tokenizer's own batch encoding (`tokenizers`' `encode_batch_fast`), no I/O, nothing kept;
- tiktoken limit: the encoder this pipeline uses (lmtrain.tokenizer.bpe.CorpusEncoder: tiktoken's BPE on
  the same merges, giving the same ids) alone, without its spot check: the limit of this pipeline;
- run_clm: a faithful reimplementation of transformers' examples/pytorch/language-modeling/run_clm.py
  data path: `Dataset.map(tokenize, batched=True)` then `Dataset.map(group_texts, batched=True)`;
- this pipeline: lmtrain.data.workers' tokenize and write stage (CorpusEncoder -> ShardWriter), writing
  uint16 token shards to disk (blocks are cut when read, lmtrain/data/shards.py).
Then memory: peak RSS of the whole `prepare_data` (read, clean, tokenize, pack, save; dedup off,
since the larger corpus is the same text 4 times) on the corpus and on 4 copies of it, each in a
fresh process. Prints a table, then one JSON line: tokens_per_s, vs_run_clm, vs_raw_limit, rss_growth_4x,
and vs_tiktoken_limit.

The default corpus is the running interpreter's standard library (offline on every machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import yaml  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.corpus.cleaning import clean_text  # noqa: E402
from lmtrain.corpus.sources import (
    is_validation_document,  # noqa: E402
    python_stdlib_files,  # noqa: E402
)
from lmtrain.data.shards import ShardWriter, token_dtype  # noqa: E402
from lmtrain.tokenizer.bpe import corpus_encoder, load_tokenizer, train_tokenizer  # noqa: E402
from lmtrain.tokenizer.report import read_sample  # noqa: E402

SEQ_LEN = 1024
ROUNDS = 3
VOCAB_SIZE = 8192
PEAK_RSS_CHILD = """
import json, resource, sys
from lmtrain.config.recipe import load_recipe
from lmtrain.data.prepare import prepare_data
manifest = prepare_data(load_recipe({recipe!r}))
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": manifest["seconds"], "tokens": sum(s["tokens"] for s in manifest["splits"].values())}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="PATH",
        help="local files or globs (.txt, .jsonl, .jsonl.gz, .parquet, .csv); default: the stdlib",
    )
    parser.add_argument("--text-column", default="text", help="text column of .jsonl/.parquet/.csv files")
    parser.add_argument("--batch-size", type=int, default=1000, help="documents per tokenizer batch (data.batch_size)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="data_prep_speed-") as tmp:
        tmp = Path(tmp)
        corpus = write_corpus(tmp, args.corpus, args.text_column, copies=1)
        corpus_4x = write_corpus(tmp, args.corpus, args.text_column, copies=4)
        recipe_path = write_recipe(tmp, corpus, "1x")
        recipe = load_recipe(recipe_path)
        train_tokenizer(recipe)
        texts = [clean_text(t, recipe.data.clean) for t in read_sample([str(corpus)], max_chars=sys.maxsize)]
        encoder = corpus_encoder(recipe.tokenizer.dir)
        if encoder.fast is None:
            sys.exit(f"the tokenizer in {recipe.tokenizer.dir} is not one tiktoken can encode")
        eos_id = load_tokenizer(recipe.tokenizer.dir).eos_token_id
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        print(f"corpus: {len(texts):,} documents, {mb:.1f} MB; {os.cpu_count()} CPU cores; seq_len {SEQ_LEN}")

        runs = []
        for round_ in range(ROUNDS):
            runs.append(
                (
                    raw_limit(
                        texts,
                        args.batch_size,
                        lambda batch: [
                            e.ids for e in encoder.reference.encode_batch_fast(batch, add_special_tokens=False)
                        ],
                    ),
                    raw_limit(texts, args.batch_size, encoder.fast_ids),
                    run_clm_way(texts, recipe.tokenizer.dir, args.batch_size, tmp / f"clm_{round_}"),
                    this_pipeline(texts, recipe.tokenizer.dir, eos_id, args.batch_size, tmp / f"ours_{round_}"),
                )
            )
        (raw_tokens, raw_s), (tk_tokens, tk_s), (clm_tokens, clm_s), (ours_tokens, ours_s) = (
            min((run[way] for run in runs), key=lambda r: r[1]) for way in range(4)
        )
        assert raw_tokens == tk_tokens == clm_tokens == ours_tokens, (raw_tokens, tk_tokens, clm_tokens, ours_tokens)

        rss_1x = peak_rss(recipe_path)
        rss_4x = peak_rss(write_recipe(tmp, corpus_4x, "4x"))

    rates = {
        "raw limit (tokenizers encode_batch_fast)": raw_tokens / raw_s,
        "tiktoken limit (CorpusEncoder.fast_ids)": tk_tokens / tk_s,
        "run_clm way (map tokenize + group_texts)": clm_tokens / clm_s,
        "this pipeline (tokenize + pack + write)": ours_tokens / ours_s,
    }
    print(f"\n{'tokenize + pack (fastest of ' + str(ROUNDS) + ')':<44}{'seconds':>10}{'tokens/s':>14}")
    for (name, rate), seconds in zip(rates.items(), (raw_s, tk_s, clm_s, ours_s)):
        print(f"{name:<44}{seconds:>10.2f}{rate:>14,.0f}")
    print(f"\n{'prepare_data, whole (fresh process)':<44}{'peak RSS MB':>12}{'seconds':>10}{'tokens':>14}")
    for name, r in (("corpus", rss_1x), ("corpus x 4", rss_4x)):
        print(f"{name:<44}{r['peak_rss_mb']:>12,.0f}{r['seconds']:>10.1f}{r['tokens']:>14,}")
    ours = ours_tokens / ours_s
    print(
        json.dumps(
            {
                "tokens_per_s": round(ours),
                "vs_run_clm": round(ours / (clm_tokens / clm_s), 2),
                "vs_raw_limit": round(ours / (raw_tokens / raw_s), 3),
                "rss_growth_4x": round(rss_4x["peak_rss_mb"] / rss_1x["peak_rss_mb"] - 1, 3),
                "vs_tiktoken_limit": round(ours / (tk_tokens / tk_s), 3),
            }
        )
    )


def write_corpus(tmp: Path, paths: list[str], text_column: str, copies: int) -> Path:
    """The corpus as one JSONL file (`copies` times over), so every run reads the same bytes."""
    texts = read_sample(paths, text_column, max_chars=sys.maxsize) if paths else _stdlib_texts()
    path = tmp / f"corpus_{copies}x.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            for text in texts:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def _stdlib_texts() -> list[str]:
    texts = []
    for path in python_stdlib_files():
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue  # four files are deliberately not UTF-8
    return texts


def write_recipe(tmp: Path, corpus: Path, name: str) -> Path:
    recipe = {
        "tokenizer": {"dir": str(tmp / "tokenizer"), "vocab_size": VOCAB_SIZE},
        "data": {
            "dir": str(tmp / f"data_{name}"),
            "seq_len": SEQ_LEN,
            "validation_fraction": 0.02,
            "sources": [{"kind": "files", "paths": [str(corpus)]}],
            "clean": {"strip_html": False, "min_chars": 32},
            "dedup": {"exact": False, "near": False},
        },
    }
    path = tmp / f"recipe_{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def raw_limit(texts: list[str], batch_size: int, encode_batch) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), batch_size):
        tokens += sum(map(len, encode_batch(texts[i : i + batch_size])))
    return tokens, time.perf_counter() - start


def run_clm_way(texts: list[str], tokenizer_dir: str, batch_size: int, cache: Path) -> tuple[int, float]:
    """run_clm.py's tokenize_function and group_texts, with its default map settings."""
    tokenizer = load_tokenizer(tokenizer_dir)
    raw = datasets.Dataset.from_dict({"text": texts})
    raw.to_parquet(str(cache / "raw.parquet"))
    raw = datasets.load_dataset("parquet", data_files=str(cache / "raw.parquet"), split="train", cache_dir=str(cache))

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // SEQ_LEN) * SEQ_LEN
        result = {k: [t[i : i + SEQ_LEN] for i in range(0, total_length, SEQ_LEN)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    start = time.perf_counter()
    tokenized = raw.map(
        tokenize_function,
        batched=True,
        batch_size=batch_size,
        remove_columns=["text"],
        load_from_cache_file=False,
        desc="run_clm: tokenize",
    )
    tokenized.map(
        group_texts, batched=True, batch_size=batch_size, load_from_cache_file=False, desc="run_clm: group_texts"
    )
    seconds = time.perf_counter() - start
    return sum(len(ids) for ids in tokenized["input_ids"]), seconds


def this_pipeline(texts: list[str], tokenizer_dir: str, eos_id: int, batch_size: int, out: Path) -> tuple[int, float]:
    encoder = corpus_encoder(tokenizer_dir)  # loaded before the clock starts, as run_clm_way's tokenizer
    start = time.perf_counter()
    dtype = token_dtype(VOCAB_SIZE)
    writers = {split: ShardWriter(out / split / "00000.bin", dtype, eos_id) for split in ("train", "validation")}
    tokens = 0
    for i in range(0, len(texts), batch_size):
        batch = texts[i : i + batch_size]
        ids = encoder.encode_batch(batch)
        held_out = [is_validation_document(text, 0.02) for text in batch]
        writers["train"].add([d for d, v in zip(ids, held_out) if not v])
        writers["validation"].add([d for d, v in zip(ids, held_out) if v])
        tokens += sum(map(len, ids))
    for writer in writers.values():
        writer.close()
    return tokens, time.perf_counter() - start


def peak_rss(recipe: Path) -> dict:
    code = PEAK_RSS_CHILD.format(recipe=str(recipe))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
