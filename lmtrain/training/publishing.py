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
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from tqdm.auto import tqdm

from lmtrain.config.recipe import recipe_to_dict
from lmtrain.data.prepare import as_datasets
from lmtrain.errors import UserError
from lmtrain.publish.card import CardFacts, dataset_card, write_model_card, write_tokenizer_card
from lmtrain.publish.hub import STAGING, Uploader, branch_name, check_access, endpoint, publish_once
from lmtrain.publish.loss_curve import FILE_NAME as LOSS_CURVE
from lmtrain.publish.loss_curve import plot_loss_curve, read_metrics
from lmtrain.tokenizer.bpe import tokenizer_fingerprint
from lmtrain.tokenizer.report import REPORT
from lmtrain.training.checkpoint import checkpoint_weights, complete_checkpoints
from lmtrain.training.task import Task

METRICS = "metrics.jsonl"
LAUNCH = "launch.json"


def _say(message: str) -> None:
    """A console line from the main process (the uploader's thread included), kept apart from the progress bar."""
    tqdm.write(message, file=sys.stderr)


class RunOutputs:
    """The exports of a run and their publication. `launch` describes the training launch for the cards: the
    current one while training (saved as run_dir/launch.json), the saved one when publishing afterwards."""

    def __init__(self, recipe, recipe_dict: dict, task: Task, accelerator: Accelerator, launch: dict | None = None):
        self.recipe, self.recipe_dict, self.task, self.accelerator = recipe, recipe_dict, task, accelerator
        self.run_dir, self.hub = Path(recipe.run_dir), recipe.hub
        self.main = accelerator.is_main_process
        self.launch = launch or _describe_launch(accelerator)
        if self.main and launch is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / LAUNCH).write_text(json.dumps(self.launch) + "\n", encoding="utf-8")
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
        if not self.publishes(step):
            return
        branch = branch_name(step, tokens_seen)
        published = self.main and self.uploader.published(branch)  # a resumed run redoing a published checkpoint
        if self.accelerator.num_processes > 1:
            published = broadcast_object_list([published])[0]
        if published:
            return
        start = time.perf_counter()
        self.export(model, self.run_dir / STAGING / branch, revision=branch, until_step=step)
        if self.main:  # the one part of publishing a step waits for: gathering the weights and writing them
            size = sum(f.stat().st_size for f in (self.run_dir / STAGING / branch).glob("*.safetensors"))
            _say(f"hub: staged {branch} ({size / 2**20:,.1f} MiB of weights) in {time.perf_counter() - start:.2f} s")
            self.uploader.submit(branch, f"Checkpoint at step {step:,} ({tokens_seen:,} tokens seen)")

    def publishes(self, step: int) -> bool:
        """Whether the checkpoint of `step` becomes a branch (hub.push=checkpoints, hub.checkpoint_every)."""
        every = self.hub.checkpoint_every
        return self.hub.push == "checkpoints" and (not every or step % every == 0)

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

    def unpublished_checkpoints(self) -> int:
        """Kept checkpoints whose branch the hub does not have (with hub.push=checkpoints; main process)."""
        if self.hub.push != "checkpoints" or not self.uploader:
            return 0
        states = [c.state() for c in complete_checkpoints(self.run_dir)[0]]
        return sum(
            self.publishes(s["step"]) and not self.uploader.published(branch_name(s["step"], s["tokens_seen"]))
            for s in states
        )

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
        return CardFacts(
            recipe=self.recipe_dict,
            metrics=records,
            launch=self.launch,
            license=self.hub.license,
            repo_id=self.hub.repo_id or None,
            revision=revision,
            branches=self.uploader.branches() if self.uploader and revision == "main" else [],
            **self.task.card_facts(),
        )


def _describe_launch(a: Accelerator) -> dict:
    if a.distributed_type == DistributedType.DEEPSPEED:
        parallelism = f"DeepSpeed ZeRO-{a.state.deepspeed_plugin.zero_stage}"
    else:
        parallelism = "data parallel" if a.num_processes > 1 else "one process"
    return {
        "processes": a.num_processes,
        "device": a.device.type if a.device.type != "cuda" else torch.cuda.get_device_name(a.device),
        "precision": "fp32" if a.mixed_precision == "no" else a.mixed_precision,
        "distributed": parallelism,
    }


def publish_run(recipe, task: Task, checkpoints: bool) -> None:
    """Publish a finished run as `hub.push` would have while it trained (publish.py): an export of each kept
    checkpoint as its branch (with `checkpoints`), best/ as `best`, final/ on `main`; nothing the hub has already."""
    run_dir = Path(recipe.run_dir)
    final_dir = run_dir / "final"
    if not final_dir.is_dir():
        raise UserError(f"{final_dir}: the run has no final model yet; finish it first (its training command resumes)")
    launch = json.loads((run_dir / LAUNCH).read_text(encoding="utf-8")) if (run_dir / LAUNCH).is_file() else {}
    precision = "bf16" if launch.get("precision") == "bf16" else "no"  # export as the run computed
    accelerator = Accelerator(cpu=True, mixed_precision=precision)
    outputs = RunOutputs(recipe, recipe_to_dict(recipe), task, accelerator, launch or {"processes": 1})
    model = None
    for checkpoint in complete_checkpoints(run_dir)[0] if checkpoints else []:
        state = checkpoint.state()
        branch = branch_name(state["step"], state["tokens_seen"])
        if not outputs.publishes(state["step"]) or outputs.uploader.published(branch):
            continue
        model = model or task.build_model()
        _load_weights(model, checkpoint_weights(checkpoint.path), checkpoint.path)
        outputs.checkpoint(model, state["step"], state["tokens_seen"])
    outputs.publish_copy(final_dir, "main", "Final model")
    if (run_dir / "best").is_dir():
        outputs.publish_copy(run_dir / "best", "best", f"Best {recipe.train.best_metric} on validation")
    outputs.finish()


def publish_tokenizer(recipe, repo_id: str, private: bool) -> None:
    """The run's tokenizer, with its own card, to `repo_id` (once per tokenizer content)."""
    source = Path(recipe.tokenizer.dir)
    api = check_access(repo_id, private)

    def upload() -> None:
        staged = Path(recipe.run_dir) / STAGING / ".tokenizer"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(source, staged)
        report = staged / REPORT
        card_report = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
        write_tokenizer_card(staged, repo_id, card_report, recipe.hub.license)
        api.upload_folder(repo_id=repo_id, folder_path=staged, commit_message="Tokenizer")
        shutil.rmtree(staged, ignore_errors=True)

    done = publish_once(recipe.run_dir, repo_id, "tokenizer", tokenizer_fingerprint(source), upload)
    _say(f"hub: tokenizer {'published' if done else 'already published'} → {endpoint()}/{repo_id}")


def publish_dataset(recipe, manifest: dict, languages: list[str], repo_id: str, private: bool) -> None:
    """The packed dataset (`DatasetDict.push_to_hub`) with a card made from its manifest (once per content)."""
    check_access(repo_id, private, repo_type="dataset")

    def upload() -> None:
        splits = as_datasets(recipe.data.dir)  # blocks with their source index, from the .bin shards
        splits.push_to_hub(repo_id, private=private)
        dataset_card(manifest, repo_id, recipe.hub.license, languages).push_to_hub(repo_id, repo_type="dataset")

    done = publish_once(recipe.run_dir, repo_id, "dataset", manifest["content_fingerprint"], upload)
    _say(f"hub: dataset {'published' if done else 'already published'} → {endpoint()}/datasets/{repo_id}")


def _load_weights(model: torch.nn.Module, weights: dict, where: Path) -> None:
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - dict(model.named_parameters()).keys()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - tied:
        raise UserError(
            f"{where}: its weights do not fit the run's model (missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it saved by this run's recipe?"
        )
