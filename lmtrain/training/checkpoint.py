"""Checkpoints that a crash cannot half-write, and the rules for resuming from them.

Layout: run_dir/checkpoints/step_00001200/ holds what `Accelerator.save_state` writes (under
DeepSpeed: one shard per rank), our `trainer_state.json` and, written last, `COMPLETE.json`, which
lists every file with its size. A checkpoint is written under a `.tmp-` name and made visible by one
atomic rename, so a process killed while saving leaves only a `.tmp-` directory behind, which is
never selected and is cleared by the next save. Resolution checks the listing, so a checkpoint that
lost a shard or was truncated later (a full disk, a bad copy) is reported and skipped.

Saving is synchronous, or asynchronous (`train.checkpoint_async`, `Checkpointer`): the loop then pays only for
`save_state` into node-local RAM (/dev/shm), and a background thread per rank copies that snapshot into the `.tmp-`
directory; the main process publishes it as above once every rank's copy is in. At most one save is in flight.

Resuming on another number of processes: Accelerate's own checkpoint (one process, plain data parallel) holds the
whole model and optimizer and loads on any number; DeepSpeed's ZeRO shards are converted once, by DeepSpeed's
`ds_to_universal`, into a universal checkpoint (run_dir/checkpoints/step_N/universal/) that DeepSpeed reshards
on load (`checkpoint.load_universal`).

Assumes run_dir is on a filesystem every rank sees (as multi-node checkpointing with DeepSpeed does).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from lmtrain.errors import UserError

STATE_FILE = "trainer_state.json"
COMPLETE_FILE = "COMPLETE.json"
DEEPSPEED_TAG = "pytorch_model"
"""The folder in which Accelerate's save_state has DeepSpeed write the engine's shards (its MODEL_NAME)."""
UNIVERSAL_DIR = "universal"
"""The folder, inside a checkpoint, of its DeepSpeed universal form (made when resumed on another world size)."""
# Fault injection for the reliability tests and benchmark: SIGKILL the main process in the middle of
# saving the checkpoint of this step.
KILL_DURING_SAVE_FAULT_ENV = "LMTRAIN_FAULT_KILL_DURING_SAVE_STEP"
_NAME = re.compile(r"^step_(\d{8})$")

# Recipe keys (or whole sections) that may change between a checkpoint and its resumption without altering the run.
HARMLESS_CHANGES = (
    "run_dir",
    "tokenizer.dir",
    "data.dir",
    "data.batch_size",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.report_to",
    "train.checkpoint_every",
    "train.keep_last",
    "train.keep_every",
    "train.checkpoint_async",
    "train.resume",
    "train.allow_resume_changes",
    "train.overwrite",
    "train.max_skipped_steps",
    "train.spike_factor",
    "train.best_metric",
    "hub",  # where the run is published, not what it trains
    # How fast, not what: the same loss and gradients within rounding (tests/test_speed.py), and compile leaves the
    # state dict's names alone. fp8 is not here: it changes the arithmetic.
    "model.compile",
    "model.attn_implementation",
    "model.liger_kernel",
    "eval",  # downstream tasks are scored on the model, they do not train it
)


def is_harmless(key: str) -> bool:
    """Whether a change of recipe key `key` (dotted) is in HARMLESS_CHANGES, itself or by its section."""
    return any(key == harmless or key.startswith(f"{harmless}.") for harmless in HARMLESS_CHANGES)


class CheckpointError(UserError):
    """Saving failed in a way the user must fix (disk full, directory not writable)."""


class SnapshotError(CheckpointError):
    """An asynchronous save could not take its snapshot (node RAM full): the save falls back to synchronous."""


@dataclass
class Checkpoint:
    path: Path
    step: int

    def state(self) -> dict:
        return json.loads((self.path / STATE_FILE).read_text(encoding="utf-8"))


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights a checkpoint holds, whole, on the CPU: Accelerate's model.safetensors, or DeepSpeed's
    ZeRO shards consolidated by DeepSpeed's own zero_to_fp32 (it reads the shards with torch.load, as every
    DeepSpeed resume does)."""
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    shards = path / DEEPSPEED_TAG
    if shards.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DEEPSPEED_TAG)
    raise CheckpointError(f"{path}: no model weights (model.safetensors or {DEEPSPEED_TAG}/); is it a checkpoint?")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    accelerator: Accelerator, run_dir: str | Path, step: int, state: dict, keep_last: int, keep_every: int
) -> Path:
    """Save the training state of every rank plus `state` (JSON) as checkpoint `step`; all ranks call this.
    Older checkpoints are pruned only after the new one is complete. A failure on any rank raises
    CheckpointError on every rank (none is left waiting for the others)."""
    root = checkpoints_dir(run_dir)
    final = root / f"step_{step:08d}"
    staging = root / f".tmp-step_{step:08d}"

    _on_all_ranks(accelerator, _preparer(root, final) if accelerator.is_main_process else None, step, root)
    _on_all_ranks(accelerator, lambda: accelerator.save_state(str(staging)), step, root, staging)
    publish = _publisher(root, staging, final, step, state, keep_last, keep_every)
    _on_all_ranks(accelerator, publish if accelerator.is_main_process else None, step, root, staging)
    return final


def _preparer(root: Path, final: Path):
    """The main process's work before a save: the checkpoints folder exists, no stale staging holds the disk."""

    def prepare() -> None:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a rerun of a step already saved (e.g. a preemption right after a save)
            shutil.rmtree(final)

    return prepare


def _publisher(root: Path, staging: Path, final: Path, step: int, state: dict, keep_last: int, keep_every: int):
    """The main process's work once every rank's files are in `staging`: the trainer state, the listing, the rename
    that makes the checkpoint visible, then pruning."""

    def publish() -> None:
        if os.environ.get(KILL_DURING_SAVE_FAULT_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)  # the reliability tests' crash: shards written, nothing renamed
        _write_json(staging / STATE_FILE, state)
        written = [f for f in sorted(staging.rglob("*")) if f.is_file()]
        for file in written:  # on disk before COMPLETE.json says so: a power cut must not leave a listed hole
            _fsync_file(file)
        files = {str(f.relative_to(staging)): f.stat().st_size for f in written}
        _write_json(staging / COMPLETE_FILE, {"step": step, "files": files})
        os.replace(staging, final)
        _fsync_dir(root)
        _prune(root, keep_last, keep_every)

    return publish


SNAPSHOT_ENV = "LMTRAIN_CHECKPOINT_SNAPSHOT_DIR"
"""Where asynchronous saves take their snapshot: node-local and fast (default /dev/shm, i.e. RAM)."""


def snapshot_root(run_dir: str | Path) -> Path:
    """This run's snapshot folder: node-local RAM (/dev/shm) unless LMTRAIN_CHECKPOINT_SNAPSHOT_DIR names another
    place (a local NVMe disk when RAM is short). Named after the run, so that a run killed mid-save finds and clears
    its own leftovers at its next save."""
    base = os.environ.get(SNAPSHOT_ENV) or ("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(base) / f"lmtrain-checkpoint-{digest}"


class Checkpointer:
    """Saves the checkpoints of `fit`, synchronously or asynchronously, and measures what each one costs the loop
    (`checkpoint_stall_s`).

    Asynchronous: every rank writes its `save_state` into node-local RAM (the consistent copy: taking it is all the
    loop waits for), then a background thread per rank copies it into the shared `.tmp-` directory. The ranks learn
    that every copy is in through one small all-reduce per step while a save is in flight (`poll`); the main
    process's thread then publishes (trainer state, COMPLETE.json, rename, pruning). At most one save is in flight:
    the next one, a preemption's or the last one waits for it. A process killed meanwhile leaves only `.tmp-`, so
    the previous checkpoint stays the one selected.

    DeepSpeed's own asynchronous engines do not fit here: DecoupledCheckpointEngine writes through
    FastCheckpointEngine (GPU and libaio) from tensors shared with the live engine, and neither knows our atomic
    publication. Writing `save_state` to RAM keeps every file byte for byte what a synchronous save writes."""

    def __init__(self, accelerator: Accelerator, run_dir: str | Path, keep_last: int, keep_every: int,
                 asynchronous: bool):  # fmt: skip
        self.accelerator, self.run_dir = accelerator, Path(run_dir)
        self.keep_last, self.keep_every, self.asynchronous = keep_last, keep_every, asynchronous
        self.in_flight: _BackgroundSave | None = None
        self.stalls: list[float] = []
        self.write_seconds: list[float] = []

    def save(self, step: int, state: dict, wait: bool = False) -> tuple[Path, list[dict]]:
        """Checkpoint `step` with trainer state `state`; `wait`: written and published before returning (the last
        save of a run). The path it will have, and log records: the previous save's if this one waited for it,
        then this one's (what it cost the loop)."""
        start = time.perf_counter()
        records = self.wait() if self.in_flight else []
        state = json.loads(json.dumps(state))  # the state of this step, whatever the loop does next
        root = checkpoints_dir(self.run_dir)
        if wait or not self.asynchronous:
            path = save_checkpoint(self.accelerator, self.run_dir, step, state, self.keep_last, self.keep_every)
            written = self._size(path)
        else:
            path, written = root / f"step_{step:08d}", {}
            try:
                self.in_flight = self._start(step, state, root)
            except SnapshotError as exc:  # RAM is short: this checkpoint the slow way rather than none
                if self.accelerator.is_main_process:
                    print(f"warning: {exc}; saving step {step} synchronously instead", file=sys.stderr, flush=True)
                path = save_checkpoint(self.accelerator, self.run_dir, step, state, self.keep_last, self.keep_every)
                written = self._size(path)
        stall = time.perf_counter() - start
        self.stalls.append(stall)
        asynchronous = self.in_flight is not None
        record = {"step": step, "event": "checkpoint", "checkpoint_stall_s": stall, "async": asynchronous, **written}
        return path, [*records, record]

    def _start(self, step: int, state: dict, root: Path) -> _BackgroundSave:
        accelerator = self.accelerator
        final, staging = root / f"step_{step:08d}", root / f".tmp-step_{step:08d}"
        snapshot = snapshot_root(self.run_dir) / f"rank{accelerator.process_index:05d}"

        def take_snapshot() -> None:
            shutil.rmtree(snapshot, ignore_errors=True)  # a snapshot of a run killed before its copy finished
            snapshot.mkdir(parents=True)
            accelerator.save_state(str(snapshot))

        _on_all_ranks(accelerator, _preparer(root, final) if accelerator.is_main_process else None, step, root)
        try:
            _on_all_ranks(accelerator, take_snapshot, step, snapshot.parent, snapshot)
        except CheckpointError as exc:
            raise SnapshotError(str(exc).split(". Earlier checkpoints")[0]) from None
        publish = None
        if accelerator.is_main_process:
            publish = _publisher(root, staging, final, step, state, self.keep_last, self.keep_every)
        return _BackgroundSave(step, snapshot, staging, publish)

    def poll(self) -> list[dict]:
        """Every rank calls this after each step: the log records of a save that finished, and a CheckpointError
        on every rank if any rank's background write failed."""
        save = self.in_flight
        if save is None:
            return []
        done = save.failure is None
        published = self.accelerator.is_main_process and save.published.is_set() and done  # the main's to say
        flags = [float(save.copied.is_set() and done), float(not done), float(published)]
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(torch.tensor(flags, device=self.accelerator.device), "sum").tolist()
        copied, failed, published = flags
        if failed:
            self.in_flight = None
            if self.accelerator.is_main_process:
                shutil.rmtree(save.staging, ignore_errors=True)
            raise CheckpointError(
                f"could not save checkpoint step {save.step} under {save.staging.parent}: "
                f"{save.failure or 'another process failed to write its part'}. Earlier checkpoints are "
                "untouched; free space or fix permissions, then rerun to resume"
            )
        if copied == self.accelerator.num_processes:
            save.others_copied.set()  # the main process's thread publishes now
        if not published:
            return []
        self.in_flight = None
        seconds = time.perf_counter() - save.started
        self.write_seconds.append(seconds)
        record = {"step": save.step, "event": "checkpoint_written", "write_s": seconds}
        record.update(self._size(checkpoints_dir(self.run_dir) / f"step_{save.step:08d}"))
        return [record]

    def _size(self, path: Path) -> dict:
        """The checkpoint's size for its log record, read by the process that published it (the only one whose
        view of a shared filesystem is sure to have it already)."""
        return {"checkpoint_bytes": checkpoint_bytes(path)} if self.accelerator.is_main_process else {}

    def wait(self) -> list[dict]:
        """Block until the save in flight is published (every rank calls this); its log records."""
        while self.in_flight is not None:
            if records := self.poll():
                return records
            time.sleep(0.01)
        return []

    def summary(self) -> str:
        if not self.stalls:
            return "checkpoints: none saved"
        kind = "asynchronous" if self.asynchronous else "synchronous"
        writes = f", background writes {sum(self.write_seconds):.2f} s" if self.write_seconds else ""
        return (
            f"checkpoints: {len(self.stalls)} saved ({kind}), training stalled {sum(self.stalls):.2f} s in all "
            f"(max {max(self.stalls):.2f} s){writes}"
        )


class _BackgroundSave:
    """One rank's part of an asynchronous save, in a thread: copy the RAM snapshot into the shared `.tmp-` folder;
    on the main process, then wait until every rank's copy is in (`others_copied`, set by `Checkpointer.poll`)
    and publish."""

    def __init__(self, step: int, snapshot: Path, staging: Path, publish):
        self.step, self.snapshot, self.staging, self.publish = step, snapshot, staging, publish
        self.copied, self.others_copied, self.published = threading.Event(), threading.Event(), threading.Event()
        self.failure: str | None = None
        self.started = time.perf_counter()
        # a daemon: a run that dies does not wait for its write, whose `.tmp-` folder is then never selected
        threading.Thread(target=self._run, name=f"checkpoint-{step}", daemon=True).start()

    def _run(self) -> None:
        try:
            for file in sorted(self.snapshot.rglob("*")):
                if file.is_file():
                    target = self.staging / file.relative_to(self.snapshot)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _copy(file, target)
            shutil.rmtree(self.snapshot, ignore_errors=True)
            with contextlib.suppress(OSError):  # the run's folder, once no rank of this node uses it
                self.snapshot.parent.rmdir()
            self.copied.set()
            if self.publish is not None:
                self.others_copied.wait()
                self.publish()
        except Exception as exc:  # noqa: BLE001 - reported on every rank by Checkpointer.poll
            self.failure = _failure_text(exc)
            shutil.rmtree(self.snapshot, ignore_errors=True)
        self.copied.set()
        self.published.set()


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)  # made durable by the publication, which syncs every file


def _fsync_file(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def checkpoint_bytes(path: Path) -> int:
    """The size of checkpoint `path`, from its COMPLETE.json listing."""
    listing = json.loads((path / COMPLETE_FILE).read_text(encoding="utf-8"))["files"]
    return sum(listing.values())


def _on_all_ranks(accelerator: Accelerator, action, step: int, root: Path, cleanup: Path | None = None) -> None:
    """Run `action` (None: nothing on this rank), then agree across ranks on whether any of them failed.
    Any exception counts: writers report a full disk as OSError, RuntimeError (torch.save, DeepSpeed's
    shards) or safetensors' own error, and a rank that raised alone would leave the others waiting."""
    failure = None
    if action is not None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - reported on every rank just below
            failure = _failure_text(exc)
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
    if _any_rank(accelerator, failure is not None):
        raise CheckpointError(
            f"could not save checkpoint step {step} under {root}: "
            f"{failure or 'another process failed to write its part'}. Earlier checkpoints are "
            "untouched; free space or fix permissions, then rerun to resume"
        )


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """Whether `flag` is true on any rank (every rank calls this)."""
    if accelerator.num_processes == 1:
        return flag
    tensor = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(tensor, reduction="sum").item() > 0)


def _failure_text(exc: Exception) -> str:
    full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)
    return "the disk is full" if full else f"{type(exc).__name__}: {exc}"


def complete_checkpoints(run_dir: str | Path) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints that verify, oldest first, and one warning per directory that does not."""
    root = checkpoints_dir(run_dir)
    good, warnings = [], []
    if not root.is_dir():
        return good, warnings
    for path in sorted(root.iterdir()):
        match = _NAME.match(path.name)
        if not match or not path.is_dir():
            continue
        problem = verify(path)
        if problem:
            warnings.append(f"checkpoint {path} is unusable ({problem}); skipping it")
        else:
            good.append(Checkpoint(path, int(match.group(1))))
    return good, warnings


def verify(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or None if every listed file is there, whole."""
    marker = path / COMPLETE_FILE
    if not marker.is_file():
        return f"no {COMPLETE_FILE}: the save did not finish"
    try:
        listing = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError):
        return f"{COMPLETE_FILE} is damaged"
    for name, size in listing.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, {size:,} were written"
    return None


def resolve_resume(run_dir: str | Path, resume: str) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint to resume from for `train.resume` (auto, never, or a path), and warnings to print."""
    if resume == "never":
        return None, []
    if resume == "auto":
        good, warnings = complete_checkpoints(run_dir)
        return (good[-1] if good else None), warnings
    path = Path(resume)
    match = _NAME.match(path.name)
    if not path.is_dir() or not match:
        raise UserError(
            f"train.resume: {resume} is not a checkpoint directory (run_dir/checkpoints/step_NNNNNNNN); "
            "use auto, never, or such a path"
        )
    problem = verify(path)
    if problem:
        raise UserError(
            f"train.resume: checkpoint {path} is unusable: {problem}. Pick another one, or use auto "
            "to take the newest complete checkpoint"
        )
    return Checkpoint(path, int(match.group(1))), []


def recipe_differences(saved: dict, current: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every recipe key whose value differs. A key the saved recipe does
    not have was added to the schema after the checkpoint was made: its default keeps the behaviour the run
    had, so it is not compared (a checkpoint stays resumable across an upgrade of this repository)."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key not in saved:
            continue
        name = f"{prefix}{key}"
        old, new = saved[key], current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences.extend(recipe_differences(old, new, f"{name}."))
        elif _list_of_dicts(old) and _list_of_dicts(new) and len(old) == len(new):
            for i, (a, b) in enumerate(zip(old, new)):
                differences.extend(recipe_differences(a, b, f"{name}.{i}."))
        elif old != new:
            differences.append((name, old, new))
    return differences


def _list_of_dicts(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def check_resume_compatible(
    saved_state: dict, recipe: dict, fingerprints: dict[str, str], allow_changes: bool
) -> list[str]:
    """Notes on harmless changes; raises for changes that would silently alter the run unless allowed."""
    notes, blocking = [], []
    for key, old, new in recipe_differences(saved_state["recipe"], recipe):
        line = f"{key}: {old!r} → {new!r}"
        (notes if is_harmless(key) else blocking).append(line)
    for name, value in fingerprints.items():
        if saved_state["fingerprints"].get(name) != value:
            blocking.append(f"{name}: content changed since the checkpoint")
    if blocking and not allow_changes:
        listing = "\n".join(f"  - {line}" for line in blocking)
        raise UserError(
            "the checkpoint was made by a different run than this recipe describes:\n"
            f"{listing}\nrestore the recipe and inputs, start a new run_dir, or set "
            "train.allow_resume_changes=true to continue anyway"
        )
    return notes + [f"{line} (allowed by train.allow_resume_changes)" for line in blocking]


def _prune(root: Path, keep_last: int, keep_every: int) -> None:
    steps = sorted(int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name)))
    keep = set(steps[-keep_last:]) | {s for s in steps if keep_every and s % keep_every == 0}
    for step in steps:
        if step not in keep:
            shutil.rmtree(root / f"step_{step:08d}", ignore_errors=True)


def _write_json(path: Path, payload: dict) -> None:
    with path.open("w", encoding="utf-8") as file:
        json.dump(payload, file, indent=1)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- resuming on another number of processes


def resume_directory(checkpoint: Checkpoint, accelerator: Accelerator) -> tuple[Path, str | None]:
    """The directory from which `accelerator.load_state` restores `checkpoint` on this launch, and a note for the
    log when the number of processes changed. Call before `accelerator.prepare`: DeepSpeed reads
    `checkpoint.load_universal` when it builds the engine.

    What carries over to another world size: weights and optimizer state (resharded by DeepSpeed, or whole in
    Accelerate's checkpoint), step, schedule and data position (the trainer state; the sampler's global batches
    do not depend on the number of processes). Not: the RNG streams of ranks the saving run did not have (they
    start from the seed; ranks it had get theirs back), and the order of floating-point sums across ranks."""
    saved_world, world = checkpoint.state().get("world_size", accelerator.num_processes), accelerator.num_processes
    deepspeed_launch = accelerator.distributed_type == DistributedType.DEEPSPEED
    deepspeed_checkpoint = (checkpoint.path / DEEPSPEED_TAG).is_dir()
    if deepspeed_launch != deepspeed_checkpoint:
        saved_by, launch = (
            ("a DeepSpeed", "without") if deepspeed_checkpoint else ("an Accelerate (non-DeepSpeed)", "with")
        )
        raise UserError(
            f"{checkpoint.path} was saved by {saved_by} launch and this launch runs {launch} DeepSpeed; resume it "
            "with the kind of launch that saved it (the accelerate config's distributed_type), any number of processes"
        )
    if saved_world == world:
        return checkpoint.path, None
    change = f"saved by {saved_world} process(es), resumed on {world}"
    kept = min(saved_world, world)
    rng = f"; RNG streams restored for rank{'s 0-' if kept > 1 else ' '}{kept - 1}, seeded for the others"
    if not deepspeed_launch:
        return checkpoint.path, f"{change}: Accelerate's checkpoint holds the whole model and optimizer{rng}"
    universal = checkpoint.path / UNIVERSAL_DIR
    failure = None
    if accelerator.is_main_process and not (universal / DEEPSPEED_TAG).is_dir():
        try:
            _convert_to_universal(checkpoint.path, universal)
        except Exception as exc:  # noqa: BLE001 - reported on every rank just below
            failure = _failure_text(exc)
    if _any_rank(accelerator, failure is not None):
        raise CheckpointError(
            f"{checkpoint.path}: converting the DeepSpeed shards of {saved_world} processes for {world} failed "
            f"({failure or 'on the main process'}). Convert them yourself and run again: {universal_command(checkpoint.path)}"
        )
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["checkpoint"] = {**config.get("checkpoint", {}), "load_universal": True}
    return universal, f"{change}: DeepSpeed's universal checkpoint {universal} resharded the optimizer{rng}"


def universal_command(path: Path) -> str:
    """The command that converts checkpoint `path`'s ZeRO shards into the universal checkpoint the resume reads."""
    return (
        f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {path / DEEPSPEED_TAG} "
        f"--output_folder {path / UNIVERSAL_DIR / DEEPSPEED_TAG} --inject_missing_state"
    )


def _convert_to_universal(path: Path, universal: Path) -> None:
    """DeepSpeed's own converter (ds_to_universal), run in this process: ZeRO-1/2/3 shards of any number of ranks
    to one folder per parameter (fp32 weights, Adam moments) that any number of ranks can load. Written under a
    `.tmp-` name and renamed, like a checkpoint; the RNG states of the saving ranks are linked in beside it, where
    Accelerate's load_state looks for them."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    staging = path / f".tmp-{UNIVERSAL_DIR}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    args = argparse.Namespace(
        input_folder=str(path / DEEPSPEED_TAG),
        output_folder=str(staging / DEEPSPEED_TAG),
        num_extract_workers=1,  # in this process: the trainer's process group must not be forked
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2 checkpoints of a plain transformers model lack the version key
    )
    with contextlib.redirect_stdout(sys.stderr):  # its progress is a log, not the run's output
        ds_to_universal(args)
    for rng_state in path.glob("random_states_*.pkl"):
        os.link(rng_state, staging / rng_state.name)
    os.replace(staging, universal)
    _fsync_dir(path)
