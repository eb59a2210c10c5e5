"""What every entry point shares: recipe arguments and clean error reporting."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from lmtrain.errors import Preempted, UserError


def recipe_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser taking `RECIPE [key.path=value ...]`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/smoke/pretrain.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override recipe values, e.g. train.lr=1e-3 data.seq_len=256 run_dir=runs/try",
    )
    return parser


def run(main: Callable[[], None]) -> None:
    """Run an entry point; a UserError becomes one clear message and exit status 2, not a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Preempted as exc:
        if os.environ.get("RANK", "0") == "0":  # every rank stops; one says so
            print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
