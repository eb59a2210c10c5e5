"""LoRA adapter directories (peft's export): how to recognise one and load it onto its base model.

Shared by fine-tuning (export, merge) and inference (generate.py), so neither imports the other."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from lmtrain.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
LABELS_FILE = "labels.json"
"""Written next to a classification adapter: the head's labels, which the adapter config does not hold."""


def is_adapter_dir(path: str | Path) -> bool:
    """A LoRA adapter directory (peft's export): an adapter config and no model config of its own."""
    return (Path(path) / ADAPTER_CONFIG).is_file() and not (Path(path) / "config.json").is_file()


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def adapter_info(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(
            f"{adapter_dir}: not a LoRA adapter directory (no {ADAPTER_CONFIG}); pass the final/ or best/ "
            "directory of a run trained with lora.enabled=true"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_adapter_model(adapter_dir: str | Path, base: str | None = None, merge: bool = False):
    """The base model with the adapter of `adapter_dir` (peft), merged into plain weights if `merge`.
    `base` overrides the base model path recorded in the adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    info = adapter_info(adapter_dir)
    base = base or info.get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise UserError(
            f"{adapter_dir}: its base model {base!r} is not a model directory here; pass the base "
            "model directory with --base (generate.py, finetune.py merge)"
        )
    if info.get("task_type") == "SEQ_CLS":
        labels_path = Path(adapter_dir) / LABELS_FILE
        if not labels_path.is_file():
            raise UserError(f"{adapter_dir}: a classification adapter without {LABELS_FILE}; re-export it")
        labels = json.loads(labels_path.read_text(encoding="utf-8"))["labels"]
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            pad_token_id=tokenizer.pad_token_id,
            dtype=torch.float32,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merge:
        model = model.merge_and_unload()
    return model.eval()
