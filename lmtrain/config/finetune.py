"""The fine-tuning recipe schema (finetune.py): one typed tree, loaded as strictly as the pretraining one.

    python finetune.py recipes/smoke/sft.yaml train.lr=1e-4 lora.enabled=true

`lmtrain.config.recipe.load_recipe(path, overrides, schema=FinetuneRecipe)` rejects unknown keys (with a
did-you-mean), wrong types and invalid values, all together, before any work starts. As in recipe.py, a
section checks itself in `problems(where)`; `FinetuneRecipe.problems` holds the checks that depend on the
task or span sections. The `train` section is pretraining's TrainConfig, run by the same
`fit` (lmtrain/training/loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmtrain.config.recipe import HubConfig, Problems, SpeedSwitches, TrainConfig

LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Every linear layer of a Llama block: LoRA on all of them works better than on attention alone (QLoRA paper)."""

STDLIB_PACKAGES = ["asyncio", "email", "logging", "unittest", "xml"]
"""Packages of the smoke classification task (data.source: python_stdlib): which one a function comes from."""

TASK_METRICS = {
    "sft": ("eval_loss", "eval_ppl", "exact_match", "chrf"),
    "classify": ("eval_loss", "accuracy", "macro_f1"),
}
"""Evaluation metrics each task reports; train.best_metric must be one of them."""


@dataclass
class FinetuneDataConfig:
    """Labelled examples: where they come from, which columns hold what, and how long they may be."""

    source: str = "files"
    """A source kind, the same registry as pretraining's data.sources.N.kind (lmtrain/corpus/sources.py; a
    new one is one function there). files: local .jsonl / .jsonl.gz / .json / .csv / .parquet files
    (train_files, validation_files); hub: a Hugging Face Hub dataset (dataset, dataset_config, train_split,
    validation_split); python_stdlib: examples made from the running interpreter's standard library, offline
    on any machine (sft: a function's code → its docstring; classify: a function's code → the package it
    comes from, one of data.stdlib_packages). Another kind reads train_files as `paths`, train_split and
    validation_split as `split`, dataset and dataset_config."""
    train_files: list[str] = field(default_factory=list)
    """For source=files: glob patterns of the training files."""
    validation_files: list[str] = field(default_factory=list)
    """For source=files: glob patterns of the validation files (empty = hold out validation_fraction of train)."""
    dataset: str = ""
    """For source=hub: the dataset name, e.g. HuggingFaceH4/ultrachat_200k."""
    dataset_config: str = ""
    """For source=hub: the configuration name, if the dataset has several."""
    train_split: str = "train"
    """For source=hub: the training split."""
    validation_split: str = ""
    """For source=hub: the validation split (empty = hold out validation_fraction of the training split)."""
    validation_fraction: float = 0.1
    """Share of the training records held out for validation (chosen by a hash of each record, so the split
    is stable) when no validation files or split are given. If the hash holds out none (few records), the
    round(validation_fraction × records) records, at least one, nearest to being held out are."""
    max_train_examples: int = 0
    """Use at most this many training records, the first ones (0 = all)."""
    max_validation_examples: int = 0
    """Use at most this many validation records, the first ones (0 = all)."""
    messages_column: str = "messages"
    """sft: the column holding a conversation, a list of {role: system|user|assistant, content} messages.
    Records without it must have prompt_column and completion_column instead."""
    prompt_column: str = "prompt"
    """sft: the user turn of a prompt/completion record."""
    completion_column: str = "completion"
    """sft: the assistant turn of a prompt/completion record."""
    system_prompt: str = ""
    """sft: a system message put before every prompt/completion record (empty = none)."""
    text_column: str = "text"
    """classify: the column holding the text to classify."""
    label_column: str = "label"
    """classify: the column holding the label (strings or integers; compared as text)."""
    max_length: int = 512
    """Tokens per example, prompt and answer together; the model's context for fine-tuning."""
    too_long: Literal["truncate", "skip"] = "truncate"
    """An example longer than max_length is cut to max_length tokens (truncate) or left out (skip); both are
    counted in the log. An SFT example whose answer is cut away entirely is left out and counted."""
    packing: bool = False
    """sft: pack several short examples into each max_length sequence, each example attending only to itself
    (per-example position_ids, as pretraining's document masking): fewer padding tokens, same loss."""
    stdlib_packages: list[str] = field(default_factory=lambda: list(STDLIB_PACKAGES))
    """For source=python_stdlib and task=classify: the labels, standard-library packages."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(bool(self.source), f"{where}.source: name the source kind, e.g. files, hub or python_stdlib")
        if self.source == "files":
            p.need(bool(self.train_files), f"{where}.train_files: source 'files' needs at least one glob pattern")
            p.need(
                not self.validation_split,
                f"{where}.validation_split: files have no splits; give {where}.validation_files (or neither, to "
                f"hold out {where}.validation_fraction)",
            )
        elif self.source in ("hub", "python_stdlib"):
            p.need(
                not self.train_files and not self.validation_files,
                f"{where}.train_files/validation_files: not read with {where}.source={self.source} (files reads them)",
            )
        if self.source == "hub":
            p.need(bool(self.dataset), f"{where}.dataset: source 'hub' needs a dataset name")
        p.need(
            0.0 < self.validation_fraction < 1.0, f"{where}.validation_fraction: must be between 0 and 1 (exclusive)"
        )
        p.need(self.max_train_examples >= 0, f"{where}.max_train_examples: must be >= 0 (0 = all)")
        p.need(self.max_validation_examples >= 0, f"{where}.max_validation_examples: must be >= 0 (0 = all)")
        p.need(self.max_length >= 8, f"{where}.max_length: must be at least 8 tokens")
        return p


@dataclass
class FreezeConfig:
    """Parameters that keep their pretrained values: not trained, not given to the optimizer."""

    embeddings: bool = False
    """Freeze the input token embeddings (and so a tied output layer)."""
    first_n_layers: int = 0
    """Freeze the first N transformer blocks (the ones nearest the input)."""
    all_but_head: bool = False
    """Freeze everything except the output layer (sft: lm_head; classify: the new score head): a linear probe."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(self.first_n_layers >= 0, f"{where}.first_n_layers: must be >= 0")
        return p


@dataclass
class LoraConfig:
    """Low-rank adapters (peft): the base weights stay frozen and small matrices A (r × in), B (out × r) are
    trained next to the chosen linear layers, W + (alpha / r) · B A. final/ then holds the adapter (and
    tokenizer); `python finetune.py merge RUN_DIR/final OUT_DIR` writes a plain model."""

    enabled: bool = False
    r: int = 16
    """Rank of the adapters."""
    alpha: float = 32.0
    """Scale: the update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input during training."""
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))
    """Names of the linear layers that get adapters."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        if self.enabled:
            p.need(self.r >= 1, f"{where}.r: must be at least 1")
            p.need(self.alpha > 0, f"{where}.alpha: must be positive")
            p.need(0.0 <= self.dropout < 1.0, f"{where}.dropout: must be in [0, 1)")
            p.need(bool(self.target_modules), f"{where}.target_modules: name at least one linear layer, e.g. q_proj")
        return p


@dataclass
class SftConfig:
    """Instruction tuning (task: sft)."""

    chat_template: Literal["auto", "chatml"] = "auto"
    """auto: the base tokenizer's own chat template if it has one, else ChatML; chatml: always ChatML
    (<|im_start|>role\\ncontent<|im_end|>, tokens this project's tokenizer reserves). The template is saved
    with the exported tokenizer, so tokenizer.apply_chat_template works on the fine-tuned model."""
    eval_generations: int = 32
    """At every evaluation, answer the first N validation conversations by greedy generation on the model being
    trained (its last assistant turn is the reference) and report exact_match (after whitespace normalisation)
    and chrf (sacrebleu's chrF, 0-100): figures that the loss does not give, e.g. whether the model stops.
    Every process generates in lockstep (ZeRO-3 gathers weights for every forward). 0 = off."""
    eval_max_new_tokens: int = 64
    """The longest generated answer, in tokens; the prompt is cut from the left to fit data.max_length with it."""
    eval_batch_size: int = 8
    """Prompts per generate call (left-padded together). Fixed, not per process, so that the answers are the
    same on any number of processes; under ZeRO-3 each call's token steps gather the weights once each, so
    larger batches cost less per answer."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(self.eval_generations >= 0, f"{where}.eval_generations: give 0 (off) or a number of conversations")
        p.need(self.eval_max_new_tokens >= 1, f"{where}.eval_max_new_tokens: give at least 1 token")
        p.need(self.eval_batch_size >= 1, f"{where}.eval_batch_size: give at least 1 prompt per generate call")
        return p


@dataclass
class ClassifyConfig:
    """Sequence classification (task: classify): a new linear head on the last token's hidden state."""

    labels: list[str] = field(default_factory=list)
    """The label set, in the order of the head's outputs (empty = the sorted labels of the training data).
    A record with a label outside it is an error."""
    label_names: list[str] = field(default_factory=list)
    """Readable names of the labels, in the order of `labels` (which must then be given), for the exported
    model's id2label, e.g. labels ["0", "1"] with label_names [negative, positive]; empty = the labels."""
    class_weights: list[float] = field(default_factory=list)
    """Cross-entropy weight per label, in the order of `labels` (which must then be given); empty = 1 each."""
    balance_classes: bool = False
    """Weight each class by n / (classes × its count in the training data), so rare classes count as much."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        labels, names, weights = self.labels, self.label_names, self.class_weights
        p.need(len(set(labels)) == len(labels), f"{where}.labels: {labels} lists a label twice")
        p.need(len(labels) != 1, f"{where}.labels: give at least two labels (or none, to infer them from the data)")
        if names:
            p.need(
                len(names) == len(labels) and len(set(names)) == len(names),
                f"{where}.label_names: {len(names)} name(s) for {len(labels)} label(s); give {where}.labels too, in "
                "the same order, one distinct name each",
            )
        if weights:
            p.need(
                len(labels) == len(weights),
                f"{where}.class_weights: {len(weights)} weight(s) for {len(labels)} label(s); give {where}.labels "
                "too, in the same order, one weight each",
            )
            p.need(all(w > 0 for w in weights), f"{where}.class_weights: weights must be positive")
            p.need(not self.balance_classes, f"{where}.class_weights and {where}.balance_classes: choose one")
        return p


@dataclass
class FinetuneModelConfig(SpeedSwitches):
    """How the pretrained model runs while it is fine-tuned: the speed switches of pretraining's `model` section
    (for task classify, model.liger_kernel leaves the loss alone: the fused cross-entropy is for an LM head)."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (long sequences on big models)."""

    def problems(self, where: str) -> list[str]:
        return self.speed_problems(where)


@dataclass
class FinetuneRecipe:
    """A fine-tuning run: a pretrained model, a task, its data, what to train, and how."""

    run_dir: str = "runs/smoke-sft"
    """Run outputs: resolved recipe, metrics.jsonl, checkpoints, final/ (and best/ with train.best_metric)."""
    base_model: str = "runs/smoke/final"
    """The pretrained model directory to start from: this project's export (runs/<run>/final) or any
    compatible Hugging Face causal LM directory."""
    task: Literal["sft", "classify"] = "sft"
    """sft: instruction tuning on conversations, loss on the assistant's tokens only; classify: a
    sequence-classification head on the pretrained decoder."""
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def problems(self, where: str) -> list[str]:
        """The checks that depend on the task or span sections; each section checks its own fields."""
        at = f"{where}." if where else ""
        p = Problems()
        p.need(bool(self.base_model), f"{at}base_model: give the pretrained model directory, e.g. runs/smoke/final")
        d = self.data
        p.need(
            not d.packing or self.task == "sft",
            f"{at}data.packing: only for task sft (classification reads one example per sequence)",
        )
        if d.source == "python_stdlib" and self.task == "classify":
            p.need(
                len(set(d.stdlib_packages)) >= 2, f"{at}data.stdlib_packages: give at least two packages (the labels)"
            )
        f = self.freeze
        if self.lora.enabled:
            p.need(
                not (f.embeddings or f.first_n_layers or f.all_but_head),
                f"{at}freeze: LoRA already freezes every base weight; turn the freeze switches off or "
                f"{at}lora.enabled off",
            )
        if self.task == "sft" and self.sft.eval_generations:
            p.need(
                self.sft.eval_max_new_tokens < d.max_length,
                f"{at}sft.eval_max_new_tokens: {self.sft.eval_max_new_tokens} leaves no room for the prompt in "
                f"data.max_length {d.max_length}; lower it",
            )
        p.extend(self.train.best_metric_problems(f"{at}train", TASK_METRICS[self.task], f"task {self.task}"))
        return p
