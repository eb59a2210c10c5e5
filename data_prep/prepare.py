"""Clean, tokenize and pack a recipe's corpus into train/validation splits in data.dir.

    python data_prep/prepare.py recipes/smoke/pretrain.yaml [key.path=value ...]

Needs the recipe's tokenizer (python tokenizer/train_tokenizer.py RECIPE). Re-running with
unchanged inputs reuses data.dir; see data.dir/manifest.json for what went in.
"""

from lmtrain.cli import recipe_parser, run
from lmtrain.config.recipe import load_recipe
from lmtrain.data.prepare import prepare_data


def main() -> None:
    args = recipe_parser(__doc__.splitlines()[0]).parse_intermixed_args()
    recipe = load_recipe(args.recipe, args.overrides)
    manifest = prepare_data(recipe)
    docs = manifest["documents"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in docs["skipped"].items()) or "none"
    dedup, filters = manifest["dedup"], manifest["filters"]
    print(
        f"data: {recipe.data.dir} (seq_len {manifest['inputs']['seq_len']}, "
        f"tokenizer {manifest['inputs']['tokenizer_fingerprint'][:12]}, built in {manifest['seconds']:.1f} s)"
    )
    print(f"  documents: {docs['read']:,} read, {docs['kept']:,} packed; skipped: {skipped}")
    removed = ", ".join(f"{n} {reason}" for reason, n in filters["removed"].items()) or "none"
    print(f"  quality filters removed: {removed}; boilerplate lines removed: {filters['boilerplate_lines_removed']:,}")
    print(f"  duplicates removed: {dedup['exact_duplicates']:,} exact, {dedup['near_duplicates']:,} near")
    print(f"  {'source':<40}{'weight':>8}{'target':>8}{'documents':>11}{'tokens':>14}  (weights apply when training)")
    for s in manifest["sources"]:
        print(
            f"  {s['name'][-40:]:<40}{s['weight']:>8g}{s['target_token_share']:>8.1%}"
            f"{s['documents']:>11,}{s['tokens']:>14,}"
        )
    print(f"  {'split':<12}{'documents':>12}{'tokens':>14}{'blocks':>10}{'dropped tail':>14}")
    for split, s in manifest["splits"].items():
        print(f"  {split:<12}{s['documents']:>12,}{s['tokens']:>14,}{s['blocks']:>10,}{s['dropped_tail_tokens']:>14,}")


if __name__ == "__main__":
    run(main)
