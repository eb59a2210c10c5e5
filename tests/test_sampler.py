"""The global-batch sampler: deterministic, disjoint per rank, O(1) jumps, epoch boundaries."""

import numpy as np
import pytest

from lmtrain.data.sampler import GlobalBatchSampler


def test_every_block_once_per_epoch():
    sampler = GlobalBatchSampler(num_blocks=40, global_batch_size=8, seed=0)
    first_epoch = np.concatenate([sampler.global_batch(step) for step in range(5)])
    assert sorted(first_epoch) == list(range(40))
    assert not np.array_equal(first_epoch, np.arange(40))  # shuffled


def test_global_batch_straddling_an_epoch_boundary():
    sampler = GlobalBatchSampler(num_blocks=10, global_batch_size=4, seed=3)
    stream = np.concatenate([sampler.global_batch(step) for step in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # each epoch has its own order


def test_ranks_take_disjoint_slices_that_cover_the_global_batch():
    sampler = GlobalBatchSampler(num_blocks=1000, global_batch_size=12, seed=1)
    for step in (0, 7, 123):
        slices = [sampler.rank_batch(step, rank, 4) for rank in range(4)]
        assert all(len(s) == 3 for s in slices)
        assert np.array_equal(np.concatenate(slices), sampler.global_batch(step))
        assert len(set(np.concatenate(slices))) == 12


@pytest.mark.parametrize("world", [1, 2, 3, 6])
def test_same_order_on_any_rank_count(world):
    reference = GlobalBatchSampler(500, 6, seed=42)
    sampler = GlobalBatchSampler(500, 6, seed=42)
    for step in range(0, 200, 17):
        joined = np.concatenate([sampler.rank_batch(step, r, world) for r in range(world)])
        assert np.array_equal(joined, reference.global_batch(step))


def test_jump_equals_replay():
    replayed = GlobalBatchSampler(97, 8, seed=5)
    for step in range(300):
        batch = replayed.global_batch(step)
    fresh = GlobalBatchSampler(97, 8, seed=5)
    assert np.array_equal(fresh.global_batch(299), batch)


def test_seed_changes_order_and_world_must_divide():
    a, b = GlobalBatchSampler(100, 10, seed=1), GlobalBatchSampler(100, 10, seed=2)
    assert not np.array_equal(a.global_batch(0), b.global_batch(0))
    with pytest.raises(ValueError, match="not divisible by 3"):
        a.rank_batch(0, 0, 3)
