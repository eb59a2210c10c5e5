"""A deterministic, resumable order over packed blocks.

The training stream is the concatenation of epochs, each a seeded permutation of all
blocks. Optimizer step `s` consumes stream positions [s*G, (s+1)*G) for a global batch of
G blocks, so the content of every global batch depends only on the seed and the step, never
on the number of processes; each process takes a contiguous, disjoint slice of it. Jumping
to any step is arithmetic (no replay), and a global batch may straddle an epoch boundary.
"""

from __future__ import annotations

import numpy as np


class GlobalBatchSampler:
    def __init__(self, num_blocks: int, global_batch_size: int, seed: int):
        if num_blocks < 1:
            raise ValueError("the sampler needs at least one block")
        self.num_blocks = num_blocks
        self.global_batch_size = global_batch_size
        self.seed = seed
        self._cached_epoch = -1
        self._cached_order = np.empty(0, dtype=np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of block indices for one epoch (cached: consecutive steps share it)."""
        if epoch != self._cached_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cached_order = rng.permutation(self.num_blocks)
            self._cached_epoch = epoch
        return self._cached_order

    def global_batch(self, step: int) -> np.ndarray:
        """Block indices of the global batch for optimizer step `step` (0-based)."""
        start = step * self.global_batch_size
        positions = np.arange(start, start + self.global_batch_size)
        epochs, offsets = np.divmod(positions, self.num_blocks)
        out = np.empty(self.global_batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self.epoch_order(int(epoch))[offsets[mask]]
        return out

    def rank_batch(self, step: int, rank: int, world_size: int) -> np.ndarray:
        """This process's contiguous, disjoint slice of the global batch for `step`."""
        if self.global_batch_size % world_size:
            raise ValueError(f"global batch {self.global_batch_size} is not divisible by {world_size} processes")
        per_rank = self.global_batch_size // world_size
        return self.global_batch(step)[rank * per_rank : (rank + 1) * per_rank]

    def epoch_at(self, step: int) -> float:
        """Epochs completed (fractional) after `step` optimizer steps."""
        return step * self.global_batch_size / self.num_blocks


def window_quotas(weights: list[float], window: int) -> list[int]:
    """Blocks per window for each source: the weights' shares of `window`, rounded by largest remainder (ties to
    the first source), so that they sum to `window` exactly; a positive weight gets at least one block."""
    total = sum(weights)
    exact = [window * w / total for w in weights]
    quotas = [int(e) for e in exact]
    quotas = [max(q, 1) if w > 0 else 0 for q, w in zip(quotas, weights)]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in order[: max(window - sum(quotas), 0)]:
        quotas[i] += 1
    return quotas


class MixtureSampler(GlobalBatchSampler):
    """Several sources' blocks mixed at sampling time, with exact shares over every window of `window` blocks.

    Blocks are numbered source after source (lmtrain/data/shards.py PackedRows). Each window of the training
    stream holds exactly `quotas[s]` blocks of source s (window_quotas), interleaved evenly inside the window
    (position k goes to the source furthest below its quota at k, so shares hold closely within a window too).
    The n-th block drawn from source s is element n mod N_s of a seeded permutation of its N_s blocks for that
    source's epoch n // N_s: a small source repeats (epochs), a large one is read part-way. Every stream position
    maps to its block by arithmetic, so global batches, O(1) resume and the independence from the number of
    processes are GlobalBatchSampler's. All blocks have seq_len tokens, so block shares are token shares."""

    def __init__(
        self, blocks_per_source: list[int], weights: list[float], global_batch_size: int, seed: int, window: int
    ):
        if any(n < 1 for n, w in zip(blocks_per_source, weights) if w > 0):
            raise ValueError("every source with a positive weight needs at least one block")
        self.blocks_per_source = list(blocks_per_source)
        self.offsets = np.cumsum([0, *blocks_per_source])
        self.quotas = window_quotas(weights, window)
        self.window = sum(self.quotas)
        self.pattern, self.rank_in_window = self._interleave(self.quotas)
        super().__init__(int(self.offsets[-1]), global_batch_size, seed)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    @staticmethod
    def _interleave(quotas: list[int]) -> tuple[np.ndarray, np.ndarray]:
        taken = [0] * len(quotas)
        pattern, rank = [], []
        active = [s for s, q in enumerate(quotas) if q]
        for _ in range(sum(quotas)):
            s = min(active, key=lambda j: ((taken[j] + 0.5) / quotas[j], j))
            pattern.append(s)
            rank.append(taken[s])
            taken[s] += 1
            if taken[s] == quotas[s]:
                active.remove(s)
        return np.array(pattern, dtype=np.int64), np.array(rank, dtype=np.int64)

    def shares(self) -> list[float]:
        """Token share of every source in every window (and so in the whole run, up to the last partial window)."""
        return [q / self.window for q in self.quotas]

    def source_order(self, source: int, epoch: int) -> np.ndarray:
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            # source 0 is seeded as GlobalBatchSampler is: a one-source run draws the batches it always drew
            rng = np.random.default_rng([self.seed, epoch] + ([source] if source else []))
            cached = (epoch, rng.permutation(self.blocks_per_source[source]))
            self._orders[source] = cached
        return cached[1]

    def global_batch(self, step: int) -> np.ndarray:
        start = step * self.global_batch_size
        windows, k = np.divmod(np.arange(start, start + self.global_batch_size), self.window)
        sources = self.pattern[k]
        drawn = windows * np.asarray(self.quotas)[sources] + self.rank_in_window[k]
        out = np.empty(self.global_batch_size, dtype=np.int64)
        for i, (s, n) in enumerate(zip(sources.tolist(), drawn.tolist())):
            epoch, offset = divmod(n, self.blocks_per_source[s])
            out[i] = self.offsets[s] + self.source_order(s, epoch)[offset]
        return out

    def source_epochs(self, step: int) -> list[float]:
        """Epochs of every source consumed after `step` optimizer steps."""
        blocks = step * self.global_batch_size
        return [blocks * q / self.window / n if n else 0.0 for q, n in zip(self.quotas, self.blocks_per_source)]
