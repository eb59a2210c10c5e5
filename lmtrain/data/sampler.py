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
