"""Dynamic masking for masked-language-model pretraining, through transformers' DataCollatorForLanguageModeling.

The collator chooses the tokens (objective.mask_rate of the non-special ones), replaces them 80/10/10 (mask token,
random token, unchanged: objective.mask_replace_prob / random_replace_prob) and sets the labels to -100 everywhere
else. Two things it cannot do are written here:

- Determinism per example. The collator draws from one generator that advances with every batch, so the masks of
  a block would depend on which blocks shared its micro-batch: a resumed run, or one split over 2 processes,
  would mask differently. `DynamicMasker` seeds the collator's generator for each block from (seed, step, block
  index) and masks one block at a time: the same block at the same step gets the same masks on any launch, and a
  block seen again at a later step (the next epoch) gets new ones (RoBERTa's dynamic masking).
- Word boundaries for whole-word masking. The collator finds words from a fast tokenizer's character offsets,
  which in this byte-level BPE never leave a gap between words; lmtrain/data/words.py reads the words from the
  tokens' bytes instead (English and code words, a byte-split character's tokens together, and Chinese words as
  single characters or, with objective.chinese_words=jieba, as jieba segments them) and hands the collator offsets
  with a gap before every word start, so its own whole-word code does the choosing.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from lmtrain.config.recipe import ObjectiveConfig
from lmtrain.data.packing import IGNORE_INDEX
from lmtrain.data.words import WordBoundaries

EVAL_STEP = -1
"""The step validation blocks are masked at: the same masks at every evaluation, so the losses compare."""


class LinearWholeWordCollator(DataCollatorForLanguageModeling):
    """transformers' collator with its whole-word expansion (every token of a word that has a chosen token is
    chosen) done through a per-word table, O(tokens), where the library compares every token with every other,
    a (tokens × tokens) matrix per block: at seq_len 1,024 that was 1.0 of the 1.5 ms whole-word masking took per
    block on one core (benchmarks/chinese_wwm.py). Same result (tests/test_chinese_whole_words.py checks it against
    the library's own)."""

    @staticmethod
    def _whole_word_mask(word_ids: np.ndarray, mask) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        valid = word_ids != -1  # special tokens are no word
        rows, cols = np.nonzero(mask & valid)
        chosen_words = np.zeros((word_ids.shape[0], max(word_ids.max() + 1, 1)), dtype=bool)
        chosen_words[rows, word_ids[rows, cols]] = True
        return chosen_words[np.arange(word_ids.shape[0])[:, None], np.maximum(word_ids, 0)] & valid


class DynamicMasker:
    """`masker(input_ids, block_indices, step)` → (masked input_ids, labels), deterministic per block and step."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, objective: ObjectiveConfig, seed: int):
        self.seed = seed
        self.collator = LinearWholeWordCollator(
            tokenizer,
            mlm=True,
            mlm_probability=objective.mask_rate,
            mask_replace_prob=objective.mask_replace_prob,
            random_replace_prob=objective.random_replace_prob,
            whole_word_mask=objective.whole_word_mask,
            return_tensors="pt",
        )
        self.special = torch.zeros(len(tokenizer), dtype=torch.bool)
        self.special[torch.tensor(sorted(set(tokenizer.all_special_ids)))] = True
        self.words = WordBoundaries(tokenizer, objective.chinese_words) if objective.whole_word_mask else None

    def __call__(
        self, input_ids: torch.Tensor, block_indices: np.ndarray, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = [], []
        for ids, index in zip(input_ids, block_indices):
            example = {"input_ids": ids.clone(), "special_tokens_mask": self.special[ids].long()}
            if self.words is not None:
                example["offset_mapping"] = self.words.offsets(ids)
            self.collator.generator = torch.Generator().manual_seed(self.example_seed(step, int(index)))
            self.collator._generator_pid = None  # ours, not one the collator made for a process
            masked_ids, example_labels = self.collator.torch_mask_tokens(
                example["input_ids"][None],
                special_tokens_mask=example["special_tokens_mask"][None],
                offset_mapping=example["offset_mapping"][None] if "offset_mapping" in example else None,
            )
            inputs.append(masked_ids[0])
            labels.append(example_labels[0])
        return torch.stack(inputs), torch.stack(labels)

    def example_seed(self, step: int, index: int) -> int:
        """A 63-bit seed from (seed, step, block index): numpy's SeedSequence mixes the three."""
        entropy = [self.seed, step + 1, index]  # EVAL_STEP + 1 = 0: SeedSequence takes no negative numbers
        return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct predictions, chosen positions) over the positions whose label is not -100."""
    chosen = labels != IGNORE_INDEX
    correct = (logits.argmax(-1) == labels) & chosen
    return correct.sum(), chosen.sum()
