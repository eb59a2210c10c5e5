"""Train the byte-level BPE tokenizer of a recipe and save it to tokenizer.dir.

    python tokenizer/train_tokenizer.py recipes/smoke/pretrain.yaml [key.path=value ...]

Re-running with unchanged settings and corpus reuses the saved tokenizer.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from lmtrain.cli import recipe_parser, run  # noqa: E402
from lmtrain.config import load_recipe  # noqa: E402
from lmtrain.tokenization import train_tokenizer, training_record  # noqa: E402


def main() -> None:
    args = recipe_parser(__doc__.splitlines()[0]).parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    start = time.perf_counter()
    tokenizer = train_tokenizer(recipe)
    stats = training_record(recipe.tokenizer.dir)["stats"]
    corpus = stats["corpus"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in corpus["skipped"].items()) or "none"
    print(f"tokenizer: {recipe.tokenizer.dir}")
    print(f"  vocab size            {len(tokenizer):,} ({stats['learned_vocab_size']:,} learned, "
          f"{stats['reserved_tokens_added']:,} reserved added)")
    print(f"  trained on            {stats['training_chars']:,} characters of {corpus['documents']:,} documents "
          f"(skipped: {skipped})")
    print(f"  training time         {stats['seconds']:.1f} s (this run: {time.perf_counter() - start:.1f} s)")
    bytes_per_token = stats["held_out_bytes_per_token"]
    print(f"  held-out bytes/token  {bytes_per_token if bytes_per_token is not None else 'n/a (no validation documents)'}")


if __name__ == "__main__":
    run(main)
