"""Checkpoints on disk: which ones pruning keeps, which ones resumption may pick, what a save leaves behind.

Every expectation is written out by hand from the rules in lmtrain/training/checkpoint.py's docstrings: step
directories are made here (files plus a hand-written COMPLETE.json listing), and the save path runs with a stub
accelerator whose save_state writes known files, so no process group or model is needed.
"""

import errno
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from lmtrain.errors import UserError  # noqa: E402
from lmtrain.training import checkpoint as ckpt  # noqa: E402
from lmtrain.training.checkpoint import (  # noqa: E402
    COMPLETE_FILE,
    STATE_FILE,
    Checkpoint,
    CheckpointError,
    check_resume_compatible,
    complete_checkpoints,
    recipe_differences,
    resolve_resume,
    save_checkpoint,
    verify,
)


def make_checkpoint(run_dir, step, complete=True, files=None, name=None):
    """A step directory as a finished save leaves it: the files, then COMPLETE.json listing their sizes."""
    files = {"model.safetensors": b"weights!", STATE_FILE: b'{"step": %d}' % step} if files is None else files
    path = run_dir / "checkpoints" / (name or f"step_{step:08d}")
    path.mkdir(parents=True)
    for file_name, content in files.items():
        (path / file_name).parent.mkdir(parents=True, exist_ok=True)
        (path / file_name).write_bytes(content)
    if complete:
        listing = {file_name: len(content) for file_name, content in files.items()}
        (path / COMPLETE_FILE).write_text(json.dumps({"step": step, "files": listing}))
    return path


def names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def steps_of(checkpoints):
    return [c.step for c in checkpoints]


# ---------------------------------------------------------------- pruning


@pytest.mark.parametrize(
    "keep_last, keep_every, survivors",
    [
        (2, 0, [900, 1000]),  # only the newest two; the oldest go first
        (1, 0, [1000]),
        (3, 0, [800, 900, 1000]),
        (2, 500, [500, 900, 1000]),  # multiples of keep_every survive as well
        (1, 300, [300, 600, 900, 1000]),
        (3, 400, [400, 800, 900, 1000]),  # 800 is both recent and a multiple: kept once
        (20, 0, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]),  # fewer than keep_last: all kept
    ],
)
def test_prune_keeps_the_newest_and_the_multiples(tmp_path, keep_last, keep_every, survivors):
    for step in range(100, 1001, 100):
        make_checkpoint(tmp_path, step)
    ckpt._prune(tmp_path / "checkpoints", keep_last, keep_every)
    assert names(tmp_path) == [f"step_{s:08d}" for s in survivors]


def test_prune_orders_steps_numerically_and_ignores_other_entries(tmp_path):
    for step in (7, 95, 100, 1000, 12345):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 5, name=".tmp-step_00000005")  # another save in progress: not a checkpoint
    make_checkpoint(tmp_path, 3, name="step_3")  # not the 8-digit name: not a checkpoint
    (tmp_path / "checkpoints" / "notes.txt").write_text("kept")
    ckpt._prune(tmp_path / "checkpoints", keep_last=2, keep_every=0)
    assert names(tmp_path) == [".tmp-step_00000005", "notes.txt", "step_00001000", "step_00012345", "step_3"]


def test_prune_counts_incomplete_step_directories_like_the_others(tmp_path):
    """Pruning goes by name: a newer incomplete directory takes a keep_last slot (resumption then skips it)."""
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 40, complete=False)
    ckpt._prune(tmp_path / "checkpoints", keep_last=2, keep_every=0)
    assert names(tmp_path) == ["step_00000030", "step_00000040"]


# ---------------------------------------------------------------- verification and resumption


def test_verify_accepts_a_complete_listing_and_names_each_problem(tmp_path):
    good = make_checkpoint(tmp_path, 1, files={"a.bin": b"12345", "sub/b.bin": b"xy"})
    assert verify(good) is None

    no_marker = make_checkpoint(tmp_path, 2, complete=False)
    assert verify(no_marker) == "no COMPLETE.json: the save did not finish"

    missing = make_checkpoint(tmp_path, 3, files={"a.bin": b"12345", "sub/b.bin": b"xy"})
    (missing / "sub" / "b.bin").unlink()
    assert verify(missing) == "sub/b.bin is missing"

    truncated = make_checkpoint(tmp_path, 4, files={"a.bin": b"x" * 2000})
    (truncated / "a.bin").write_bytes(b"x" * 1000)
    assert verify(truncated) == "a.bin has 1,000 bytes, 2,000 were written"

    not_json = make_checkpoint(tmp_path, 5)
    (not_json / COMPLETE_FILE).write_text('{"files": {')
    assert verify(not_json) == "COMPLETE.json is damaged"

    no_listing = make_checkpoint(tmp_path, 6)
    (no_listing / COMPLETE_FILE).write_text('{"step": 6}')
    assert verify(no_listing) == "COMPLETE.json is damaged"

    marker_is_a_directory = make_checkpoint(tmp_path, 7, complete=False)
    (marker_is_a_directory / COMPLETE_FILE).mkdir()
    assert verify(marker_is_a_directory) == "no COMPLETE.json: the save did not finish"


def test_complete_checkpoints_oldest_first_with_a_warning_per_unusable_one(tmp_path):
    make_checkpoint(tmp_path, 300)
    make_checkpoint(tmp_path, 100)
    incomplete = make_checkpoint(tmp_path, 200, complete=False)
    make_checkpoint(tmp_path, 400, name=".tmp-step_00000400")
    make_checkpoint(tmp_path, 500, name="step_500")
    (tmp_path / "checkpoints" / "step_00000600").write_text("a file, not a directory")
    good, warnings = complete_checkpoints(tmp_path)
    assert [(c.path.name, c.step) for c in good] == [("step_00000100", 100), ("step_00000300", 300)]
    assert good[0].path == tmp_path / "checkpoints" / "step_00000100"
    assert warnings == [f"checkpoint {incomplete} is unusable (no COMPLETE.json: the save did not finish); skipping it"]


def test_complete_checkpoints_without_a_checkpoints_directory(tmp_path):
    assert complete_checkpoints(tmp_path) == ([], [])
    assert resolve_resume(tmp_path, "auto") == (None, [])


def test_resume_auto_picks_the_newest_complete_checkpoint(tmp_path):
    for step in (1000, 2000, 3000):
        make_checkpoint(tmp_path, step)
    newest_incomplete = make_checkpoint(tmp_path, 4000, complete=False)
    make_checkpoint(tmp_path, 5000, name=".tmp-step_00005000")  # a save killed before its rename
    truncated = make_checkpoint(tmp_path, 3500, files={"model.safetensors": b"x" * 10})
    (truncated / "model.safetensors").write_bytes(b"x" * 3)
    checkpoint, warnings = resolve_resume(tmp_path, "auto")
    assert checkpoint == Checkpoint(tmp_path / "checkpoints" / "step_00003000", 3000)
    assert warnings == [
        f"checkpoint {truncated} is unusable (model.safetensors has 3 bytes, 10 were written); skipping it",
        f"checkpoint {newest_incomplete} is unusable (no COMPLETE.json: the save did not finish); skipping it",
    ]
    assert checkpoint.state() == {"step": 3000}


def test_resume_never_ignores_checkpoints(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20, complete=False)
    assert resolve_resume(tmp_path, "never") == (None, [])


def test_resume_from_an_explicit_path(tmp_path):
    older = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    assert resolve_resume(tmp_path, str(older)) == (Checkpoint(older, 10), [])


def test_resume_from_an_explicit_path_that_is_not_a_checkpoint(tmp_path):
    incomplete = make_checkpoint(tmp_path, 10, complete=False)
    with pytest.raises(UserError, match="unusable: no COMPLETE.json: the save did not finish"):
        resolve_resume(tmp_path, str(incomplete))
    staging = make_checkpoint(tmp_path, 20, name=".tmp-step_00000020")
    with pytest.raises(UserError, match="is not a checkpoint directory"):
        resolve_resume(tmp_path, str(staging))
    with pytest.raises(UserError, match="is not a checkpoint directory"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step_00000030"))  # does not exist
    (tmp_path / "checkpoints" / "step_00000040").write_text("a file")
    with pytest.raises(UserError, match="is not a checkpoint directory"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step_00000040"))


# ---------------------------------------------------------------- recipe changes


def test_recipe_differences_walk_nested_sections():
    saved = {"seed": 1, "train": {"lr": 0.001, "steps": 100}, "data": {"dir": "a"}, "gone": 5}
    current = {"seed": 1, "train": {"lr": 0.002, "steps": 100}, "data": {"dir": "b"}, "new": {"x": 1}}
    assert recipe_differences(saved, current) == [
        ("data.dir", "a", "b"),
        ("gone", 5, None),
        ("train.lr", 0.001, 0.002),
    ]  # "new" is not in the saved recipe: a key added to the schema since, at its default
    assert recipe_differences(saved, saved) == []


def test_a_checkpoint_made_before_new_keys_existed_still_resumes():
    """Keys added to the schema after the checkpoint (train.schedule, a source's txt_documents) are not
    changes; list items (data.sources) are compared key by key, so a real change is still named."""
    saved = {"train": {"lr": 0.001}, "data": {"sources": [{"kind": "files", "weight": 1.0}]}}
    current = {
        "train": {"lr": 0.001, "schedule": "cosine", "decay_steps": 0},
        "data": {"sources": [{"kind": "files", "weight": 1.0, "txt_documents": "file", "validation_by": "auto"}]},
    }
    assert recipe_differences(saved, current) == []
    current["data"]["sources"][0]["weight"] = 2.0
    assert recipe_differences(saved, current) == [("data.sources.0.weight", 1.0, 2.0)]
    current["data"]["sources"].append({"kind": "hub"})
    assert [key for key, _, _ in recipe_differences(saved, current)] == ["data.sources"]


def test_check_resume_compatible_separates_harmless_and_blocking_changes():
    saved = {"recipe": {"train": {"lr": 0.001, "log_every": 10}, "data": {"dir": "a"}}, "fingerprints": {"data": "x"}}
    harmless = {"train": {"lr": 0.001, "log_every": 50}, "data": {"dir": "b"}}
    assert check_resume_compatible(saved, harmless, {"data": "x"}, allow_changes=False) == [
        "data.dir: 'a' → 'b'",
        "train.log_every: 10 → 50",
    ]
    blocking = {"train": {"lr": 0.002, "log_every": 10}, "data": {"dir": "a"}}
    with pytest.raises(UserError) as raised:
        check_resume_compatible(saved, blocking, {"data": "y"}, allow_changes=False)
    message = str(raised.value)
    assert "  - train.lr: 0.001 → 0.002\n  - data: content changed since the checkpoint\n" in message
    assert check_resume_compatible(saved, blocking, {"data": "y"}, allow_changes=True) == [
        "train.lr: 0.001 → 0.002 (allowed by train.allow_resume_changes)",
        "data: content changed since the checkpoint (allowed by train.allow_resume_changes)",
    ]
    assert check_resume_compatible(saved, saved["recipe"], {"data": "x"}, allow_changes=False) == []


# ---------------------------------------------------------------- saving


class StubAccelerator:
    """What save_checkpoint uses of Accelerator: one process whose save_state writes two known files."""

    def __init__(self, fail_with=None, num_processes=1, others_failed=False):
        self.is_main_process = True
        self.process_index = 0
        self.num_processes = num_processes
        self.device = torch.device("cpu")
        self.fail_with = fail_with
        self.others_failed = others_failed
        self.saved_to = []

    def save_state(self, directory):
        self.saved_to.append(directory)
        if self.fail_with is not None:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "half.bin"), "wb") as file:
                file.write(b"half")
            raise self.fail_with
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "model.safetensors"), "wb") as file:
            file.write(b"0123456789")
        os.makedirs(os.path.join(directory, "rng"), exist_ok=True)
        with open(os.path.join(directory, "rng", "rank0.pkl"), "wb") as file:
            file.write(b"abc")

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor + (1.0 if self.others_failed else 0.0)


@pytest.fixture(autouse=True)
def no_fault_injection(monkeypatch):
    monkeypatch.delenv(ckpt.KILL_DURING_SAVE_FAULT_ENV, raising=False)


def test_save_writes_the_state_and_a_listing_of_every_file_then_publishes(tmp_path):
    accelerator = StubAccelerator()
    path = save_checkpoint(accelerator, tmp_path, 1200, {"step": 1200, "loss": 2.5}, keep_last=2, keep_every=0)
    assert path == tmp_path / "checkpoints" / "step_00001200"
    assert accelerator.saved_to == [str(tmp_path / "checkpoints" / ".tmp-step_00001200")]
    assert names(tmp_path) == ["step_00001200"]  # the staging directory was renamed
    assert json.loads((path / STATE_FILE).read_text()) == {"step": 1200, "loss": 2.5}
    listing = json.loads((path / COMPLETE_FILE).read_text())
    state_size = len(json.dumps({"step": 1200, "loss": 2.5}, indent=1))
    assert listing == {
        "step": 1200,
        "files": {"model.safetensors": 10, "rng/rank0.pkl": 3, STATE_FILE: state_size},
    }
    assert verify(path) is None
    assert resolve_resume(tmp_path, "auto") == (Checkpoint(path, 1200), [])


def test_save_prunes_after_publishing_and_clears_stale_staging(tmp_path):
    for step in (100, 200, 300):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 350, name=".tmp-step_00000350")  # left by a killed save
    save_checkpoint(StubAccelerator(), tmp_path, 400, {"step": 400}, keep_last=2, keep_every=200)
    assert names(tmp_path) == ["step_00000200", "step_00000300", "step_00000400"]


def test_saving_a_step_again_replaces_it(tmp_path):
    old = make_checkpoint(tmp_path, 500, files={"stale.bin": b"old", STATE_FILE: b"{}"})
    save_checkpoint(StubAccelerator(), tmp_path, 500, {"step": 500}, keep_last=3, keep_every=0)
    assert sorted(p.name for p in old.iterdir()) == [COMPLETE_FILE, "model.safetensors", "rng", STATE_FILE]
    assert json.loads((old / STATE_FILE).read_text()) == {"step": 500}


def test_a_full_disk_leaves_earlier_checkpoints_untouched(tmp_path):
    earlier = make_checkpoint(tmp_path, 100)
    full = OSError(errno.ENOSPC, "quota exhausted")  # recognised by its errno alone
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint(StubAccelerator(fail_with=full), tmp_path, 200, {}, keep_last=1, keep_every=0)
    root = tmp_path / "checkpoints"
    assert str(raised.value) == (
        f"could not save checkpoint step 200 under {root}: the disk is full. Earlier checkpoints are untouched; "
        "free space or fix permissions, then rerun to resume"
    )
    assert names(tmp_path) == ["step_00000100"]  # the half-written staging directory is gone
    assert verify(earlier) is None


@pytest.mark.parametrize(
    "error, reported",
    [
        (RuntimeError("boom"), "RuntimeError: boom"),
        (RuntimeError("write failed: No space left on device"), "the disk is full"),  # torch.save's wording
        (OSError(errno.EACCES, "Permission denied"), "PermissionError: [Errno 13] Permission denied"),
    ],
)
def test_save_failures_are_reported_by_kind(tmp_path, error, reported):
    with pytest.raises(CheckpointError, match=f"step 7 under .*: {reported.replace('[', '.').replace(']', '.')}"):
        save_checkpoint(StubAccelerator(fail_with=error), tmp_path, 7, {}, keep_last=1, keep_every=0)
    assert names(tmp_path) == []


def test_a_failure_on_another_rank_fails_every_rank(tmp_path):
    earlier = make_checkpoint(tmp_path, 100)
    accelerator = StubAccelerator(num_processes=2, others_failed=True)
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint(accelerator, tmp_path, 200, {}, keep_last=1, keep_every=0)
    assert str(raised.value) == (
        f"could not save checkpoint step 200 under {tmp_path / 'checkpoints'}: another process failed to write its "
        "part. Earlier checkpoints are untouched; free space or fix permissions, then rerun to resume"
    )
    assert names(tmp_path) == ["step_00000100"] and verify(earlier) is None  # nothing published, nothing pruned


def test_several_processes_that_all_succeed_publish(tmp_path):
    path = save_checkpoint(StubAccelerator(num_processes=2), tmp_path, 3, {"step": 3}, keep_last=1, keep_every=0)
    assert names(tmp_path) == ["step_00000003"] and verify(path) is None


def test_save_creates_the_run_directory_and_reports_a_blocked_one(tmp_path):
    path = save_checkpoint(StubAccelerator(), tmp_path / "new" / "run", 1, {}, keep_last=1, keep_every=0)
    assert path == tmp_path / "new" / "run" / "checkpoints" / "step_00000001" and verify(path) is None
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "checkpoints").write_text("a file where the directory should be")
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint(StubAccelerator(), tmp_path / "blocked", 9, {}, keep_last=1, keep_every=0)
    assert str(raised.value).startswith(
        f"could not save checkpoint step 9 under {tmp_path / 'blocked' / 'checkpoints'}: "
    )


def test_the_fault_hook_kills_the_process_between_writing_and_publishing(tmp_path, monkeypatch):
    """LMTRAIN_FAULT_KILL_DURING_SAVE_STEP=N: SIGKILL to this process while saving step N, after the shards are
    written and before anything is renamed (os.kill is replaced here by a recorder that stops the save)."""
    kills = []

    class Killed(BaseException):  # not an Exception: _on_all_ranks must not turn it into a CheckpointError
        pass

    def fake_kill(pid, sig):
        kills.append((pid, sig))
        raise Killed

    monkeypatch.setattr(ckpt.os, "kill", fake_kill)
    monkeypatch.setenv(ckpt.KILL_DURING_SAVE_FAULT_ENV, "6")
    save_checkpoint(StubAccelerator(), tmp_path, 5, {}, keep_last=5, keep_every=0)  # another step: saved normally
    assert kills == []
    with pytest.raises(Killed):
        save_checkpoint(StubAccelerator(), tmp_path, 6, {}, keep_last=5, keep_every=0)
    assert kills == [(os.getpid(), ckpt.signal.SIGKILL)]
    assert names(tmp_path) == [".tmp-step_00000006", "step_00000005"]
    assert resolve_resume(tmp_path, "auto")[0].step == 5


def test_resume_error_messages_say_what_to_do(tmp_path):
    incomplete = make_checkpoint(tmp_path, 10, complete=False)
    with pytest.raises(UserError) as raised:
        resolve_resume(tmp_path, str(incomplete))
    assert str(raised.value) == (
        f"train.resume: checkpoint {incomplete} is unusable: no COMPLETE.json: the save did not finish. Pick another "
        "one, or use auto to take the newest complete checkpoint"
    )
    with pytest.raises(UserError) as raised:
        resolve_resume(tmp_path, str(tmp_path))
    assert str(raised.value) == (
        f"train.resume: {tmp_path} is not a checkpoint directory (run_dir/checkpoints/step_NNNNNNNN); "
        "use auto, never, or such a path"
    )


def test_blocking_changes_message_in_full():
    saved = {"recipe": {"seed": 1}, "fingerprints": {}}
    with pytest.raises(UserError) as raised:
        check_resume_compatible(saved, {"seed": 2}, {}, allow_changes=False)
    assert str(raised.value) == (
        "the checkpoint was made by a different run than this recipe describes:\n"
        "  - seed: 1 → 2\n"
        "restore the recipe and inputs, start a new run_dir, or set train.allow_resume_changes=true to continue anyway"
    )


def test_other_ranks_only_write_their_part(tmp_path):
    """Preparing (clearing stale staging) and publishing are the main process's; another rank only saves its state."""
    stale = make_checkpoint(tmp_path, 7, name=".tmp-step_00000007")
    accelerator = StubAccelerator()
    accelerator.is_main_process = False
    save_checkpoint(accelerator, tmp_path, 8, {"step": 8}, keep_last=1, keep_every=0)
    assert accelerator.saved_to == [str(tmp_path / "checkpoints" / ".tmp-step_00000008")]
    assert names(tmp_path) == [".tmp-step_00000007", ".tmp-step_00000008"] and stale.is_dir()


# ---------------------------------------------------------------- asynchronous saves


def trained_accelerator():
    """A real Accelerator with a small model and AdamW after one update: save_state writes model.safetensors,
    optimizer.bin (Adam moments) and the RNG state."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(8, 16)).pow(2).mean().backward()
    optimizer.step()
    return accelerator


def files_of(path):
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def snapshot_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(ckpt.SNAPSHOT_ENV, str(tmp_path / "ram"))
    return tmp_path / "ram"


def test_an_asynchronous_checkpoint_is_bitwise_the_synchronous_one(tmp_path, snapshot_dir):
    accelerator = trained_accelerator()
    state = {"step": 3, "tokens_seen": 96}
    sync_path, sync_records = ckpt.Checkpointer(accelerator, tmp_path / "sync", 2, 0, False).save(3, state)
    checkpointer = ckpt.Checkpointer(accelerator, tmp_path / "async", 2, 0, True)
    async_path, records = checkpointer.save(3, state)
    assert [r["async"] for r in records] == [True] and "checkpoint_bytes" not in records[0]
    state["step"] = 4  # the loop goes on: the checkpoint keeps the state of its step
    written = checkpointer.wait()
    assert [(r["event"], r["step"]) for r in written] == [("checkpoint_written", 3)]
    assert written[0]["checkpoint_bytes"] == sync_records[0]["checkpoint_bytes"] == ckpt.checkpoint_bytes(sync_path)
    assert files_of(async_path) == files_of(sync_path)  # every byte, COMPLETE.json and trainer_state.json included
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(files_of(async_path))
    assert sync_records[0]["async"] is False and sync_records[0]["checkpoint_stall_s"] > 0
    assert not list(snapshot_dir.rglob("*.bin"))  # the RAM snapshot is freed once copied


def test_an_asynchronous_save_is_published_only_when_written_and_one_at_a_time(tmp_path, snapshot_dir, monkeypatch):
    release = __import__("threading").Event()
    copy = ckpt._copy
    monkeypatch.setattr(ckpt, "_copy", lambda s, t: (release.wait(), copy(s, t)))
    checkpointer = ckpt.Checkpointer(StubAccelerator(), tmp_path, 5, 0, True)
    checkpointer.save(1, {"step": 1})
    assert checkpointer.poll() == []  # still writing: not visible,
    assert not [name for name in names(tmp_path) if name.startswith("step_")]
    assert resolve_resume(tmp_path, "auto") == (None, [])  # nothing to resume from
    release.set()
    path, records = checkpointer.save(2, {"step": 2})  # waits for step 1 first: at most one save in flight
    assert [(r.get("event"), r["step"]) for r in records] == [("checkpoint_written", 1), ("checkpoint", 2)]
    assert verify(tmp_path / "checkpoints" / "step_00000001") is None
    checkpointer.wait()
    assert verify(path) is None and names(tmp_path) == ["step_00000001", "step_00000002"]
    assert checkpointer.summary().startswith("checkpoints: 2 saved (asynchronous), training stalled ")


def test_a_background_write_that_fails_is_reported_and_keeps_earlier_checkpoints(tmp_path, snapshot_dir, monkeypatch):
    earlier = make_checkpoint(tmp_path, 100)
    checkpointer = ckpt.Checkpointer(StubAccelerator(), tmp_path, 1, 0, True)

    def full_disk(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_copy", full_disk)
    checkpointer.save(200, {"step": 200})
    with pytest.raises(CheckpointError) as raised:
        checkpointer.wait()
    assert str(raised.value) == (
        f"could not save checkpoint step 200 under {tmp_path / 'checkpoints'}: the disk is full. Earlier checkpoints "
        "are untouched; free space or fix permissions, then rerun to resume"
    )
    assert names(tmp_path) == ["step_00000100"] and verify(earlier) is None  # no staging left holding the disk
    assert checkpointer.poll() == []  # reported once; the run stops on the error


def test_the_last_save_is_synchronous_and_waits_for_the_one_in_flight(tmp_path, snapshot_dir):
    checkpointer = ckpt.Checkpointer(StubAccelerator(), tmp_path, 5, 0, True)
    checkpointer.save(1, {"step": 1})
    path, records = checkpointer.save(2, {"step": 2}, wait=True)
    assert [(r.get("event"), r["step"], r.get("async")) for r in records] == [
        ("checkpoint_written", 1, None),
        ("checkpoint", 2, False),
    ]
    assert checkpointer.in_flight is None and verify(path) is None and records[-1]["checkpoint_bytes"] > 0


def test_a_snapshot_that_does_not_fit_falls_back_to_a_synchronous_save(tmp_path, monkeypatch, capsys):
    blocked = tmp_path / "ram"
    blocked.write_text("a file where the snapshot folder would go: what a full /dev/shm looks like to mkdir")
    monkeypatch.setenv(ckpt.SNAPSHOT_ENV, str(blocked))
    checkpointer = ckpt.Checkpointer(StubAccelerator(), tmp_path / "run", 2, 0, True)
    path, records = checkpointer.save(5, {"step": 5})
    assert checkpointer.in_flight is None and verify(path) is None  # written and published, synchronously
    assert records[-1]["async"] is False and records[-1]["checkpoint_bytes"] > 0
    warning = capsys.readouterr().err
    assert f"warning: could not save checkpoint step 5 under {ckpt.snapshot_root(tmp_path / 'run').parent}" in warning
    assert "saving step 5 synchronously instead" in warning
