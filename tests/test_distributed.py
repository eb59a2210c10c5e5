"""Two CPU processes under `accelerate launch` + DeepSpeed ZeRO-3, for real.

Checks: (a) each rank sees 2 processes and reads a disjoint slice of every global batch, and
the model is partitioned while it is built (zero.Init), never whole on one rank;
(b) the loss curve matches a single-process run with the same global batch and the same
initial weights; (c) the export gathers the full weights: the reloaded model reproduces the
validation loss the ZeRO-3 model logged; (d) only the main process writes shared files.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from lmtrain.config.recipe import load_recipe
from lmtrain.data.prepare import as_datasets
from lmtrain.data.sampler import GlobalBatchSampler
from lmtrain.model.llama import build_model, count_parameters, llama_config
from lmtrain.tokenizer.bpe import load_tokenizer
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.distributed

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    str(REPO_ROOT / "recipes/accelerate/cpu_zero3_2proc.yaml"),
]

TINY = """
tokenizer: {vocab_size: 512}
data:
  sources: [{kind: python_stdlib, max_documents: 120}]
  clean: {strip_html: false}
  seq_len: 64
  validation_fraction: 0.1
model: {hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 172}
train: {max_steps: 8, global_batch_size: 8, micro_batch_size: 4, warmup_steps: 2, lr: 3.0e-3,
        eval_every: 4, eval_batches: 4, log_every: 1}
"""

# fp32 on both sides, the same batches and the same initial weights. The first steps agree to all
# printed digits; after that the order of floating-point reductions (ZeRO-3's reduce-scatter across
# ranks versus local accumulation) drifts the losses by ~2e-5 relative by step 8, as Adam amplifies
# tiny gradient differences. Two ranks reading the same data (not disjoint slices) would differ by
# orders of magnitude more.
LOSS_RTOL = 1e-4


def run(cmd, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env, **kwargs)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tokenizer, data and one set of initial weights shared by both runs."""
    root = tmp_path_factory.mktemp("dist")
    text = yaml.safe_load(TINY)
    text["tokenizer"]["dir"] = str(root / "tokenizer")
    text["data"]["dir"] = str(root / "data")
    text["model"]["init_from"] = str(root / "init")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(text), encoding="utf-8")
    run([sys.executable, "tokenizer/train_tokenizer.py", str(recipe_path)])
    run([sys.executable, "data_prep/prepare.py", str(recipe_path)])
    recipe = load_recipe(recipe_path, ["model.init_from="])
    tokenizer = load_tokenizer(recipe.tokenizer.dir)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    torch.manual_seed(0)
    build_model(recipe, llama_config(recipe, ids)).save_pretrained(root / "init")
    return root, recipe_path


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_each_rank_sees_two_processes_and_a_disjoint_slice(setup, tmp_path):
    _, recipe_path = setup
    run([*LAUNCH, "tests/distributed_probe.py", str(recipe_path), str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["process_index"] for r in ranks] == [0, 1]
    assert all(r["num_processes"] == 2 and r["distributed_type"] == "DistributedType.DEEPSPEED" for r in ranks)
    assert [r["is_main_process"] for r in ranks] == [True, False]
    assert all(r["gradient_accumulation_steps"] == 1 for r in ranks)  # 8 = 4 micro × 1 × 2 processes
    sampler = GlobalBatchSampler(1000, 8, load_recipe(recipe_path).train.seed)
    for step in range(5):
        first, second = ranks[0]["batches"][step], ranks[1]["batches"][step]
        assert len(first) == len(second) == 4 and not set(first) & set(second)
        assert first + second == sampler.global_batch(step).tolist()
    # the model was never whole on a rank: each holds about half of every parameter's elements
    total = count_parameters(llama_config(load_recipe(recipe_path)))
    assert all(r["partitioned"] and r["full_elements"] == total for r in ranks)
    assert sum(r["local_elements"] for r in ranks) >= total
    assert all(r["local_elements"] <= total / 2 + 1024 for r in ranks)


@pytest.fixture(scope="module")
def both_runs(setup):
    root, recipe_path = setup
    single, zero3 = root / "single", root / "zero3"
    run([sys.executable, "train.py", str(recipe_path), f"run_dir={single}"])
    result = run([*LAUNCH, "train.py", str(recipe_path), f"run_dir={zero3}", "train.report_to=[tensorboard]"])
    return root, single, zero3, result


def test_zero3_loss_curve_matches_single_process(both_runs):
    _, single, zero3, result = both_runs
    assert "2 process(es) × micro 4 × accumulation 1 = 8 sequences" in result.stderr
    one, two = metrics(single), metrics(zero3)
    assert [m["step"] for m in one] == [m["step"] for m in two]
    train_one = np.array([m["loss"] for m in one if "loss" in m])
    train_two = np.array([m["loss"] for m in two if "loss" in m])
    assert len(train_one) == 8 and train_one[-1] < train_one[0]
    np.testing.assert_allclose(train_two, train_one, rtol=LOSS_RTOL)
    assert train_two[0] == pytest.approx(train_one[0], rel=1e-6)  # same init, same first batch
    evals_one = [m["eval_loss"] for m in one if "eval_loss" in m]
    evals_two = [m["eval_loss"] for m in two if "eval_loss" in m]
    np.testing.assert_allclose(evals_two, evals_one, rtol=LOSS_RTOL)


def test_zero3_export_holds_the_trained_weights(both_runs):
    root, _, zero3, _ = both_runs
    model = AutoModelForCausalLM.from_pretrained(zero3 / "final")
    initial = AutoModelForCausalLM.from_pretrained(root / "init")
    weight = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(model.state_dict()[weight], initial.state_dict()[weight])  # trained, not the init
    validation = as_datasets(root / "data")["validation"].with_format("torch")
    input_ids = validation[:16]["input_ids"].long()  # eval_batches 4 × micro 4, split over the 2 ranks
    with torch.no_grad():
        loss = (
            torch.stack(
                [model(input_ids=input_ids[i : i + 4], labels=input_ids[i : i + 4]).loss for i in range(0, 16, 4)]
            )
            .mean()
            .item()
        )
    assert loss == pytest.approx([m for m in metrics(zero3) if "eval_loss" in m][-1]["eval_loss"], abs=1e-4)


def test_only_the_main_process_writes_shared_files(both_runs):
    _, _, zero3, _ = both_runs
    lines = (zero3 / "metrics.jsonl").read_text().splitlines()
    saves = [line for line in lines if '"event": "checkpoint' in line]  # what each checkpoint cost, once per save
    assert len(lines) == len(set(lines)) == 8 + 3 + len(saves)  # 8 step lines, 3 evaluations, each written once
    assert saves and all(json.loads(line)["step"] for line in saves)
    event_files = list(zero3.rglob("events.out.tfevents.*"))  # named events.out.tfevents.<time>.<host>.<pid>.<n>
    assert event_files and len({path.name.split(".")[-2] for path in event_files}) == 1  # one writing process
    assert sorted(p.name for p in (zero3 / "final").glob("*.safetensors")) == ["model.safetensors"]
