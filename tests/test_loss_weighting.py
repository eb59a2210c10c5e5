"""An optimizer step's gradient is that of the mean loss over ALL of its loss targets, whatever the split of the
global batch into micro-batches and processes (the gradient-accumulation fix of lmtrain/training/loop.py).

SFT examples with ~5 to ~40 assistant tokens, a global batch of 8 (the whole training set), ONE optimizer step:
(a) micro 8 x accumulation 1, (b) micro 2 x accumulation 4 in this process (the gradient the optimizer sees is
captured), (c) 2 processes x micro 2 x accumulation 2 under accelerate launch + DeepSpeed ZeRO-3 on CPU (the
gradient is read back from the exported weights: with weight decay 0 and a huge Adam eps the first AdamW
update is exactly -lr * g / (|g| + eps), an invertible function of g). The expectation is computed here with
plain torch, one unpadded example at a time: the gradient of (sum of per-token cross-entropy over every
assistant token of the 8 examples) / (their count). The old mean of per-micro-batch means is computed too and
must miss it by far more than the tolerance, so that the comparison can fail.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lmtrain.data.sampler import GlobalBatchSampler
from tests.conftest import REPO_ROOT
from tests.test_finetune import COLORS, make_base_model, recipe, write_jsonl

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    str(REPO_ROOT / "recipes/accelerate/cpu_zero3_2proc.yaml"),
]

ANSWER_WORDS = [1, 1, 2, 3, 5, 8, 11, 14]
"""Words in each training example's answer: ~5 to ~40 assistant tokens, so micro-batches weigh very differently."""
GLOBAL_BATCH = len(ANSWER_WORDS)
VALIDATION = 5
"""Validation examples: not a multiple of 2 processes x micro 2, so one rank runs a stand-in forward."""
LR, ADAM_EPS = 1.0, 1.0
"""With eps 1 the first update -lr * g / (|g| + eps) keeps g's magnitude (AdamW's usual eps hides it: ~ -lr sign g)."""

# Relative error in norm, fp32. Measured: (a) and (b) match the hand gradient to 2e-7 (padded micro-batches vs
# one example at a time), and their exported weights match the AdamW update of that gradient to 2.4e-7; (c) to
# 3e-7 through its exported weights. The mean of per-micro-batch means misses by 0.20 (b) and 0.21 (c):
# more than NAIVE_MIN_GAP times these tolerances, which leave ~50x room for summation-order noise.
GRAD_RTOL = 1e-5
UPDATE_RTOL = 1e-4
NAIVE_MIN_GAP = 100


def sft_data_rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)

    def row(words: int) -> dict:
        color = str(rng.choice(COLORS))
        answer = " ".join(str(rng.choice(COLORS)) for _ in range(words))
        return {"prompt": f"Repeat the word {color}.", "completion": answer}

    return [row(n) for n in ANSWER_WORDS], [row(n) for n in (1, 4, 9, 2, 14)]


def sft_setup(tmp_path_factory) -> dict:
    """The base model and data, made once per pytest session in its base temporary directory, where
    test_eval_sharding.py finds them too (pytest imports this file under two module names, so a module-level
    cache would not be shared)."""
    root = tmp_path_factory.getbasetemp() / "loss-weighting"
    setup = {"root": root, "base": root / "base", "train": root / "train.jsonl", "val": root / "val.jsonl"}
    if not (root / "setup.done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        make_base_model(setup["base"])
        train_rows, val_rows = sft_data_rows()
        write_jsonl(setup["train"], train_rows)
        write_jsonl(setup["val"], val_rows)
        (root / "setup.done").touch()
    return setup


def sft_recipe(setup: dict, name: str, micro: int, max_steps: int = 1):
    """One optimizer step on the 8 training examples, no warmup, decay or clipping; evaluation at steps 0 and 1."""
    case = setup["root"] / name
    case.mkdir(exist_ok=True)
    return recipe(
        case,
        setup["base"],
        "sft",
        [setup["train"]],
        data__validation_files=[str(setup["val"])],
        train__max_steps=max_steps,
        train__global_batch_size=GLOBAL_BATCH,
        train__micro_batch_size=micro,
        train__lr=LR,
        train__adam_eps=ADAM_EPS,
        train__warmup_steps=0,
        train__weight_decay=0.0,
        train__grad_clip=0.0,
        train__eval_every=1,
        train__log_every=1,
        sft__eval_generations=0,  # the loss is what these tests weigh; the generation check has its own tests
    )


def in_process_run(tmp_path_factory, name: str, micro: int) -> dict:
    """`fit` in this process, once per session, capturing each parameter's gradient when the optimizer steps:
    {"grads", "run_dir"}."""
    import lmtrain.training.loop as loop
    from lmtrain.finetune.sft import SftTask

    setup = sft_setup(tmp_path_factory)
    case = setup["root"] / name
    if not (case / "grads.pt").is_file():
        shutil.rmtree(case, ignore_errors=True)
        r = sft_recipe(setup, name, micro)
        grads = []
        real_build = loop.build_optimizer

        def build_optimizer(model, t):
            optimizer = real_build(model, t)
            named = list(model.named_parameters())

            def save_gradients(opt, args, kwargs):
                grads.append({n: p.grad.detach().clone() for n, p in named if p.grad is not None})

            optimizer.register_step_pre_hook(save_gradients)
            return optimizer

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop, "build_optimizer", build_optimizer)
            loop.fit(r, SftTask(r))
        assert len(grads) == 1, "expected exactly one optimizer step"
        torch.save(grads[0], case / "grads.pt")
    return {"grads": torch.load(case / "grads.pt"), "run_dir": case / "run"}


def launch(args: list[str], timeout: int = 420) -> subprocess.CompletedProcess:
    """accelerate launch with the CPU ZeRO-3 config on a free port (not the config's fixed one, which another
    launch on this machine may hold); on a timeout the launcher and its workers are killed together."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [*LAUNCH, "--main_process_port", str(port), *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"accelerate launch timed out after {timeout} s:\n{err[-5000:]}")
    assert proc.returncode == 0, err[-5000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def distributed_run(tmp_path_factory) -> dict:
    """2 processes x micro 2 x accumulation 2 under accelerate launch + DeepSpeed ZeRO-3 on CPU, once per
    session: {"run_dir"}."""
    setup = sft_setup(tmp_path_factory)
    case = setup["root"] / "c"
    if not (case / "launch.done").is_file():
        shutil.rmtree(case, ignore_errors=True)
        sft_recipe(setup, "c", 2)
        result = launch(["finetune.py", str(case / "recipe.yaml")])
        assert "2 process(es)" in result.stderr
        (case / "launch.done").touch()
    return {"run_dir": case / "run"}


def eval_records(run_dir: Path) -> dict[int, float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec["eval_loss"] for rec in map(json.loads, lines) if "eval_loss" in rec}


# ---------------------------------------------------------------------------- the expectation, by hand


def example_sums(model, data) -> list[tuple[dict[str, torch.Tensor], float, int]]:
    """Per example of `data` (lmtrain.finetune.sft.Tokenized): the gradient of the SUM of its assistant tokens'
    cross-entropy, that sum, and the number of those tokens. One example at a time, no padding, no batching."""
    out = []
    for i in range(len(data)):
        ids, trained = data.example(i)
        ids = torch.as_tensor(ids, dtype=torch.long)
        target = torch.as_tensor(trained[1:], dtype=torch.bool)  # token t is predicted from the tokens before it
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids[None]).logits[0, :-1].float()
        per_token = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
        total = per_token[target].sum()
        total.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        out.append((grads, total.item(), int(target.sum())))
    model.zero_grad(set_to_none=True)
    return out


def combine(per_example, groups: list[list[int]]) -> dict[str, torch.Tensor]:
    """The mean over `groups` of each group's per-target mean loss gradient. One group of every example is the
    correct gradient; several groups are the old mean of per-micro-batch means."""
    out = {}
    for name in per_example[0][0]:
        parts = [sum(per_example[i][0][name] for i in g) / sum(per_example[i][2] for i in g) for g in groups]
        out[name] = sum(parts) / len(groups)
    return out


def flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].flatten().double() for n in names])


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def micro_batches(world: int, micro: int) -> list[list[int]]:
    """The micro-batches of step 1 as the loop forms them: each rank's slice of the sampler's global batch, in
    order, cut into micro-batches."""
    sampler = GlobalBatchSampler(GLOBAL_BATCH, GLOBAL_BATCH, 1234)  # train.seed's default
    groups = []
    for rank in range(world):
        indices = sampler.rank_batch(0, rank, world).tolist()
        groups += [indices[i : i + micro] for i in range(0, len(indices), micro)]
    return groups


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    from lmtrain.finetune.sft import SftTask

    setup = sft_setup(tmp_path_factory)
    task = SftTask(sft_recipe(setup, "tokenize-only", GLOBAL_BATCH))
    data = task.train_data
    counts = [int(data.example(i)[1][1:].sum()) for i in range(len(data))]
    assert len(data) == GLOBAL_BATCH and max(counts) >= 5 * min(counts), counts  # very different answers
    model = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32)
    per_example = example_sums(model, data)
    assert [n for _, _, n in per_example] == counts
    names = [n for n, _ in model.named_parameters()]
    true = combine(per_example, [list(range(GLOBAL_BATCH))])
    naive_b = combine(per_example, micro_batches(1, 2))
    naive_c = combine(per_example, micro_batches(2, 2))
    true_flat = flat(true, names)
    for naive in (naive_b, naive_c):  # the test has teeth: the old weighting is far outside the tolerance
        assert rel(flat(naive, names), true_flat) > NAIVE_MIN_GAP * UPDATE_RTOL
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {"names": names, "true": true, "naive_b": naive_b, "naive_c": naive_c, "initial": initial}


def adamw_first_update(g: torch.Tensor) -> torch.Tensor:
    """torch's AdamW, step 1, weight decay 0: m_hat = g, v_hat = g^2, so W1 - W0 = -lr * g / (|g| + eps)."""
    return -LR * g / (g.abs() + ADAM_EPS)


def weight_updates(run_dir: Path, initial: dict, names: list[str]) -> torch.Tensor:
    final = load_file(str(run_dir / "final" / "model.safetensors"))
    return torch.cat([(final[n].double() - initial[n].double()).flatten() for n in names])


# ---------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("name,micro", [("a", 8), ("b", 2)])
def test_one_process_gradient_is_mean_over_all_assistant_tokens(tmp_path_factory, expected, name, micro):
    """(a) micro 8 x accumulation 1 and (b) micro 2 x accumulation 4: the gradient the optimizer steps on is the
    hand-computed one within GRAD_RTOL; for (b) the mean of micro-batch means is not."""
    run = in_process_run(tmp_path_factory, name, micro)
    names = expected["names"]
    got = flat(run["grads"], names)
    assert rel(got, flat(expected["true"], names)) < GRAD_RTOL
    if name == "b":
        assert rel(got, flat(expected["naive_b"], names)) > NAIVE_MIN_GAP * GRAD_RTOL
    # The same run's exported weights obey the AdamW formula the distributed case relies on.
    update = weight_updates(run["run_dir"], expected["initial"], names)
    assert rel(update, adamw_first_update(got)) < UPDATE_RTOL


@pytest.mark.distributed
def test_two_process_zero3_gradient_is_mean_over_all_assistant_tokens(tmp_path_factory, expected):
    """(c) 2 processes x micro 2 x accumulation 2, DeepSpeed ZeRO-3 on CPU: the exported weights moved by
    AdamW's first update of the hand-computed gradient, within UPDATE_RTOL; not by that of the old weighting."""
    run = distributed_run(tmp_path_factory)
    names = expected["names"]
    update = weight_updates(run["run_dir"], expected["initial"], names)
    want = adamw_first_update(flat(expected["true"], names))
    assert rel(update, want) < UPDATE_RTOL
    old = adamw_first_update(flat(expected["naive_c"], names))
    assert rel(old, want) > NAIVE_MIN_GAP * UPDATE_RTOL  # what the old weighting would have done
