"""Peak memory and time of tokenizer training at growing sample sizes, English/code and Chinese apart.

    python benchmarks/tokenizer_scale.py [--zh PATH.csv --zh-column review] [--zh-bounds 0,4]

Each size trains the recipe's byte-level BPE (tokenizer/train_tokenizer.py's path: read, clean, train, report) in
a fresh process with tokenizer.max_training_chars set to the size, vocabulary 64,000 as the 7B's, and reports its
peak RSS, the trainer's part of it (the peak during `train_bpe`, which reads the text as it trains, above the RSS
when it starts) and wall time.
Code: the standard library (31.5 MB). Chinese: a CSV given with --zh (the dev machine has 2.9 MB of hotel
reviews, about 1M characters), trained once per --zh-bounds value: the bound on CJK pre-tokens while training
(tokenizer.cjk_training_chunk_chars; 0 = a run kept whole, format version 3, the baseline; default: 0 and the
project's CJK_TRAINING_CHUNK_CHARS). Slopes: trainer MB per million characters between each two
successive sizes, so that growth faster than linear shows as rising slopes, and the least-squares slope over all
sizes; the extrapolation to the 7B's 5 GB sample is the straight line at that slope (an estimate from small
samples). Each bounded Chinese series is compared with the unbounded one of the same run (`vs_unbounded`: fitted
slope and held-out bytes/token at the largest size), and every series with code (`fitted_slope_vs_code`).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from lmtrain.tokenizer.bpe import CJK_TRAINING_CHUNK_CHARS, TRAINING_RECORD  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, re, sys
from pathlib import Path
from lmtrain.config.recipe import load_recipe
from lmtrain.tokenizer import bpe

def rss_mb(field):  # VmRSS: now; VmHWM: the peak since start or since the last reset
    return int(re.search(field + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

peaks, train_bpe = [], bpe.train_bpe

def measured_train_bpe(*args, **kwargs):
    peaks.append(rss_mb("VmHWM"))
    start = rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, so that the next peak is the trainer's
    result = train_bpe(*args, **kwargs)
    peaks.append(rss_mb("VmHWM"))
    measured["trainer_rss_mb"] = peaks[-1] - start
    return result

measured = {}
bpe.train_bpe = measured_train_bpe
bpe.train_tokenizer(load_recipe(sys.argv[1], sys.argv[2:]))
print(json.dumps(measured | {"peak_rss_mb": max(peaks + [rss_mb("VmHWM")])}))
"""
SEVEN_B_SAMPLE_CHARS = 5e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zh", help="a CSV of Chinese text")
    parser.add_argument("--zh-column", default="review")
    parser.add_argument("--zh-bounds", default=f"0,{CJK_TRAINING_CHUNK_CHARS}", help="CJK training bounds; 0 = none")
    args = parser.parse_args()
    series = {"code": ([{"kind": "python_stdlib"}], [2_000_000, 4_000_000, 8_000_000, 16_000_000], None)}
    if args.zh:
        zh = [{"kind": "files", "paths": [args.zh], "text_column": args.zh_column}]
        for bound in map(int, args.zh_bounds.split(",")):
            series[f"zh_bound_{bound}" if bound else "zh_unbounded"] = (
                zh,
                [125_000, 250_000, 500_000, 750_000, 1_000_000],
                bound,
            )
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (sources, sizes, bound) in series.items():
            points = [train(Path(tmp) / f"{name}{chars}", sources, chars, bound) for chars in sizes]
            result[name] = summary(points)
            for point in points:
                print(f"{name:<14} {point['chars']:>12,} chars: peak RSS {point['peak_rss_mb']:6.0f} MB, trainer "
                      f"{point['trainer_rss_mb']:5.0f} MB, {point['seconds']:5.1f} s, {point['bytes_per_token']} bytes/token")  # fmt: skip
            print(
                f"{name:<14} trainer MB per million chars between successive sizes: {result[name]['rss_mb_per_million_chars']}, "
                f"fitted {result[name]['rss_mb_per_million_chars_fitted']}"
            )
    print(json.dumps(compared(result)))


def compared(result: dict) -> dict:
    """`result` with each series' ratios to code's and to unbounded Chinese's figures from the same run."""
    slope = "rss_mb_per_million_chars_fitted"
    for name, figures in result.items():
        figures["fitted_slope_vs_code"] = round(figures[slope] / result["code"][slope], 2)
        if name.startswith("zh_bound") and "zh_unbounded" in result:
            whole = result["zh_unbounded"]
            figures["vs_unbounded"] = {
                slope: round(figures[slope] / whole[slope], 3),
                "held_out_bytes_per_token": round(
                    figures["held_out_bytes_per_token"][-1] / whole["held_out_bytes_per_token"][-1], 4
                ),
            }
    return result


def summary(points: list[dict]) -> dict:
    """The measured points, the slopes between successive sizes, and the straight line to 5 GB at the fitted one."""
    chars = [p["chars"] for p in points]
    slopes = [
        round((b["trainer_rss_mb"] - a["trainer_rss_mb"]) / (b["chars"] - a["chars"]) * 1e6, 1)
        for a, b in itertools.pairwise(points)
    ]
    fitted = np.polyfit(chars, [p["trainer_rss_mb"] for p in points], 1)[0] * 1e6
    seconds_slope = (points[-1]["seconds"] - points[0]["seconds"]) / (chars[-1] - chars[0]) * 1e6
    last = points[-1]
    return {
        "chars": chars,
        "peak_rss_mb": [round(p["peak_rss_mb"]) for p in points],
        "trainer_rss_mb": [round(p["trainer_rss_mb"]) for p in points],
        "seconds": [round(p["seconds"], 1) for p in points],
        "held_out_bytes_per_token": [p["bytes_per_token"] for p in points],
        "rss_mb_per_million_chars": slopes,
        "rss_mb_per_million_chars_fitted": round(fitted, 1),
        "seconds_per_million_chars": round(seconds_slope, 3),
        "estimate_5GB_rss_gb": round(
            (last["peak_rss_mb"] + fitted * (SEVEN_B_SAMPLE_CHARS - last["chars"]) / 1e6) / 1024, 1
        ),
    }


def train(root: Path, sources: list[dict], chars: int, bound: int | None) -> dict:
    """Train in a fresh process (bound None: the recipe's default); its memory, time and bytes/token."""
    recipe = {
        "tokenizer": {"dir": str(root / "tokenizer"), "vocab_size": 64000, "max_training_chars": chars},
        "data": {"dir": str(root / "data"), "sources": sources, "clean": {"strip_html": False}},
    }
    path = root / "recipe.yaml"
    root.mkdir(parents=True)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    start = time.perf_counter()
    overrides = [f"tokenizer.cjk_training_chunk_chars={bound}"] if bound is not None else []
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), *overrides], env=os.environ | {"PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, check=True)  # fmt: skip
    seconds = time.perf_counter() - start
    record = json.loads((root / "tokenizer" / TRAINING_RECORD).read_text(encoding="utf-8"))
    return json.loads(done.stdout.strip().splitlines()[-1]) | {
        "chars": record["stats"]["training_chars"],
        "seconds": seconds,
        "bytes_per_token": record["stats"]["held_out_bytes_per_token"],
    }


if __name__ == "__main__":
    main()
