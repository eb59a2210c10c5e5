"""Train the byte-level BPE tokenizer of a recipe and save it to tokenizer.dir.

    python tokenizer/train_tokenizer.py recipes/smoke/pretrain.yaml [key.path=value ...] [--zh-sample FILE ...]

Re-running with unchanged settings and corpus reuses the saved tokenizer. Writes a quality
report (quality_report.json: bytes per token on held-out English, Chinese and code, vocabulary
share by script) next to it; --en-sample/--zh-sample/--code-sample measure on your own files.
"""

import json
import time
from pathlib import Path

from lmtrain.cli import recipe_parser, run
from lmtrain.config.recipe import load_recipe
from lmtrain.tokenizer.bpe import train_tokenizer, training_record
from lmtrain.tokenizer.report import REPORT


def main() -> None:
    parser = recipe_parser(__doc__.splitlines()[0])
    for lang in ("en", "zh", "code"):
        parser.add_argument(
            f"--{lang}-sample",
            action="append",
            default=[],
            metavar="FILE",
            help=f"held-out {lang} text for the quality report (.txt, .jsonl, .jsonl.gz, .parquet "
            "or .csv; globs; repeatable)",
        )
    parser.add_argument(
        "--sample-text-column",
        default="text",
        metavar="NAME",
        help="the column holding the text in .jsonl/.parquet/.csv sample files (default: text)",
    )
    args = parser.parse_intermixed_args()
    recipe = load_recipe(args.recipe, args.overrides)
    start = time.perf_counter()
    samples = {"en": args.en_sample, "zh": args.zh_sample, "code": args.code_sample}
    tokenizer = train_tokenizer(
        recipe, {lang: paths for lang, paths in samples.items() if paths}, args.sample_text_column
    )
    stats = training_record(recipe.tokenizer.dir)["stats"]
    corpus = stats["corpus"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in corpus["skipped"].items()) or "none"
    print(f"tokenizer: {recipe.tokenizer.dir}")
    print(
        f"  vocab size            {len(tokenizer):,} ({stats['learned_vocab_size']:,} learned, "
        f"{stats['reserved_tokens_added']:,} reserved added)"
    )
    print(
        f"  trained on            {stats['training_chars']:,} characters of {corpus['documents']:,} documents "
        f"(skipped: {skipped})"
    )
    print(f"  training time         {stats['seconds']:.1f} s (this run: {time.perf_counter() - start:.1f} s)")
    bytes_per_token = stats["held_out_bytes_per_token"]
    print(
        f"  held-out bytes/token  {bytes_per_token if bytes_per_token is not None else 'n/a (no validation documents)'}"
    )
    report_path = Path(recipe.tokenizer.dir) / REPORT
    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(f"  quality report        {report_path}")
    for lang, value in report["bytes_per_token"].items():
        sample = report["samples"][lang]
        print(
            f"    {lang:<6} {value if value is not None else 'n/a':>6} bytes/token  "
            f"({sample['bytes']:,} bytes: {sample['source']})"
        )
    shares = ", ".join(f"{script} {share:.1%}" for script, share in report["vocabulary_share_by_script"].items())
    print(f"    vocabulary by script: {shares}")


if __name__ == "__main__":
    run(main)
