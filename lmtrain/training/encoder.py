"""Encoder pretraining as a `Task`: masked-language modelling (MLM), and BERT's next-sentence prediction (NSP).

It reads what data_prep/ wrote with the decoder's readers (`PretrainTask`): packed blocks for MLM, or, with
objective.nsp, the pairs `lmtrain.data.pairs` built. A packed block becomes `[CLS]` + the block without its last
token, each document's eos turned into `[SEP]`, so the model sees what `tokenizer(text)` gives at inference
(`[CLS] text [SEP]`); the last token of each block is never trained on (1/seq_len of the tokens). The masks are
drawn for each block at each step (lmtrain/data/masking.py); validation blocks keep one set of masks.

Loss: the MLM cross-entropy over the chosen tokens (the model's own loss), plus, with NSP, the pair's
cross-entropy (BertForPreTraining adds the two, as BERT did). The loop weighs a micro-batch by its chosen tokens.
Logged apart, on training and validation: mlm_loss, mlm_accuracy (on the chosen tokens), nsp_loss, nsp_accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from lmtrain.config.recipe import Recipe
from lmtrain.data.masking import EVAL_STEP, DynamicMasker, masked_accuracy
from lmtrain.data.packing import IGNORE_INDEX
from lmtrain.data.pairs import read_pairs
from lmtrain.data.sampler import MixtureSampler
from lmtrain.errors import UserError
from lmtrain.model.encoder import build_encoder, model_config
from lmtrain.model.export import export_model
from lmtrain.tokenizer.bpe import load_tokenizer
from lmtrain.training.evaluation import eval_shard, eval_sums
from lmtrain.training.pretrain import BlockRows, PretrainTask

SUMS = ("mlm_nll", "chosen", "mlm_correct", "nsp_nll", "pairs", "nsp_correct")
"""What evaluation and the training log add up, in this order."""


def check_encoder_tokenizer(tokenizer, where: str) -> None:
    """An encoder needs the mask, separator and classification tokens; a decoder's tokenizer has none."""
    if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserError(
            f"{where}: the tokenizer has no [MASK]/[CLS]/[SEP] tokens (it was trained for a decoder); train one "
            "with this recipe (python tokenizer/train_tokenizer.py RECIPE, to its own tokenizer.dir), then rerun "
            "data_prep/prepare.py"
        )


class EncoderPretrainTask(PretrainTask):
    def __init__(self, recipe: Recipe):
        check_encoder_tokenizer(load_tokenizer(recipe.tokenizer.dir), recipe.tokenizer.dir)
        super().__init__(recipe)
        tok = self.tokenizer
        self.nsp = recipe.objective.nsp
        if self.nsp:  # the pairs data prep built, in place of the packed blocks
            if "pairs" not in self.manifest:
                raise UserError(
                    f"{recipe.data.dir}: holds no next-sentence pairs (prepared without objective.nsp); rerun "
                    "data_prep/prepare.py with this recipe"
                )
            self.train_blocks, self.val_blocks = (
                read_pairs(recipe.data.dir, "train"),
                read_pairs(recipe.data.dir, "validation"),
            )
            self.train_rows, self.val_rows = BlockRows(self.train_blocks), BlockRows(self.val_blocks)
            self.train_size = len(self.train_blocks)
        self.masker = DynamicMasker(tok, recipe.objective, recipe.train.seed)
        self.step = 0
        self._train_sums = torch.zeros(len(SUMS), dtype=torch.float64)

    def build_model(self) -> torch.nn.Module:
        t = self.tokenizer
        ids = {"pad": t.pad_token_id, "cls": t.cls_token_id, "sep": t.sep_token_id, "mask": t.mask_token_id}
        return build_encoder(self.recipe, model_config(self.recipe, ids))

    def sampler(self, global_batch_size: int, seed: int) -> MixtureSampler:
        """Packed blocks as the decoder samples them; pairs with the same weights, over each source's pairs."""
        if not self.nsp:
            return super().sampler(global_batch_size, seed)
        pairs = [c["pairs"] for c in self.manifest["pairs"]["train"]]
        weights = [s.weight for s in self.recipe.data.sources]
        return MixtureSampler(
            pairs, weights, global_batch_size, seed, self.recipe.data.mixture_window or global_batch_size
        )

    def start_step(self, step: int) -> None:
        self.step = step

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return self._encoder_batch(self.train_rows, indices, self.step)

    def _encoder_batch(self, rows: BlockRows, indices: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        """Model inputs with masked tokens and their labels (and for pairs, token types and the pair label)."""
        data = rows[indices]
        input_ids = torch.from_numpy(np.asarray(data["input_ids"], dtype=np.int64))
        batch = {}
        if self.nsp:
            batch["token_type_ids"] = torch.from_numpy(np.asarray(data["token_type_ids"], dtype=np.int64))
            batch["attention_mask"] = (input_ids != self.tokenizer.pad_token_id).long()
            batch["next_sentence_label"] = torch.from_numpy(np.asarray(data["next_sentence_label"], dtype=np.int64))
            batch["next_sentence_label"] = batch["next_sentence_label"].reshape(-1)
        else:
            input_ids = self.with_cls_and_sep(input_ids)
        batch["input_ids"], batch["labels"] = self.masker(input_ids, indices, step)
        return batch

    def with_cls_and_sep(self, blocks: torch.Tensor) -> torch.Tensor:
        """`[CLS]` + each block but its last token, every eos (a document's end) turned into `[SEP]`."""
        t = self.tokenizer
        ids = torch.where(blocks == t.eos_token_id, t.sep_token_id, blocks)
        return torch.cat([torch.full_like(ids[:, :1], t.cls_token_id), ids[:, :-1]], dim=1)

    def loss_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Chosen (masked) tokens: labels are not shifted in a masked language model."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = model(**batch)
        with torch.no_grad():
            self._train_sums += self._sums(outputs, batch).cpu()
        return outputs.loss

    def train_metrics(self, accelerator: Accelerator) -> dict[str, float]:
        sums = accelerator.reduce(self._train_sums.to(accelerator.device), reduction="sum").cpu()
        self._train_sums.zero_()
        return self._metrics(sums, prefix="")

    def evaluate(self, model, accelerator: Accelerator, step: int = 0) -> dict[str, float]:
        t = self.recipe.train
        chunks = eval_shard(len(self.val_blocks), accelerator, t.micro_batch_size, t.eval_batches)
        batch_fn = lambda idx: self._encoder_batch(self.val_rows, idx, EVAL_STEP)  # noqa: E731
        sums = eval_sums(model, accelerator, chunks, batch_fn, lambda b: self._sums(model(**b), b), len(SUMS))
        metrics = self._metrics(sums, prefix="eval_")
        metrics["eval_loss"] = metrics["eval_mlm_loss"] + metrics.get("eval_nsp_loss", 0.0)
        return metrics

    def _sums(self, outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[MLM nll, chosen tokens, correct ones, NSP nll, pairs, correct ones] of a batch (float64)."""
        logits = outputs.prediction_logits if self.nsp else outputs.logits
        labels = batch["labels"]
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        correct, chosen = masked_accuracy(logits, labels)
        sums = [nll, chosen, correct]
        if self.nsp:
            pair_logits, pair_labels = outputs.seq_relationship_logits.float(), batch["next_sentence_label"]
            sums += [F.cross_entropy(pair_logits, pair_labels, reduction="sum"), torch.tensor(len(pair_labels)),
                     (pair_logits.argmax(-1) == pair_labels).sum()]  # fmt: skip
        else:
            sums += [torch.zeros(())] * 3
        return torch.stack([s.detach().double().to(nll.device) for s in sums])

    def _metrics(self, sums: torch.Tensor, prefix: str) -> dict[str, float]:
        values = dict(zip(SUMS, sums.tolist()))
        metrics = {}
        if values["chosen"]:
            metrics[f"{prefix}mlm_loss"] = values["mlm_nll"] / values["chosen"]
            metrics[f"{prefix}mlm_accuracy"] = values["mlm_correct"] / values["chosen"]
        if self.nsp and values["pairs"]:
            metrics[f"{prefix}nsp_loss"] = values["nsp_nll"] / values["pairs"]
            metrics[f"{prefix}nsp_accuracy"] = values["nsp_correct"] / values["pairs"]
        return metrics

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else batch["input_ids"].numel()

    def export(self, accelerator: Accelerator, model, out_dir: Path) -> None:
        export_model(accelerator, model, self.tokenizer, self.recipe, out_dir)

    def card_facts(self) -> dict:
        return super().card_facts() | {"kind": "pretrain_encoder"}

    def describe(self) -> str:
        o = self.recipe.objective
        what = "sentence pairs" if self.nsp else "blocks"
        words = f", whole words ({o.chinese_words} for Chinese)" if o.whole_word_mask else ""
        return (
            f"{len(self.val_blocks):,} validation {what} of {self.seq_len} tokens | MLM {o.mask_rate:.0%} of tokens"
            f"{words} ({o.mask_replace_prob:.0%} mask, {o.random_replace_prob:.0%} random)"
            + (" + NSP" if self.nsp else "")
        )
