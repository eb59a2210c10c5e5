"""Evaluation counts every validation example exactly once, on any number of processes
(lmtrain/training/evaluation.py: eval_shard, mean_eval_loss).

- eval_shard with fake accelerators: over sizes, worlds, micro-batches and eval_batches limits, the counted
  indices of all ranks are exactly the examples to evaluate, once each; every rank runs as many forwards as
  the others (ZeRO-3 needs every rank in every forward); stand-ins are marked not counted.
- SftTask.evaluate on 1 to 4 simulated ranks (a fake accelerator whose reduce hands back each rank's totals,
  summed here) equals the mean loss per assistant token computed by hand over every validation example.
- For real: the step-0 eval loss logged by 1-process runs (micro 8, micro 2) and by a 2-process ZeRO-3 run
  (micro 2; 5 validation examples, so one rank has 3 and the other 2 plus a stand-in) equals the hand value
  from the base model; the 2-process run's step-1 eval equals the hand value from its exported model.
  The runs are those of tests/test_loss_weighting.py (made once per pytest session).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lmtrain.errors import UserError
from lmtrain.training.evaluation import EvalBatch, eval_shard
from tests.test_loss_weighting import GLOBAL_BATCH, distributed_run, eval_records, in_process_run, sft_recipe, sft_setup

EVAL_ATOL = 1e-5


def fake_accelerator(rank: int, world: int, reduced: list | None = None):
    """What eval_shard and mean_eval_loss read; reduce keeps this rank's totals, which the test sums over ranks
    (the value it returns, whose mean a rank would report, is a placeholder the test does not read)."""

    def reduce(tensor, reduction="sum"):
        assert reduction == "sum"
        if reduced is not None:
            reduced.append(tensor.detach().clone())
        return torch.ones_like(tensor)

    return SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"), reduce=reduce)


# ---------------------------------------------------------------------------- eval_shard


def test_empty_validation_split_is_a_clear_error():
    with pytest.raises(UserError, match="validation split is empty"):
        eval_shard(0, fake_accelerator(0, 1), 2, 0)


@pytest.mark.parametrize("max_batches", [0, 3])
@pytest.mark.parametrize("micro", [1, 2, 4])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [1, 7, 8, 13])
def test_every_example_is_counted_once(size, world, micro, max_batches):
    wanted = min(size, max_batches * micro) if max_batches else size
    shards = [eval_shard(size, fake_accelerator(rank, world), micro, max_batches) for rank in range(world)]
    counted = [int(i) for shard in shards for b in shard if b.counted for i in b.indices]
    assert sorted(counted) == list(range(wanted))  # each example once, none past the limit
    assert len(set(len(shard) for shard in shards)) == 1  # every rank runs the same number of forwards
    # ... and no more than the largest share needs (no round of stand-ins only)
    assert len(shards[0]) == max(sum(b.counted for b in shard) for shard in shards)
    for shard in shards:
        for b in shard:
            assert isinstance(b, EvalBatch)
            assert 1 <= len(b.indices) <= micro  # a stand-in too is a real, readable example
            assert all(0 <= int(i) < size for i in b.indices)
        # counted forwards come first; the stand-ins that keep a short share in step follow them
        flags = [b.counted for b in shard]
        assert flags == sorted(flags, reverse=True)
    if world > wanted:  # more ranks than examples: the extra ranks only have stand-ins
        for shard in shards[wanted:]:
            assert shard and not any(b.counted for b in shard)


def test_shares_are_uneven_by_at_most_one_example():
    for size, world in [(13, 4), (7, 2), (5, 3)]:
        shares = [
            sum(len(b.indices) for b in eval_shard(size, fake_accelerator(r, world), 2, 0) if b.counted)
            for r in range(world)
        ]
        assert sum(shares) == size and max(shares) - min(shares) <= 1


# ---------------------------------------------------------------------------- the mean over all examples


@torch.no_grad()
def hand_eval_loss(model, data) -> float:
    """Sum of per-token cross-entropy over every assistant token of every validation example, over their count;
    one unpadded example at a time."""
    total, count = 0.0, 0
    for i in range(len(data)):
        ids, trained = data.example(i)
        ids = torch.as_tensor(ids, dtype=torch.long)
        target = torch.as_tensor(trained[1:], dtype=torch.bool)
        logits = model(input_ids=ids[None]).logits[0, :-1].double()
        total += torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")[target].sum().item()
        count += int(target.sum())
    return total / count


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from lmtrain.finetune.sft import SftTask

    setup = sft_setup(tmp_path_factory)
    model = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32).eval()
    task = SftTask(sft_recipe(setup, "eval-only", GLOBAL_BATCH))
    assert len(task.val_data) == 5
    return {"setup": setup, "model": model, "task": task, "hand": hand_eval_loss(model, task.val_data)}


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sft_evaluate_on_simulated_ranks_is_the_mean_over_all_validation_tokens(sft, world):
    """Each rank's (loss sum, targets) totals, summed as accelerator.reduce would, give the hand-computed mean
    for every micro-batch size and every eval_batches limit that covers the split."""
    task, model = sft["task"], sft["model"]
    for micro in (1, 2, 4):
        task.recipe.train.micro_batch_size = micro
        reduced = []
        for rank in range(world):
            task.evaluate(model, fake_accelerator(rank, world, reduced))
        loss_sum, targets = torch.stack(reduced).sum(0).tolist()
        assert loss_sum / targets == pytest.approx(sft["hand"], abs=EVAL_ATOL), (world, micro)
    # A limit: eval_batches=1 with micro 2 evaluates the first 2 examples only, once, on any world.
    task.recipe.train.micro_batch_size, task.recipe.train.eval_batches = 2, 1
    try:
        reduced = []
        for rank in range(world):
            task.evaluate(model, fake_accelerator(rank, world, reduced))
        loss_sum, targets = torch.stack(reduced).sum(0).tolist()
        expected = hand_eval_loss(model, _Subset(task.val_data, 2))
        assert loss_sum / targets == pytest.approx(expected, abs=EVAL_ATOL)
    finally:
        task.recipe.train.eval_batches = 0


class _Subset:
    def __init__(self, data, n: int):
        self.data, self.n = data, n

    def __len__(self) -> int:
        return self.n

    def example(self, i: int):
        return self.data.example(i)


# ---------------------------------------------------------------------------- real runs, 1 and 2 processes


@pytest.mark.distributed
def test_logged_eval_loss_is_the_same_on_one_and_two_processes(tmp_path_factory, sft):
    """Step 0 (the base model, before any update): 1 process with micro 8 and micro 2, 2 processes (ZeRO-3)
    with micro 2, and the hand value over all 5 validation examples agree within EVAL_ATOL. Step 1: the
    2-process run's eval equals the hand value of its exported model."""
    runs = {name: in_process_run(tmp_path_factory, name, micro) for name, micro in (("a", 8), ("b", 2))}
    runs["c"] = distributed_run(tmp_path_factory)
    step0 = {name: eval_records(run["run_dir"])[0] for name, run in runs.items()}
    for name, value in step0.items():
        assert value == pytest.approx(sft["hand"], abs=EVAL_ATOL), (name, step0, sft["hand"])
    final = AutoModelForCausalLM.from_pretrained(runs["c"]["run_dir"] / "final", dtype=torch.float32).eval()
    step1 = eval_records(runs["c"]["run_dir"])[1]
    assert step1 == pytest.approx(hand_eval_loss(final, sft["task"].val_data), abs=EVAL_ATOL)
    # Had rank 1's stand-in been counted, or its 2 examples dropped, step 0 would be off by far more:
    task = sft["task"]
    without_rank1 = hand_eval_loss(sft["model"], _Subset(task.val_data, 3))
    assert abs(without_rank1 - sft["hand"]) > 100 * EVAL_ATOL
    assert np.isfinite(step1)
