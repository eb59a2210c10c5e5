"""Fine-tuning survives interruption bit for bit, and a LoRA adapter outlives its base model's move.

An interrupted run is stopped by a real SIGINT (the Ctrl-C path: the loop finishes the step, saves a
checkpoint and raises Preempted); running the same recipe again resumes from that checkpoint. Its final
weights and every logged loss must equal those of a run that was never interrupted."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtrain.errors import Preempted, UserError
from tests.test_finetune import make_base_model, recipe, run_generate, sft_rows, write_jsonl

MAX_STEPS = 8
STOP_AFTER = 3
"""The signal arrives while step 3 runs: the run saves step_00000003, which is not a periodic checkpoint."""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base") / "model")


def sft_recipe(root: Path, base: Path, data: Path, **sections):
    root.mkdir()
    return recipe(
        root,
        base,
        "sft",
        [data],
        train__max_steps=MAX_STEPS,
        train__global_batch_size=8,
        train__micro_batch_size=4,  # two micro-batches per step: gradient accumulation is resumed too
        train__checkpoint_every=4,
        train__eval_every=4,
        train__log_every=1,
        **sections,
    )


def logged(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """{step: training loss} and {step: eval loss} from the run's metrics log."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}
    evaluation = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    return train, evaluation


def interrupt_then_resume(r) -> int:
    """Run `r`, send SIGINT to this process during step STOP_AFTER, then run the same recipe again; the step
    the second run resumed from."""
    from lmtrain.finetune.sft import SftTask
    from lmtrain.training.loop import fit

    task = SftTask(r)
    fetch, steps = task.batch, []

    def batch(indices):
        steps.append(indices)
        if len(steps) == STOP_AFTER * 2:  # the step's last micro-batch: 2 per step
            os.kill(os.getpid(), signal.SIGINT)
        return fetch(indices)

    task.batch = batch
    with pytest.raises(Preempted):
        fit(r, task)
    checkpoints = sorted(p.name for p in (Path(r.run_dir) / "checkpoints").iterdir())
    assert checkpoints == ["step_00000003"] and not (Path(r.run_dir) / "final").exists()
    return fit(r, SftTask(r)).resumed_from_step


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_an_interrupted_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(base, tmp_path, lora):
    from lmtrain.finetune.sft import SftTask
    from lmtrain.training.loop import fit

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(48))
    sections = {"lora": {"enabled": True, "r": 4, "alpha": 8}, "train__lr": 1.0e-2} if lora else {}
    reference = sft_recipe(tmp_path / "reference", base, data, **sections)
    fit(reference, SftTask(reference))
    resumed = sft_recipe(tmp_path / "resumed", base, data, **sections)
    assert interrupt_then_resume(resumed) == STOP_AFTER

    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    expected = load_file(Path(reference.run_dir) / "final" / weights)
    actual = load_file(Path(resumed.run_dir) / "final" / weights)
    assert expected.keys() == actual.keys() and len(expected) > 0
    assert all(torch.equal(expected[k], actual[k]) for k in expected), [
        k for k in expected if not torch.equal(expected[k], actual[k])
    ]
    # Both runs trained (equal because unchanged would prove nothing): LoRA's B starts at zero, a full
    # fine-tune starts from the base weights.
    if lora:
        assert all("lora_" in k for k in expected)
        assert all(expected[k].abs().sum() > 0 for k in expected if "lora_B" in k)
    else:
        start = load_file(base / "model.safetensors")
        assert start.keys() == expected.keys() and not any(torch.equal(start[k], expected[k]) for k in start)
    ref_train, ref_eval = logged(Path(reference.run_dir))
    train, evaluation = logged(Path(resumed.run_dir))
    assert sorted(ref_train) == list(range(1, MAX_STEPS + 1)) and sorted(ref_eval) == [0, 4, 8]
    assert train == ref_train and evaluation == ref_eval  # exact floats, every step


def test_generate_finds_a_moved_lora_base_with_the_base_flag(base, tmp_path, monkeypatch, capfd):
    from peft import PeftModel

    from lmtrain.finetune.sft import SftTask
    from lmtrain.training.loop import fit

    original = shutil.copytree(base, tmp_path / "original_base")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(24))
    r = recipe(tmp_path, original, "sft", [data], lora={"enabled": True, "r": 4}, train__max_steps=2)
    fit(r, SftTask(r))
    adapter = Path(r.run_dir) / "final"
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded) == original.resolve()
    moved = original.rename(tmp_path / "moved_base")

    prompt = "What is 2 plus 5?"
    with pytest.raises(UserError, match="is not a model directory here; pass the base model directory with --base"):
        run_generate(monkeypatch, adapter, "--prompt", prompt, "--max-new-tokens", "8")
    capfd.readouterr()
    run_generate(monkeypatch, adapter, "--base", moved, "--prompt", prompt, "--max-new-tokens", "8")
    out = capfd.readouterr().out

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(moved), str(adapter)).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip() and f"{prompt}{expected}\n" in out, out
