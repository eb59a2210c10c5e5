"""Sequence classification as a `Task`: a pretrained decoder or encoder with a new linear head.

transformers' LlamaForSequenceClassification reads the hidden state of each text's last token (the
last one that is not padding) through a new `score` layer, hidden → labels. The decoder's weights come
from the pretrained causal LM (its LM head is dropped). From an encoder export (train.py with objective.kind=mlm)
AutoModelForSequenceClassification builds BERT's classifier on the pooled [CLS] token or ModernBERT's on the mean of
the tokens (its MLM head is dropped); the encoder's tokenizer wraps each text in [CLS] ... [SEP]. The loss is cross-entropy, optionally weighted
per class. Evaluation gathers every process's predictions (the same examples on any number of
processes) and computes accuracy and macro-F1 with the metric modules shipped in lmtrain/finetune/metrics/, which
`evaluate.load` reads from the repository, so no Hub access is needed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification

from lmtrain.config.finetune import FinetuneRecipe
from lmtrain.corpus.records import Record, RecordProblems
from lmtrain.errors import UserError
from lmtrain.finetune.base import FinetuneTask, say
from lmtrain.finetune.metrics import load_metric
from lmtrain.training.evaluation import eval_shard
from lmtrain.training.task import to_device

POOLING = {
    "bert": "the [CLS] token (BERT's pooler, trained by NSP)",
    "modernbert": "the mean of the tokens (ModernBERT, classifier_pooling=mean)",
}
"""What an encoder's sequence-classification head reads; a decoder's reads the last token."""


def label_text(value) -> str | None:
    """Labels are compared as text: 1, "1" and 1.0 from a CSV or JSON are the same label "1"."""
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() if isinstance(value, (str, int, float)) else None


def read_examples(
    records: list[Record], text_column: str, label_column: str, problems: RecordProblems
) -> list[tuple[str, str, str]]:
    """(where, text, label) of each record; missing or empty fields are recorded as problems."""
    examples = []
    for record in records:
        text, label = record.row.get(text_column), label_text(record.row.get(label_column))
        if not isinstance(text, str) or not text.strip():
            present = ", ".join(map(repr, record.row)) or "none"
            problems.add(record.where, f"no text in column {text_column!r} (fields: {present}); set data.text_column")
        elif label is None or label == "":
            problems.add(
                record.where, f"no label in column {label_column!r}; set data.label_column or label the record"
            )
        else:
            examples.append((record.where, text, label))
    return examples


class ClassifyTask(FinetuneTask):
    def __init__(self, recipe: FinetuneRecipe):
        super().__init__(recipe)
        d, c = recipe.data, recipe.classify
        splits = self.read_splits()
        problems = RecordProblems("Fix or remove these records: each needs a text and a label.")
        train = read_examples(splits.train, d.text_column, d.label_column, problems)
        validation = read_examples(splits.validation, d.text_column, d.label_column, problems)
        problems.raise_if_any()

        counts = Counter(label for _, _, label in train)
        if len(counts) < 2:
            raise UserError(
                f"data: the training data has a single class ({', '.join(counts) or 'none'}) in column "
                f"{d.label_column!r}, so there is nothing to tell apart; classification needs examples of "
                "at least two labels (check data.label_column and the files)"
            )
        self.labels = list(c.labels) or sorted(counts)
        known = set(self.labels)
        bad = RecordProblems(
            f"Every label must be one of classify.labels ({', '.join(self.labels)}): fix the records, "
            "or add the label to classify.labels"
        )
        for where, _, label in train + validation:
            if label not in known:
                bad.add(where, f"label {label!r} is not in the label set")
        bad.raise_if_any()
        self.label_ids = {label: i for i, label in enumerate(self.labels)}
        self.names = list(c.label_names) or self.labels
        """What the exported model calls its outputs (config.id2label)."""
        self.train_counts = [counts.get(label, 0) for label in self.labels]

        self.train_ids, self.train_y, train_note = self._tokenize(train)
        self.val_ids, self.val_y, val_note = self._tokenize(validation)
        if not self.train_ids or not self.val_ids:
            raise UserError(
                f"data: no {'training' if not self.train_ids else 'validation'} example left "
                f"(longer than data.max_length={d.max_length} and too_long=skip); raise data.max_length"
            )
        self.report = f"train: {train_note} | validation: {val_note}"
        # Saved with the model: inference that truncates (truncation=True) cuts where training did.
        self.tokenizer.model_max_length = d.max_length
        if c.class_weights:
            weights = list(c.class_weights)
        elif c.balance_classes:
            n = sum(self.train_counts)
            weights = [n / (len(self.labels) * max(count, 1)) for count in self.train_counts]
        else:
            weights = None
        self.class_weights = torch.tensor(weights, dtype=torch.float32) if weights else None
        self.head_width = len(self.labels)
        self.train_size = len(self.train_ids)
        self.pad_id = self.tokenizer.pad_token_id
        self._metrics = None

    def _tokenize(self, examples: list[tuple[str, str, str]]) -> tuple[list[np.ndarray], np.ndarray, str]:
        d = self.recipe.data
        encoded = self.tokenizer([text for _, text, _ in examples], verbose=False)["input_ids"]  # too long: below
        ids, labels, truncated, skipped = [], [], 0, 0
        for (_, _, label), tokens in zip(examples, encoded):
            if len(tokens) > d.max_length:
                if d.too_long == "skip":
                    skipped += 1
                    continue
                truncated += 1
                tokens = tokens[: d.max_length]
            ids.append(np.asarray(tokens, dtype=np.int64))
            labels.append(self.label_ids[label])
        note = f"{len(ids):,} examples"
        if truncated:
            note += f", {truncated:,} truncated to {d.max_length} tokens"
        if skipped:
            note += f", {skipped:,} longer than {d.max_length} tokens skipped"
        return ids, np.asarray(labels, dtype=np.int64), note

    # -- model

    def load_pretrained(self, path: str, **kwargs) -> torch.nn.Module:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score.weight newly initialized" is the point; we say it ourselves
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=len(self.labels),
                id2label=dict(enumerate(self.names)),
                label2id={name: i for i, name in enumerate(self.names)},
                pad_token_id=self.pad_id,
                **kwargs,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        say(
            f"classification head: new linear layer {model.config.hidden_size} → {len(self.labels)} labels "
            f"({', '.join(self.names)}) on {POOLING.get(model.config.model_type, 'the last token')}; "
            f"weights from {self.recipe.base_model}"
        )
        return model

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.score if hasattr(model, "score") else model.classifier  # decoders: score; encoders: classifier

    # -- batches and loss

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return self._batch(self.train_ids, self.train_y, indices)

    def _batch(self, ids: list[np.ndarray], y: np.ndarray, indices: np.ndarray) -> dict[str, torch.Tensor]:
        rows = [ids[i] for i in indices.tolist()]
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = row
            attention[r, : len(row)] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(y[indices]),
        }

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=weight)

    def loss_targets(self, batch: dict[str, torch.Tensor]) -> float:
        """Cross-entropy with class weights is a weighted mean: its terms weigh the weights of their labels."""
        if self.class_weights is None:
            return batch["labels"].numel()
        return float(self.class_weights[batch["labels"].cpu()].sum())

    # -- evaluation and export

    @torch.no_grad()
    def evaluate(self, model, accelerator: Accelerator, step: int = 0) -> dict[str, float]:
        """Loss (as trained: class-weighted if so), accuracy and macro-F1 over the validation examples; every
        process computes the same numbers from the gathered predictions."""
        t = self.recipe.train
        chunks = eval_shard(len(self.val_ids), accelerator, t.micro_batch_size, t.eval_batches)
        logits, labels, counted = [], [], []
        was_training = model.training
        model.eval()
        for chunk in chunks:
            batch = to_device(self._batch(self.val_ids, self.val_y, chunk.indices), accelerator.device)
            logits.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float())
            labels.append(batch["labels"])
            counted.append(torch.full_like(batch["labels"], chunk.counted, dtype=torch.bool))
        model.train(was_training)

        # Processes may hold different numbers of examples: pad to one length before gathering, then drop the
        # stand-ins, so that every example counts once (what gather_for_metrics does for a dataloader).
        def gathered(rows: list[torch.Tensor]) -> torch.Tensor:
            return accelerator.gather(accelerator.pad_across_processes(torch.cat(rows))).cpu()

        keep = gathered(counted)  # padding is False: dropped too
        logits, labels = gathered(logits)[keep], gathered(labels)[keep]
        weight = self.class_weights
        loss = torch.nn.functional.cross_entropy(logits, labels, weight=weight).item()
        predictions = logits.argmax(-1).numpy()
        metrics = self.metrics()
        references = labels.numpy()
        return {
            "eval_loss": loss,
            "accuracy": metrics["accuracy"].compute(predictions=predictions, references=references)["accuracy"],
            "macro_f1": metrics["macro_f1"].compute(
                predictions=predictions, references=references, num_labels=len(self.labels)
            )["macro_f1"],
        }

    def metrics(self) -> dict:
        if self._metrics is None:
            self._metrics = {name: load_metric(name) for name in ("accuracy", "macro_f1")}
        return self._metrics

    def export_extras(self) -> dict:
        return {"labels": self.names}

    def hash_data(self, digest) -> None:
        for ids, y in ((self.train_ids, self.train_y), (self.val_ids, self.val_y)):
            for row in ids:
                digest.update(row.tobytes())
                digest.update(b"|")
            digest.update(y.tobytes())
        digest.update("\n".join(self.labels).encode())

    def majority_baseline(self) -> tuple[str, float]:
        """The accuracy on validation of always answering the most frequent training label."""
        majority = self.labels[int(np.argmax(self.train_counts))]
        return majority, float(np.mean(self.val_y == self.label_ids[majority]))

    def describe(self) -> str:
        majority, baseline = self.majority_baseline()
        train = ", ".join(f"{label} {count:,}" for label, count in zip(self.labels, self.train_counts))
        weights = (
            " | class weights " + ", ".join(f"{w:.2f}" for w in self.class_weights.tolist())
            if self.class_weights is not None
            else ""
        )
        return (
            f"classification: {self.data_description} | {self.report} | training labels: {train}{weights} | "
            f"majority-class baseline on validation: {baseline:.3f} (always {majority!r})"
        )
