"""The global-batch sampler: deterministic, disjoint per rank, O(1) jumps, epoch boundaries."""

import numpy as np
import pytest

from lmtrain.data.sampler import GlobalBatchSampler, MixtureSampler, window_quotas


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


def expected_stream(num_blocks: int, seed: int, epochs: int) -> np.ndarray:
    """The training stream as the module documents it, built here with numpy alone: epoch e is the permutation of
    numpy's generator seeded with [seed, e], and the epochs follow each other."""
    return np.concatenate([np.random.default_rng([seed, e]).permutation(num_blocks) for e in range(epochs)])


def test_global_batches_are_consecutive_slices_of_the_documented_stream():
    num_blocks, batch, seed = 10, 4, 3
    stream = expected_stream(num_blocks, seed, epochs=3)
    sampler = GlobalBatchSampler(num_blocks, batch, seed)
    for step in range(7):  # 28 positions: steps 2 and 4 straddle the epoch boundaries at 10 and 20
        assert sampler.global_batch(step).tolist() == stream[step * batch : (step + 1) * batch].tolist()
    assert sampler.global_batch(2).tolist() == [*stream[8:10], *stream[10:12]]


def test_a_batch_larger_than_the_data_spans_several_epochs():
    sampler = GlobalBatchSampler(num_blocks=3, global_batch_size=8, seed=9)
    stream = expected_stream(3, 9, epochs=6)
    assert sampler.global_batch(0).tolist() == stream[:8].tolist()
    assert sampler.global_batch(1).tolist() == stream[8:16].tolist()
    assert sampler.global_batch(0).dtype == np.int64


@pytest.mark.parametrize("world", [1, 2, 4])
def test_same_order_on_any_rank_count(world):
    """Rank r of `world` takes stream positions [s*G + r*G/world, s*G + (r+1)*G/world): the union over ranks is the
    global batch, whatever the rank count, and no position is given to two ranks."""
    num_blocks, batch, seed = 50, 8, 42
    stream = expected_stream(num_blocks, seed, epochs=5)
    sampler = GlobalBatchSampler(num_blocks, batch, seed)
    per_rank = batch // world
    for step in range(
        0, 30, 3
    ):  # 240 positions, epoch boundaries inside steps 6 and 18 (50 and 150 are not multiples of 8)
        base = step * batch
        slices = [sampler.rank_batch(step, rank, world) for rank in range(world)]
        for rank, piece in enumerate(slices):
            start = base + rank * per_rank
            assert piece.tolist() == stream[start : start + per_rank].tolist()
        assert np.concatenate(slices).tolist() == stream[base : base + batch].tolist()
        if base // num_blocks == (base + batch - 1) // num_blocks:  # inside one epoch: the blocks themselves differ
            assert len(set(np.concatenate(slices).tolist())) == batch


def test_epoch_at_counts_fractional_epochs():
    sampler = GlobalBatchSampler(num_blocks=40, global_batch_size=8, seed=0)
    assert [sampler.epoch_at(s) for s in (0, 1, 5, 7)] == [0.0, 0.2, 1.0, 1.4]


def test_the_epoch_cache_follows_the_epoch_asked_for():
    sampler = GlobalBatchSampler(num_blocks=6, global_batch_size=2, seed=11)
    later, first = sampler.epoch_order(1).tolist(), sampler.epoch_order(0).tolist()
    assert first == np.random.default_rng([11, 0]).permutation(6).tolist()
    assert later == np.random.default_rng([11, 1]).permutation(6).tolist()
    assert sampler.epoch_order(1).tolist() == later and first != later


def test_at_least_one_block():
    with pytest.raises(ValueError, match="^the sampler needs at least one block$"):
        GlobalBatchSampler(num_blocks=0, global_batch_size=4, seed=0)
    assert GlobalBatchSampler(num_blocks=1, global_batch_size=3, seed=0).global_batch(5).tolist() == [0, 0, 0]


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


def test_one_source_mixture_draws_what_the_plain_sampler_draws():
    plain, mixed = GlobalBatchSampler(37, 8, seed=4), MixtureSampler([37], [1.0], 8, seed=4, window=8)
    for step in (0, 3, 4, 5, 20):
        assert mixed.global_batch(step).tolist() == plain.global_batch(step).tolist()


def test_window_quotas_sum_to_the_window_and_follow_the_weights():
    assert window_quotas([0.55, 0.30, 0.15], 1000) == [550, 300, 150]
    assert window_quotas([0.55, 0.30, 0.15], 16) == [9, 5, 2]
    assert window_quotas([1, 0, 1], 5) == [3, 0, 2]  # ties to the first; weight 0 never drawn
    assert window_quotas([1000, 1], 10) == [9, 1]  # a positive weight gets a block


def test_mixture_batches_are_the_same_for_any_world_size_and_resume_by_arithmetic():
    sampler = MixtureSampler([50, 7, 300], [0.5, 0.2, 0.3], global_batch_size=12, seed=2, window=20)
    whole = sampler.global_batch(33)
    for world in (1, 2, 3, 4):
        parts = [sampler.rank_batch(33, rank, world) for rank in range(world)]
        assert np.concatenate(parts).tolist() == whole.tolist()
    fresh = MixtureSampler([50, 7, 300], [0.5, 0.2, 0.3], global_batch_size=12, seed=2, window=20)
    assert fresh.global_batch(33).tolist() == whole.tolist()  # no replay of steps 0..32
    assert sampler.shares() == [0.5, 0.2, 0.3]
    # the 7-block source is drawn 4 times per 20-block window: after 100 windows, ≈57 epochs of it
    assert abs(sampler.source_epochs(100 * 20 // 12)[1] - 400 / 7) < 1
