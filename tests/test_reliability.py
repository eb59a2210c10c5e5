"""Runs that survive, for real: signals, SIGKILL during a save, a corrupt checkpoint, NaN losses.

The scenarios live in benchmarks/reliability.py (which prints them as a table); here each one runs
in separate processes and its details are asserted: per-step losses and final weights bitwise equal
to an uninterrupted run, the step it resumed from, the messages the user sees.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from benchmarks import reliability as rel
from lmtrain.data.sampler import GlobalBatchSampler
from lmtrain.training.checkpoint import complete_checkpoints


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return rel.Workspace(tmp_path_factory.mktemp("reliability"))


def assert_identical_to_reference(outcome):
    assert outcome["losses"] == outcome["reference_losses"]  # bitwise: fp32 on CPU is deterministic
    assert sorted(outcome["losses"]) == list(range(1, rel.MAX_STEPS + 1))
    assert outcome["weights_equal"]


def console_steps(stderr: str) -> list[int]:
    """The steps a run printed a training line for ("step     6 | loss ..." or "| SKIPPED"), in order."""
    return [int(m.group(1)) for m in re.finditer(r"^step +(\d+) \| (?:loss|SKIPPED)", stderr, re.MULTILINE)]


def assert_steps_lost_measured(outcome, last_printed: int):
    """steps_lost is what the two runs did: the interrupted run's last step (`last_printed`, its last console line,
    found here independently of the benchmark's metrics parsing) minus the step before the first one the resumed run
    printed (independent of its "resuming from" line and of any checkpoint). A step's metrics record is written
    before its console line, so a SIGKILL between the two leaves one step reached that was never printed."""
    first_redone = console_steps(outcome["resume_stderr"])[0]
    last = outcome["last_step_reached"]
    assert last in (last_printed, last_printed + 1)
    assert outcome["resumed_from"] == first_redone - 1
    assert outcome["steps_lost"] == last - (first_redone - 1)
    assert outcome["logged_every_step"]


def test_steps_lost_comes_from_the_last_step_reached_and_the_resume_line_not_from_a_checkpoint():
    # an interrupted run that logged steps 1..7 (and evaluations, which are no training work) and had
    # saved its checkpoint at step 6; the resumed run says where it restarts
    records = [{"step": 0, "eval_loss": 6.2}]
    records += [{"step": s, "loss": 6.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 8)]
    records += [{"step": 6, "eval_loss": 5.5}]
    resumed = (
        "model: LlamaForCausalLM, 120,000 parameters\n"
        "resuming from /runs/x/checkpoints/step_00000006 at step 6 (3.1k tokens seen)\n"
        "step      7 | loss 5.3000 | lr 1.00e-03\n"
    )
    assert rel.steps_lost(records, resumed) == (7, 6, 1)
    # a step whose update was skipped was still computed: it counts as reached
    skipped = {"step": 8, "event": "skipped_nonfinite", "loss": None, "grad_norm": None, "data_indices": [0]}
    assert rel.steps_lost([*records, skipped], resumed) == (8, 6, 2)
    # large step counts are printed with separators
    big = "resuming from /runs/x/checkpoints/step_00001000 at step 1,000 (1.0M tokens seen)\n"
    assert rel.steps_lost([{"step": 1003, "loss": 2.0}], big) == (1003, 1000, 3)
    assert rel.last_step_reached([{"step": 0, "eval_loss": 6.2}]) == 0
    with pytest.raises(ValueError, match="did not report resuming"):
        rel.resumed_step("step      1 | loss 6.0\n")


def test_ctrl_c_saves_and_the_same_command_resumes_exactly(ws):
    outcome = rel.ctrl_c_resume_1proc(ws)
    assert outcome["exit_code"] == 130
    assert "Run the same command again to resume" in outcome["stop_stderr"]
    assert 5 <= outcome["resumed_from"] < rel.MAX_STEPS
    assert "resuming from" in outcome["resume_stderr"]
    assert outcome["checkpoint_saved"] == outcome["resumed_from"]
    assert_steps_lost_measured(outcome, console_steps(outcome["stop_stderr"])[-1])
    assert outcome["steps_lost"] == 0  # saved at the step boundary it stopped at: nothing to redo
    assert_identical_to_reference(outcome)


@pytest.mark.distributed
def test_sigterm_under_accelerate_launch_zero3_stops_all_ranks_and_resumes_exactly(ws):
    outcome = rel.sigterm_resume_zero3_2proc(ws)
    assert outcome["exit_code"] != 0
    assert "stopped by SIGTERM" in outcome["stop_stderr"]
    assert 5 <= outcome["resumed_from"] < rel.MAX_STEPS
    assert outcome["checkpoint_saved"] == outcome["resumed_from"]
    assert_steps_lost_measured(outcome, console_steps(outcome["stop_stderr"])[-1])
    assert outcome["steps_lost"] == 0  # every rank stopped at the same step and saved it
    assert_identical_to_reference(outcome)


def test_sigkill_during_save_keeps_the_previous_checkpoint_and_resume_picks_it(ws):
    outcome = rel.sigkill_during_save(ws)
    assert outcome["exit_code"] == -9
    # the interrupted save left only its staging directory, never a visible step_00000016
    assert set(outcome["leftovers"]) == {"step_00000008", f".tmp-step_{2 * rel.CHECKPOINT_EVERY:08d}"}
    assert outcome["resumed_from"] == rel.CHECKPOINT_EVERY
    # killed while saving step 16, after training it: the 8 steps since the previous checkpoint are redone
    assert console_steps(outcome["stop_stderr"])[-1] == 2 * rel.CHECKPOINT_EVERY
    assert_steps_lost_measured(outcome, 2 * rel.CHECKPOINT_EVERY)
    assert outcome["steps_lost"] == rel.CHECKPOINT_EVERY
    assert_identical_to_reference(outcome)


def test_sigkill_during_a_background_write_keeps_the_previous_checkpoint(ws):
    outcome = rel.sigkill_during_save(ws, asynchronous=True)
    assert outcome["exit_code"] == -9
    assert set(outcome["leftovers"]) == {"step_00000008", f".tmp-step_{2 * rel.CHECKPOINT_EVERY:08d}"}
    assert outcome["resumed_from"] == rel.CHECKPOINT_EVERY
    saves = [r for r in outcome["interrupted_records"] if r.get("event") == "checkpoint"]
    assert [(r["step"], r["async"]) for r in saves] == [(8, True), (16, True)]
    last = console_steps(outcome["stop_stderr"])[-1]
    assert last >= 2 * rel.CHECKPOINT_EVERY  # the loop did not wait for the write it was killed in
    assert_steps_lost_measured(outcome, last)
    assert_identical_to_reference(outcome)


def test_sigterm_right_after_an_asynchronous_save_started_finishes_it_saves_and_resumes_exactly(ws):
    outcome = rel.sigterm_after_async_save_started(ws)
    assert outcome["exit_code"] == 143
    stopped_at = outcome["checkpoint_saved"]
    assert rel.CHECKPOINT_EVERY <= stopped_at < rel.MAX_STEPS
    # the save of step 8 was published before the run exited, then the step it stopped at was saved, and waited for
    events = [(r["event"], r["step"]) for r in outcome["saves"]]
    assert ("checkpoint", 8) in events and ("checkpoint_written", 8) in events
    assert events[-1] == ("checkpoint", stopped_at)
    assert outcome["resumed_from"] == stopped_at and outcome["steps_lost"] == 0
    assert_identical_to_reference(outcome)


@pytest.mark.distributed
def test_two_zero3_processes_saving_asynchronously_write_the_synchronous_checkpoints(ws, tmp_path):
    """Each rank snapshots its own ZeRO-3 shards into RAM and copies them; the published checkpoints hold the same
    bytes as the synchronous reference's (trainer_state.json and COMPLETE.json name the run_dir, so they differ)."""
    run_dir = tmp_path / "async"
    result = ws.train(run_dir, 2, rel.ASYNC)
    reference = ws.reference(2)
    assert rel.step_losses(run_dir) == rel.step_losses(reference)  # bitwise
    assert "checkpoint (asynchronous: written in the background)" in result.stderr
    for step in (rel.CHECKPOINT_EVERY, 2 * rel.CHECKPOINT_EVERY, rel.MAX_STEPS):
        ours, theirs = (d / "checkpoints" / f"step_{step:08d}" for d in (run_dir, reference))
        files = {str(f.relative_to(ours)) for f in ours.rglob("*") if f.is_file()}
        assert files == {str(f.relative_to(theirs)) for f in theirs.rglob("*") if f.is_file()}
        shards = [name for name in files if name.startswith("pytorch_model/")]
        assert len(shards) == 4  # model and optimizer states of 2 ranks
        for name in files - {"trainer_state.json", "COMPLETE.json"}:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_is_used(ws):
    outcome = rel.corrupt_checkpoint(ws)
    assert outcome["reported"], outcome["resume_stderr"][-2000:]
    assert outcome["resumed_from"] == rel.MAX_STEPS - rel.CHECKPOINT_EVERY
    # the corrupted run had trained every step (the reference's own log, a file the scenario did not touch)
    reference_last = max(r["step"] for r in rel.read_metrics(ws.reference(1)) if "loss" in r)
    assert reference_last == rel.MAX_STEPS
    assert_steps_lost_measured(outcome, reference_last)
    assert outcome["steps_lost"] == rel.CHECKPOINT_EVERY
    assert_identical_to_reference(outcome)


def test_nonfinite_loss_skips_the_update_everywhere_and_stops_after_the_limit(ws):
    outcome = rel.nonfinite_loss(ws)
    assert outcome["exit_code"] == 2
    assert "2 steps in a row had a non-finite loss" in outcome["stderr"]
    assert [r["step"] for r in outcome["skipped"]] == [5, 6]
    assert outcome["steps_lost"] == outcome["stderr"].count("| SKIPPED: non-finite loss") == 2
    assert outcome["last_step_reached"] == console_steps(outcome["stderr"])[-1] == 6
    assert outcome["weights_unchanged"]  # checkpoint after step 6 == checkpoint after step 4
    sampler = GlobalBatchSampler(_train_blocks(ws), rel.TINY["train"]["global_batch_size"], 1234)
    for record in outcome["skipped"]:  # the logged data indices are the batch that step trained on
        assert record["data_indices"] == sampler.global_batch(record["step"] - 1).tolist()


def test_resume_refuses_a_changed_recipe_but_reports_harmless_changes(ws, tmp_path):
    run_dir = tmp_path / "run"
    ws.train(run_dir, 1, "train.max_steps=4", "train.warmup_steps=1", "train.checkpoint_every=2")
    changed = ws.train(run_dir, 1, "train.max_steps=4", "train.warmup_steps=1", "train.lr=1e-3", check=False)
    assert changed.returncode == 2
    assert "train.lr: 0.003 → 0.001" in changed.stderr and "train.allow_resume_changes=true" in changed.stderr
    harmless = ws.train(run_dir, 1, "train.max_steps=4", "train.warmup_steps=1", "train.log_every=2")
    assert "run already complete" in harmless.stderr and "train.log_every: 1 → 2" in harmless.stderr


def test_a_directory_holding_another_run_is_not_overwritten_without_the_flag(ws, tmp_path):
    run_dir = tmp_path / "run"
    ws.train(run_dir, 1, "train.max_steps=2", "train.warmup_steps=1")
    fresh = ws.train(run_dir, 1, "train.max_steps=2", "train.warmup_steps=1", "train.resume=never", check=False)
    assert fresh.returncode == 2 and "train.overwrite=true" in fresh.stderr
    assert complete_checkpoints(run_dir)[0]  # still there
    ws.train(run_dir, 1, "train.max_steps=2", "train.warmup_steps=1", "train.resume=never", "train.overwrite=true")
    assert len(rel.step_losses(run_dir)) == 2


def test_a_checkpoint_that_cannot_be_written_fails_with_a_clear_message(ws, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("not a directory")  # what a full or read-only disk looks like to mkdir
    result = ws.train(run_dir, 1, "train.max_steps=2", "train.warmup_steps=1", check=False)
    assert result.returncode == 2
    assert "could not save checkpoint step 2" in result.stderr and "Earlier checkpoints are untouched" in result.stderr
    assert "error: " in result.stderr and "Traceback (most recent call last)" not in result.stderr.split("error: ")[0]


def test_a_writer_failing_mid_save_fails_with_a_clear_message_and_keeps_earlier_checkpoints(tmp_path):
    from accelerate import Accelerator

    from lmtrain.training.checkpoint import CheckpointError, save_checkpoint

    accelerator = Accelerator(cpu=True)
    save_checkpoint(accelerator, tmp_path, 1, {"step": 1}, keep_last=1, keep_every=0)

    def full_disk(path):  # how torch.save reports a full disk: a RuntimeError, not an OSError
        Path(path).mkdir()
        (Path(path) / "half-written.bin").write_bytes(b"x" * 10)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
            "data/0: file write failed. No space left on device"
        )

    accelerator.save_state = full_disk
    with pytest.raises(
        CheckpointError,
        match="could not save checkpoint step 2 .*: the disk is full. Earlier checkpoints are untouched",
    ):
        save_checkpoint(accelerator, tmp_path, 2, {"step": 2}, keep_last=1, keep_every=0)
    assert [c.step for c in complete_checkpoints(tmp_path)[0]] == [1]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the partial save does not hold the disk


def _train_blocks(ws) -> int:
    manifest = json.loads((ws.root / "data" / "manifest.json").read_text())
    return manifest["splits"]["train"]["blocks"]


def test_best_model_selection_starts_over_when_best_metric_changes_on_resume():
    from lmtrain.training.loop import _update_best

    exports = []
    state = {"best": {"metric": "macro_f1", "value": 0.7, "step": 10}}  # restored from the checkpoint
    _update_best(state, {"eval_loss": 1.2, "macro_f1": 0.5}, 20, "eval_loss", lambda: exports.append(20))
    assert exports == [20] and state["best"] == {"metric": "eval_loss", "value": 1.2, "step": 20}
    _update_best(state, {"eval_loss": 1.5, "macro_f1": 0.9}, 30, "eval_loss", lambda: exports.append(30))
    _update_best(state, {"eval_loss": 1.1, "macro_f1": 0.1}, 40, "eval_loss", lambda: exports.append(40))
    assert exports == [20, 40] and state["best"]["step"] == 40


@pytest.mark.distributed
@pytest.mark.parametrize("zero, saved, resumed", [(3, 2, 1), (3, 1, 2), (2, 2, 1), (2, 1, 2)])
def test_a_deepspeed_run_resumes_on_another_number_of_processes(ws, zero, saved, resumed):
    """Saved by N processes, resumed by M: DeepSpeed's universal checkpoint reshards weights and Adam moments, the
    trainer state carries step, schedule and data position; the steps after the resume match an uninterrupted run
    on M processes (measured: bitwise; asserted within fp32 rounding, rel.LOSS_RTOL and rel.WEIGHT_ATOL)."""
    outcome = rel.world_size_change(ws, saved, resumed, zero=zero)
    assert outcome["resumed_from"] == 2 * rel.CHECKPOINT_EVERY and outcome["steps_lost"] == 0
    assert outcome["steps_compared"] == list(range(2 * rel.CHECKPOINT_EVERY + 1, rel.MAX_STEPS + 1))
    assert outcome["max_loss_rel_diff"] <= rel.LOSS_RTOL, outcome["resume_stderr"][-3000:]
    assert outcome["max_weight_abs_diff"] <= rel.WEIGHT_ATOL
    assert (
        f"saved by {saved} process(es), resumed on {resumed}: DeepSpeed's universal checkpoint"
        in (outcome["resume_stderr"])
    )
    # the conversion is DeepSpeed's, kept beside the shards it came from
    checkpoint = ws.root / f"world_{saved}to{resumed}_zero{zero}" / "checkpoints" / "step_00000016"
    assert (checkpoint / "universal" / "pytorch_model" / "zero").is_dir()


@pytest.mark.distributed
def test_a_deepspeed_checkpoint_is_not_loaded_by_a_launch_without_deepspeed(ws, tmp_path):
    """Accelerate without DeepSpeed would find no model.safetensors in ZeRO shards; refused up front, never a fresh
    start that looks like a resume."""
    run_dir = tmp_path / "run"
    shutil.copytree(ws.reference(2), run_dir)
    shutil.rmtree(run_dir / "final")
    result = ws.train(run_dir, 1, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "was saved by a DeepSpeed launch and this launch runs without DeepSpeed" in result.stderr
    assert "error: " in result.stderr and "Traceback (most recent call last)" not in result.stderr.split("error: ")[0]
