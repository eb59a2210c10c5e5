"""What `fit` trains: the `Task` interface that pretraining, SFT and classification implement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from lmtrain.data.packing import IGNORE_INDEX
from lmtrain.data.sampler import GlobalBatchSampler


class Task:
    """What `fit` trains. Subclasses set `seq_len` (tokens per sequence) and `train_size` (examples)."""

    seq_len: int
    train_size: int
    head_width: int | None = None
    """The output layer's width for MFU, when it is not the vocabulary (a classification head's labels)."""

    def build_model(self) -> torch.nn.Module:
        """The model, built after the Accelerator (so that ZeRO-3 partitions it while it is built)."""
        raise NotImplementedError

    def start_step(self, step: int) -> None:
        """Called before the batches of optimizer step `step` (1-based) are made: a task whose batches depend on
        the step (dynamic MLM masking) keeps it; resuming at a step gives the same batches."""

    def train_metrics(self, accelerator: Accelerator) -> dict[str, float]:
        """Training metrics beyond the loss since the last log record (summed over processes; every process
        calls it at each log record), e.g. MLM accuracy; none by default."""
        return {}

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs (with labels) for these training examples, on the CPU."""
        raise NotImplementedError

    def sampler(self, global_batch_size: int, seed: int) -> GlobalBatchSampler:
        """The order training examples are drawn in (pretraining mixes its sources here)."""
        return GlobalBatchSampler(self.train_size, global_batch_size, seed)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss over the batch's loss targets (`loss_targets`)."""
        return model(**batch).loss

    def loss_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """How many terms `loss` averages over: labelled next tokens (labels are shifted by one inside the
        model; -100 is ignored). The loop weighs each micro-batch's mean by this count, so that an optimizer
        step averages over every target of the step, on every rank, whatever the micro-batch size."""
        return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())

    def evaluate(self, model, accelerator: Accelerator, step: int = 0) -> dict[str, float]:
        """Validation metrics, `eval_loss` among them, after `step` optimizer steps; every process calls it."""
        raise NotImplementedError

    def export(self, accelerator: Accelerator, model, out_dir: Path) -> None:
        """Write the trained model as a plain Hugging Face directory; every process calls it."""
        raise NotImplementedError

    def fingerprints(self) -> dict[str, str]:
        """Content hashes of the inputs (tokenizer, data) that a resumed run must share."""
        return {}

    def card_facts(self) -> dict:
        """What the model card says that only the task knows, as lmtrain.publish.card.CardFacts fields: `kind`
        (pretrain, sft, classify) and its data, languages and base model."""
        raise NotImplementedError

    def describe(self) -> str:
        """A banner line about the data."""
        return ""

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the model learns from in `batch` (padding excluded)."""
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors moved to `device`; flags such as use_cache pass through."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
