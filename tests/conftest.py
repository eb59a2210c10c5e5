"""Shared test setup: everything offline, nothing written outside tmp_path."""

import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    """Run one of the repository's entry points (e.g. "train.py", recipe, "key=value") as a user would."""
    result = subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result
