"""Dynamic masking for masked-language-model pretraining, through transformers' DataCollatorForLanguageModeling.

The collator chooses the tokens (objective.mask_rate of the non-special ones), replaces them 80/10/10 (mask token,
random token, unchanged: objective.mask_replace_prob / random_replace_prob) and sets the labels to -100 everywhere
else. Two things it cannot do are written here:

- Determinism per example. The collator draws from one generator that advances with every batch, so the masks of
  a block would depend on which blocks shared its micro-batch: a resumed run, or one split over 2 processes,
  would mask differently. `DynamicMasker` seeds the collator's generator for each block from (seed, step, block
  index) and masks one block at a time: the same block at the same step gets the same masks on any launch, and a
  block seen again at a later step (the next epoch) gets new ones (RoBERTa's dynamic masking).
- Word boundaries for whole-word masking. The collator finds words from a fast tokenizer's character offsets (a
  token starts a word where there is a gap before it); in this byte-level BPE a word carries its leading space,
  so offsets never leave a gap and every block would be one word. `word_edges` marks them from the tokens' own
  text instead (a leading space or symbol, a symbol before, or a CJK character: one word each), and the masker
  hands the collator offsets with a gap before every word start, so its own whole-word code does the choosing.
  Chinese words of several characters (a segmenter such as jieba) are not offered: each character is a word.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from lmtrain.config.recipe import ObjectiveConfig
from lmtrain.data.packing import IGNORE_INDEX

EVAL_STEP = -1
"""The step validation blocks are masked at: the same masks at every evaluation, so the losses compare."""


class DynamicMasker:
    """`masker(input_ids, block_indices, step)` → (masked input_ids, labels), deterministic per block and step."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, objective: ObjectiveConfig, seed: int):
        self.seed = seed
        self.collator = DataCollatorForLanguageModeling(
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
        self.word_edges = torch.from_numpy(word_edges(tokenizer)) if objective.whole_word_mask else None

    def __call__(
        self, input_ids: torch.Tensor, block_indices: np.ndarray, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = [], []
        for ids, index in zip(input_ids, block_indices):
            example = {"input_ids": ids.clone(), "special_tokens_mask": self.special[ids].long()}
            if self.word_edges is not None:
                example["offset_mapping"] = word_offsets(ids, self.word_edges)
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


def word_edges(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """Per token id, (its text starts with a word character, its text ends with one or is a single space): a word
    character is a letter, digit or `_` that is not CJK (each CJK character is a word of its own). Special tokens
    have neither."""
    special = set(tokenizer.all_special_ids)
    edges = np.zeros((len(tokenizer), 2), dtype=bool)
    for token_id in range(len(tokenizer)):
        text = "" if token_id in special else tokenizer.decode([token_id])
        if text:
            # a lone space (where BPE learned no merge of it with the word) opens the word that follows it
            edges[token_id] = _continues_word(text[0]), _continues_word(text[-1]) or text == " "
    return edges


def word_offsets(ids: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Character offsets (seq, 2) with a gap of one before every word start and none inside a word, which is how
    DataCollatorForLanguageModeling tells words apart. A token starts a word unless it starts with a word
    character and the token before it ends with one."""
    starts_in_word, ends_in_word = edges[ids].unbind(-1)
    new_word = ~starts_in_word
    new_word[0] = True
    new_word[1:] |= ~ends_in_word[:-1]
    end = torch.cumsum(new_word.long() + 1, 0)  # each token one character long, plus one at a gap
    return torch.stack([end - 1, end], dim=1)


def _continues_word(char: str) -> bool:
    """Letters and digits continue a word, except CJK characters, each a word of its own."""
    if not (char.isalnum() or char == "_"):
        return False
    return not unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct predictions, chosen positions) over the positions whose label is not -100."""
    chosen = labels != IGNORE_INDEX
    correct = (logits.argmax(-1) == labels) & chosen
    return correct.sum(), chosen.sum()
