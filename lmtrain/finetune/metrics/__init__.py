"""Evaluation metrics shipped with the repository, so that `evaluate` needs no Hub access.

Each is an `evaluate` metric module in its own folder (lmtrain/finetune/metrics/<name>/<name>.py), loadable
with plain `evaluate.load("lmtrain/finetune/metrics/accuracy")` too. Their import lines name one package each:
evaluate reads them to find a module's dependencies, and `import datasets, evaluate` would make it
look for a package called "datasets,".
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE = ("accuracy", "macro_f1", "exact_match", "chrf")


def load_metric(name: str):
    """An `evaluate` metric module from this folder, results kept in memory (no cache files, so that several
    processes can compute metrics at the same time)."""
    import evaluate

    if name not in AVAILABLE:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(AVAILABLE)}")
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
