"""Fine-tuning on two CPU processes under accelerate launch + DeepSpeed ZeRO-3.

The evaluation gathers both ranks' predictions (classification) or generated answers (SFT): the exported model,
reloaded in one process, must reproduce the figures that the two-process run logged over the validation split."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lmtrain.config.finetune import FinetuneRecipe
from lmtrain.config.recipe import load_recipe
from tests.conftest import REPO_ROOT
from tests.test_finetune import answer_of, classify_rows, fit_task, make_base_model, sft_rows, write_jsonl

pytestmark = pytest.mark.distributed

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    str(REPO_ROOT / "recipes/accelerate/cpu_zero3_2proc.yaml"),
]


def launch_finetune(tmp_path, recipe: dict) -> list[dict]:
    """Run finetune.py on two processes; the evaluations it logged."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [*LAUNCH, "finetune.py", str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "2 process(es)" in result.stderr
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "eval_loss" in line]


def test_two_process_classification_evaluates_every_validation_example(tmp_path):
    base = make_base_model(tmp_path / "base")
    rows = classify_rows(130, seed=5)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:80])
    val = write_jsonl(tmp_path / "val.jsonl", rows[80:])  # 50 examples: 25 per rank
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "base_model": str(base),
        "task": "classify",
        "data": {"source": "files", "train_files": [str(train)], "validation_files": [str(val)], "max_length": 32},
        "train": {
            "max_steps": 4,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "lr": 3.0e-3,
            "warmup_steps": 1,
            "eval_every": 2,
            "eval_batches": 0,
            "log_every": 2,
            "checkpoint_every": 0,
            "best_metric": "accuracy",
        },
    }
    evals = launch_finetune(tmp_path, recipe)
    assert [e["step"] for e in evals] == [0, 2, 4]

    final = tmp_path / "run" / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    labels = [model.config.label2id[row["label"]] for row in rows[80:]]
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer([row["text"]], return_tensors="pt")).logits for row in rows[80:]])
    accuracy = float(np.mean(logits.argmax(-1).numpy() == np.array(labels)))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert evals[-1]["accuracy"] == pytest.approx(accuracy)
    assert evals[-1]["eval_loss"] == pytest.approx(loss, rel=1e-4)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_two_process_sft_generates_the_answers_of_one_process(tmp_path):
    """5 answers in batches of 2 (sft.eval_batch_size) are 3 generate calls: rank 1 runs a stand-in for the third, so that both
    ranks gather ZeRO-3's parameters for the same forwards (a rank missing one would hang the other). The answers
    equal those of one process, token for token: a batch is the same wherever it runs."""
    base = make_base_model(tmp_path / "base")
    rows = sft_rows(45, seed=4)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:40])
    val = write_jsonl(tmp_path / "val.jsonl", rows[40:])
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "base_model": str(base),
        "task": "sft",
        "data": {"source": "files", "train_files": [str(train)], "validation_files": [str(val)], "max_length": 48},
        "sft": {"eval_generations": 5, "eval_max_new_tokens": 8, "eval_batch_size": 2},
        "train": {
            "max_steps": 4,
            "global_batch_size": 8,
            "micro_batch_size": 2,
            "lr": 3.0e-3,
            "warmup_steps": 1,
            "eval_every": 4,
            "eval_batches": 0,
            "log_every": 2,
            "checkpoint_every": 0,
        },
    }
    evals = launch_finetune(tmp_path, recipe)
    assert [e["step"] for e in evals] == [0, 4]
    one = tmp_path / "one-process"
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({**recipe, "run_dir": str(one)}), encoding="utf-8")
    fit_task(load_recipe(path, [], schema=FinetuneRecipe))
    for step in ("0000000", "0000004"):
        two_answers = (tmp_path / f"run/eval_answers/step{step}.jsonl").read_text()
        assert two_answers == (one / f"eval_answers/step{step}.jsonl").read_text()
    answers = [json.loads(line)["answer"] for line in two_answers.splitlines()]
    references = [answer_of(row) for row in rows[40:]]
    assert evals[-1]["chrf"] == pytest.approx(sacrebleu.metrics.CHRF().corpus_score(answers, [references]).score)
