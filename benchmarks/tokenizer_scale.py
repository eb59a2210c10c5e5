"""Peak memory and time of tokenizer training at growing sample sizes, English/code and Chinese apart.

    python benchmarks/tokenizer_scale.py [--zh PATH.csv --zh-column review]

Each size trains the recipe's byte-level BPE (tokenizer/train_tokenizer.py's path: read, clean, train, report) in
a fresh process with tokenizer.max_training_chars set to the size, vocabulary 64,000 as the 7B's, and reports its
peak RSS and wall time. Code: the standard library (31.5 MB). Chinese: a CSV given with --zh (the dev machine has
2.9 MB of hotel reviews). Memory and time per million characters, above what the process needs at the smallest size, compare the two; the
extrapolation to the 7B's 5 GB sample is the straight line through the smallest and largest sizes (an estimate:
at these sizes the fixed start-up memory and time dominate).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys
from lmtrain.config.recipe import load_recipe
from lmtrain.tokenizer.bpe import train_tokenizer
train_tokenizer(load_recipe(sys.argv[1], sys.argv[2:]))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
SEVEN_B_SAMPLE_CHARS = 5e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zh", help="a CSV of Chinese text")
    parser.add_argument("--zh-column", default="review")
    args = parser.parse_args()
    series = {"code": ([{"kind": "python_stdlib"}], [2_000_000, 4_000_000, 8_000_000, 16_000_000])}
    if args.zh:
        zh = [{"kind": "files", "paths": [args.zh], "text_column": args.zh_column}]
        series["zh"] = (zh, [250_000, 500_000, 1_000_000])
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (sources, sizes) in series.items():
            points = [train(Path(tmp) / f"{name}{chars}", sources, chars) for chars in sizes]
            for chars, (rss, seconds) in zip(sizes, points):
                print(f"{name:<5} {chars:>12,} chars: peak RSS {rss:8.0f} MB, {seconds:6.1f} s")
            (c1, (r1, s1)), (c2, (r2, s2)) = (sizes[0], points[0]), (sizes[-1], points[-1])
            rss_slope = (r2 - r1) / (c2 - c1) * 1e6  # MB per million characters, above the fixed start-up memory
            result[name] = {
                "chars": sizes,
                "peak_rss_mb": [round(r) for r, _ in points],
                "seconds": [round(s, 1) for _, s in points],
                "rss_mb_per_million_chars": round(rss_slope, 2),
                "seconds_per_million_chars": round((s2 - s1) / (c2 - c1) * 1e6, 3),
                "estimate_5GB_rss_gb": round((r2 + rss_slope * (SEVEN_B_SAMPLE_CHARS - c2) / 1e6) / 1024, 1),
            }
    print(json.dumps(result))


def train(root: Path, sources: list[dict], chars: int) -> tuple[float, float]:
    recipe = {
        "tokenizer": {"dir": str(root / "tokenizer"), "vocab_size": 64000, "max_training_chars": chars},
        "data": {"dir": str(root / "data"), "sources": sources, "clean": {"strip_html": False}},
    }
    path = root / "recipe.yaml"
    root.mkdir(parents=True)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=os.environ | {"PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"], time.perf_counter() - start


if __name__ == "__main__":
    main()
