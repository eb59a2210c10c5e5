"""What leaves a run: exports that explain themselves, and their publication on a model hub while training runs.

    RunOutputs.export      task.export, then the loss curve, metrics.jsonl and a model card beside the weights
    RunOutputs.checkpoint  with hub.push=checkpoints: export the checkpoint's model to a staged folder and queue it
    RunOutputs.final       final/ (and, with hub.push, `main` with the list of published branches)
    RunOutputs.finish      wait for the uploads (progress bar), then one summary line

Every process calls `export` (under ZeRO-3 the weights are gathered from all ranks); only the main process
writes cards and talks to the hub, from one background thread (lmtrain/publish/hub.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from tqdm.auto import tqdm

from lmtrain.errors import UserError
from lmtrain.publish.card import CardFacts, write_model_card
from lmtrain.publish.hub import STAGING, Uploader, branch_name, check_access, endpoint
from lmtrain.publish.loss_curve import FILE_NAME as LOSS_CURVE
from lmtrain.publish.loss_curve import plot_loss_curve, read_metrics
from lmtrain.training.task import Task

METRICS = "metrics.jsonl"


def _say(message: str) -> None:
    """A console line from the main process (the uploader's thread included), kept apart from the progress bar."""
    tqdm.write(message, file=sys.stderr)


class RunOutputs:
    def __init__(self, recipe, recipe_dict: dict, task: Task, accelerator: Accelerator):
        self.recipe, self.recipe_dict, self.task, self.accelerator = recipe, recipe_dict, task, accelerator
        self.run_dir, self.hub = Path(recipe.run_dir), recipe.hub
        self.main = accelerator.is_main_process
        self.uploader = self._start_uploader() if self.hub.push != "none" else None

    def _start_uploader(self) -> Uploader | None:
        """The main process checks the hub before any training; a refusal stops every rank with its message."""
        problem, uploader = None, None
        if self.main:
            try:
                api = check_access(self.hub.repo_id, self.hub.private)
                uploader = Uploader(api, self.hub.repo_id, self.run_dir, self.hub.upload_retries,
                                    self.hub.retry_wait_s, _say)  # fmt: skip
                _say(f"hub: publishing to {endpoint()}/{self.hub.repo_id} (push: {self.hub.push})")
            except UserError as error:
                problem = str(error)
        if self.accelerator.num_processes > 1:
            problem = broadcast_object_list([problem])[0]
        if problem:
            raise UserError(problem)
        return uploader

    def loss_curve(self) -> None:
        if self.main:
            plot_loss_curve(read_metrics(self.run_dir / METRICS), self.run_dir / LOSS_CURVE, self.run_dir.name)

    def export(self, model, out_dir: Path, revision: str = "main", until_step: int | None = None) -> None:
        """The task's export into `out_dir`, atomically (a folder appears whole or not at all), with the log up to
        `until_step` (all of it by default), its loss curve and a model card."""
        staging = out_dir.with_name(f".tmp-{out_dir.name}")
        self.task.export(self.accelerator, model, staging)
        if self.main:
            records = [r for r in read_metrics(self.run_dir / METRICS) if until_step is None or r["step"] <= until_step]
            plot_loss_curve(records, staging / LOSS_CURVE, self.run_dir.name)
            (staging / METRICS).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            write_model_card(staging, self._facts(revision, records))
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(staging, out_dir)
        self.accelerator.wait_for_everyone()

    def checkpoint(self, model, step: int, tokens_seen: int) -> None:
        """With hub.push=checkpoints, the checkpoint's model as its own branch (staged, then uploaded while
        training goes on). Every process calls it."""
        if self.hub.push != "checkpoints":
            return
        branch = branch_name(step, tokens_seen)
        published = self.main and self.uploader.published(branch)  # a resumed run redoing a published checkpoint
        if self.accelerator.num_processes > 1:
            published = broadcast_object_list([published])[0]
        if published:
            return
        self.export(model, self.run_dir / STAGING / branch, revision=branch, until_step=step)
        if self.main:
            self.uploader.submit(branch, f"Checkpoint at step {step:,} ({tokens_seen:,} tokens seen)")

    def final(self, model, final_dir: Path) -> None:
        """final/ with its card; with hub.push, queued for `main` (and best/, if any, for `best`). Every process
        calls it."""
        self.export(model, final_dir)
        self.publish_copy(final_dir, "main", "Final model")
        best = final_dir.with_name("best")
        if best.is_dir():
            self.publish_copy(best, "best", f"Best {self.recipe.train.best_metric} on validation")

    def publish_copy(self, export_dir: Path, branch: str, message: str) -> None:
        """Queue an export (final/, best/) for `branch`, unless the hub has it: a hard-linked staged copy (the
        export may be replaced while it uploads) whose card names the branch and, on `main`, the others."""
        if not (self.main and self.uploader) or self.uploader.published(branch):
            return
        stage = self.uploader.stage(branch)
        if stage.is_dir():  # staged by an earlier run: the uploader queued it when it started
            return
        staging = stage.with_name(f".tmp-{branch}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(export_dir, staging, copy_function=os.link)
        (staging / "README.md").unlink(missing_ok=True)  # a hard link: writing through it would change the export
        write_model_card(staging, self._facts(branch, read_metrics(export_dir / METRICS)))
        os.replace(staging, stage)
        self.uploader.submit(branch, message)

    def finish(self) -> None:
        """Wait for the pending uploads, then say what was published and what was not."""
        if not self.uploader:
            return
        report = self.uploader.wait()
        failed = "".join(f"\n  not published: {b} ({why})" for b, why in report.failed.items())
        again = " — run the same command again to publish the rest" if failed else ""
        _say(
            f"hub: {len(report.published)} upload(s) this run to {endpoint()}/{self.hub.repo_id}"
            f"{', ' + ', '.join(report.published) if report.published else ''}{again}{failed}"
        )

    def _facts(self, revision: str, records: list[dict]) -> CardFacts:
        a = self.accelerator
        return CardFacts(
            recipe=self.recipe_dict,
            metrics=records,
            launch={
                "processes": a.num_processes,
                "device": a.device.type,
                "precision": "fp32" if a.mixed_precision == "no" else a.mixed_precision,
                "distributed": _parallelism(a),
            },  # fmt: skip
            license=self.hub.license,
            repo_id=self.hub.repo_id or None,
            revision=revision,
            branches=self.uploader.branches() if self.uploader and revision == "main" else [],
            **self.task.card_facts(),
        )


def _parallelism(accelerator: Accelerator) -> str:
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    return "data parallel" if accelerator.num_processes > 1 else "one process"
