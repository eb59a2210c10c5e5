"""The run's log: one console line and one JSON line (metrics.jsonl) per event, mirrored to the trackers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from tqdm.auto import tqdm

from lmtrain.formatting import format_count, format_duration


class MetricsLog:
    """One dense console line and one JSON line (run_dir/metrics.jsonl) per event, mirrored to the
    Accelerate trackers. Shared files are written by the main process only; on resume, records
    after the checkpoint's step (about to be redone) are dropped."""

    def __init__(self, accelerator: Accelerator, path: Path, after_step: int = 0):
        self.accelerator = accelerator
        self.file = None
        if accelerator.is_main_process:
            kept = []
            if after_step and path.is_file():
                kept = [
                    line
                    for line in path.read_text(encoding="utf-8").splitlines()
                    if line and json.loads(line)["step"] <= after_step
                ]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            self.file = path.open("a", encoding="utf-8")

    def print(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message, file=sys.stderr)

    def write(self, record: dict, every_rank: bool = False) -> None:
        """Log `record`; an `every_rank` record (a rank-local event) is printed by the rank that saw it."""
        if every_rank:
            tqdm.write(_format_record(record), file=sys.stderr)
            if self.file is not None:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            return
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self.accelerator.log(scalars, step=record["step"])
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.print(_format_record(record))


def _format_record(r: dict) -> str:
    if r.get("event") == "skipped_nonfinite":
        return (
            f"step {r['step']:>6} | SKIPPED: non-finite loss {r['loss']} / grad norm {r['grad_norm']} on rank "
            f"{r['rank']} | data indices {r['data_indices']}"
        )
    if r.get("event") == "loss_spike":
        return (
            f"step {r['step']:>6} | loss spike on rank {r['rank']}: {r['loss']:.4f} vs running mean "
            f"{r['running_mean']:.4f} | data indices {r['data_indices']}"
        )
    if r.get("event") == "checkpoint":
        how = "asynchronous: written in the background" if r["async"] else "written"
        size = f", {r['checkpoint_bytes'] / 2**20:,.1f} MiB" if "checkpoint_bytes" in r else ""
        return f"step {r['step']:>6} | checkpoint ({how}{size}): training stalled {r['checkpoint_stall_s']:.3f} s"
    if r.get("event") == "checkpoint_written":
        size = r.get("checkpoint_bytes", 0) / 2**20
        return f"step {r['step']:>6} | checkpoint written and published: {size:,.1f} MiB in {r['write_s']:.2f} s"
    if "eval_loss" in r:
        extra = "".join(f" | {k} {v:.4f}" for k, v in r.items() if k not in ("step", "eval_loss", "eval_ppl"))
        ppl = f" | ppl {r['eval_ppl']:,.2f}" if "eval_ppl" in r else ""
        return f"step {r['step']:>6} | eval loss {r['eval_loss']:.4f}{ppl}{extra}"
    loss = f"{r['loss']:.4f}" if r["loss"] is not None else "n/a"
    grad = f"{r['grad_norm']:.3f}" if r["grad_norm"] is not None else "n/a"
    memory = ""
    if "gpu_mem_allocated_gib" in r:  # peaks over the window, on this process's GPU
        memory = f" | GPU mem {r['gpu_mem_allocated_gib']:.1f} GiB alloc, {r['gpu_mem_reserved_gib']:.1f} reserved"
    return (
        f"step {r['step']:>6} | loss {loss} | lr {r['lr']:.2e} | grad {grad} | "
        f"{r['tokens_per_s']:,.0f} tok/s ({r['tokens_per_s_per_device']:,.0f}/device) | MFU {100 * r['mfu']:.1f}% | "
        f"{format_count(r['tokens_seen'])} tok | eta {format_duration(r['eta_s'])}{memory}"
    )
