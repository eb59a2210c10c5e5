"""The picture of a run: training and validation loss against tokens seen, the learning rate on a second axis."""

from __future__ import annotations

import json
import os
from pathlib import Path

FILE_NAME = "loss.png"


def read_metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order ([] when there is none yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(records: list[dict], out_png: Path, title: str = "") -> Path | None:
    """Draw the records' curves to `out_png` (written atomically, so a card or an upload never reads half a file);
    None when there is nothing to draw yet."""
    train = [r for r in records if "loss" in r and "tokens_seen" in r and r["loss"] is not None]
    evals = [r for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a cluster node
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.add_subplot()
    tokens_at = _tokens_at_step(train)
    if train:
        ax.plot([tokens_at(r["step"]) for r in train], [r["loss"] for r in train], label="training loss", lw=1.2)
    if evals:
        ax.plot([tokens_at(r["step"]) for r in evals], [r["eval_loss"] for r in evals], "o-", label="validation loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if train:
        lr_axis = ax.twinx()
        lr_axis.plot([tokens_at(r["step"]) for r in train], [r["lr"] for r in train], color="grey", ls=":", lw=1)
        lr_axis.set_ylabel("learning rate", color="grey")
        handles.append(lr_axis.get_lines()[0])
        labels.append("learning rate")
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    staging = out_png.with_name(f".tmp-{out_png.name}")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(staging, format="png")
    os.replace(staging, out_png)
    return out_png


def _tokens_at_step(train: list[dict]):
    """Tokens seen at a step: logged with each training record; between two records (an evaluation's step) the
    tokens grow linearly with the steps, and step 0 has seen none."""
    points = [(0, 0)] + [(r["step"], r["tokens_seen"]) for r in train]

    def tokens_at(step: int) -> float:
        for (s0, t0), (s1, t1) in zip(points, points[1:]):
            if s0 <= step <= s1:
                return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
        s_last, t_last = points[-1]
        return t_last * step / s_last if s_last else float(step)

    return tokens_at
