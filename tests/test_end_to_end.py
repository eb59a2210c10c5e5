"""The whole path on a tiny recipe: tokenizer → data_prep → train → export → reload → generate."""

import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtrain.data.prepare import as_datasets
from tests.conftest import run_cli

TINY = """
tokenizer: {vocab_size: 512, min_frequency: 2}
data:
  sources: [{kind: python_stdlib, max_documents: 150}]
  clean: {strip_html: false}
  seq_len: 64
  validation_fraction: 0.1
model: {hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 172}
train: {max_steps: 40, global_batch_size: 8, micro_batch_size: 4, warmup_steps: 4, lr: 3.0e-3,
        eval_every: 20, eval_batches: 4, log_every: 10}
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny recipe whose tokenizer and data are prepared once for the tests of this module."""
    root = tmp_path_factory.mktemp("e2e")
    recipe = root / "tiny.yaml"
    text = yaml.safe_load(TINY)
    text["run_dir"] = str(root / "run")
    text["tokenizer"]["dir"] = str(root / "tokenizer")
    text["data"]["dir"] = str(root / "data")
    recipe.write_text(yaml.safe_dump(text), encoding="utf-8")
    run_cli("tokenizer/train_tokenizer.py", recipe)
    run_cli("data_prep/prepare.py", recipe)
    return root, recipe


@pytest.fixture(scope="module")
def trained(prepared):
    root, recipe = prepared
    result = run_cli("train.py", recipe)
    return root, recipe, result


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_validation_loss_and_logs_every_step_kind(trained):
    root, _, result = trained
    metrics = read_metrics(root / "run")
    evals = [m for m in metrics if "eval_loss" in m]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in evals] == [0, 20, 40]
    assert [m["step"] for m in steps] == [10, 20, 30, 40]
    assert evals[0]["eval_loss"] == pytest.approx(math.log(512), abs=0.3)  # a fresh model is near-uniform
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5
    assert all(m["tokens_per_s"] > 0 and m["grad_norm"] > 0 for m in steps)
    assert steps[-1]["tokens_seen"] == 40 * 8 * 64
    assert "1 process(es) × micro 4 × accumulation 2 = 8 sequences × 64 tokens" in result.stderr
    assert "done: 40 steps" in result.stderr


def test_export_is_a_plain_hf_model_with_the_trained_weights(trained):
    root, recipe, _ = trained
    final = root / "run" / "final"
    assert (final / "model.safetensors").is_file()
    assert not list(final.glob("*.bin"))  # no pickles
    assert yaml.safe_load((final / "recipe.yaml").read_text()) == yaml.safe_load(
        (root / "run" / "recipe.yaml").read_text()
    )
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size == len(tokenizer) == 512
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    # Parity: the reloaded model reproduces the last validation loss the trainer logged.
    validation = as_datasets(root / "data")["validation"].with_format("torch")
    input_ids = validation[:16]["input_ids"].long()
    losses = [model(input_ids=input_ids[i : i + 4], labels=input_ids[i : i + 4]).loss for i in range(0, 16, 4)]
    with torch.no_grad():
        reloaded_loss = torch.stack(losses).mean().item()
    assert reloaded_loss == pytest.approx(
        [m for m in read_metrics(root / "run") if "eval_loss" in m][-1]["eval_loss"], abs=1e-4
    )


def test_generate_greedy_is_deterministic_and_sampling_runs(trained):
    root, _, _ = trained
    final = root / "run" / "final"
    prompts_file = root / "prompts.txt"
    prompts_file.write_text("def main(\nimport sys\n", encoding="utf-8")
    greedy = [
        run_cli("generate.py", final, "--prompts-file", prompts_file, "--max-new-tokens", "12").stdout for _ in range(2)
    ]
    assert greedy[0] == greedy[1]
    assert greedy[0].count("--- greedy, 12 new tokens") == 2
    assert "\ndef main(" in greedy[0] and "\nimport sys" in greedy[0]
    sampled = run_cli(
        "generate.py",
        final,
        "--prompt",
        "class ",
        "--temperature",
        "0.9",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--max-new-tokens",
        "12",
    ).stdout
    assert "sampling: temperature 0.9, top-k 20, top-p 0.9, seed 3" in sampled


def test_trackers_write_tensorboard_and_offline_wandb_runs(prepared):
    root, recipe = prepared
    run_dir = root / "tracked"
    run_cli(
        "train.py",
        recipe,
        f"run_dir={run_dir}",
        "train.max_steps=4",
        "train.eval_every=4",
        "train.log_every=2",
        "train.report_to=[tensorboard, wandb]",
    )
    assert list(run_dir.rglob("events.out.tfevents.*")), "no tensorboard event file"
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline wandb run"


def test_train_refuses_data_prepared_for_another_seq_len(prepared):
    _, recipe = prepared
    result = run_cli("train.py", recipe, "data.seq_len=32", check=False)
    assert result.returncode == 2
    assert "data was packed with seq_len 64 but the recipe says data.seq_len=32" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_rejects_a_directory_without_a_model(tmp_path):
    result = run_cli("generate.py", tmp_path, "--prompt", "x", check=False)
    assert result.returncode == 2 and "not a model directory" in result.stderr
