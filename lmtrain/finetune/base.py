"""What SFT and classification share: the pretrained base, the `FinetuneTask` set-up both tasks build on,
freezing, LoRA, export and merge.

A fine-tuned model is exported as a plain Hugging Face directory (safetensors, config, tokenizer with
its chat template, generation config), or, with LoRA, as a peft adapter directory (adapter_config.json,
adapter_model.safetensors, tokenizer) that `merge_adapter` turns into a plain directory.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lmtrain.config.finetune import FinetuneRecipe, FreezeConfig, LoraConfig
from lmtrain.corpus.records import Splits, load_splits
from lmtrain.errors import UserError
from lmtrain.model.adapters import adapter_info, is_adapter_dir, load_adapter_model
from lmtrain.model.export import export_model
from lmtrain.model.llama import enable_activation_checkpointing, parameter_count
from lmtrain.model.speed import apply_speed_switches, check_speed_switches
from lmtrain.training.distributed import resolve_precision
from lmtrain.training.task import Task


def say(message: str) -> None:
    """Print once per launch (the main process), on stderr like the training log."""
    if PartialState().is_main_process:
        import sys

        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the base model


ENCODER_ENDINGS = ("ForMaskedLM", "ForPreTraining")
"""Architectures of encoder exports (train.py with objective.kind=mlm): a classifier can start from them."""


def check_base_model(path: str, task: str = "sft") -> AutoConfig:
    """The base model's config, after checking that `path` is a model directory `task` can start from: a causal
    LM for SFT; a causal LM or an encoder (masked LM) for classification."""
    directory = Path(path)
    if is_adapter_dir(directory):
        raise UserError(
            f"base_model: {path} is a LoRA adapter, not a full model; merge it first "
            f"(python finetune.py merge {path} OUT_DIR) and start from OUT_DIR"
        )
    if not directory.is_dir():
        raise UserError(
            f"base_model: {path} does not exist; pretrain first (make smoke writes runs/smoke/final) "
            "or point base_model at a model directory"
        )
    if not (directory / "config.json").is_file():
        raise UserError(
            f"base_model: {path} is not a model directory (no config.json); point it at a "
            "pretrained export such as runs/smoke/final"
        )
    try:
        config = AutoConfig.from_pretrained(directory)
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"base_model: {path}/config.json cannot be read by transformers: {exc}") from None
    architectures = getattr(config, "architectures", None) or []
    encoder = any(a.endswith(ENCODER_ENDINGS) for a in architectures)
    if encoder and task != "classify":
        raise UserError(
            f"base_model: {path} is an encoder ({', '.join(architectures)}): it fills masks and cannot generate, "
            f"which {task} trains; fine-tune it with task: classify, or start {task} from a causal LM such as "
            "runs/smoke/final"
        )
    if not encoder and (
        config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or (architectures and not any(a.endswith("ForCausalLM") for a in architectures))
    ):
        kind = ", ".join(architectures) or config.model_type
        raise UserError(
            f"base_model: {path} is a {kind} model, not a causal language model; start from a "
            "pretrained causal LM directory (e.g. runs/smoke/final, or a *ForCausalLM model)"
        )
    if not any(directory.glob("*.safetensors")):
        raise UserError(
            f"base_model: {path} has no .safetensors weights; this project loads safetensors only "
            "(no pickled .bin files): convert the model with save_pretrained(..., safe_serialization=True)"
        )
    if not (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").is_file():
        raise UserError(f"base_model: {path} has no tokenizer; export the model with its tokenizer")
    return config


def load_base_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:  # e.g. Llama-2's tokenizer: pad with eos, masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def base_fingerprint(path: str) -> str:
    """Changes when the base model's config, tokenizer or weights files change (sizes, not contents: a 7B
    is not hashed on every start)."""
    digest = hashlib.sha256()
    directory = Path(path)
    for name in ("config.json", "tokenizer.json"):
        if (directory / name).is_file():
            digest.update((directory / name).read_bytes())
    for weights in sorted(directory.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


def base_model_reference(path: str) -> tuple[str | None, str]:
    """The base model's Hub repository (None when it has none) and how a card names it: a snapshot in the
    Hugging Face cache is `org/name@commit`; an export of this project published with hub.repo_id is that repo."""
    cached = re.search(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})", str(Path(path).resolve()))
    if cached:
        repo = f"{cached[1]}/{cached[2]}"
        return repo, f"{repo}@{cached[3]}"
    recipe = Path(path) / "recipe.yaml"
    repo = (
        ((yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("hub") or {}).get("repo_id")
        if recipe.is_file()
        else None
    )
    return (repo, repo) if repo else (None, path)


def base_languages(path: str) -> list[str]:
    """The languages the base model's own card declares (none without a card)."""
    card = Path(path) / "README.md"
    if not card.is_file():
        return []
    language = ModelCard.load(card, ignore_metadata_errors=True).data.language or []
    return [language] if isinstance(language, str) else list(language)


def resolved(path: str) -> str:
    """An absolute path for a local directory (so that an adapter finds its base from anywhere)."""
    return str(Path(path).resolve()) if Path(path).exists() else path


# ---------------------------------------------------------------------------- the task


class FinetuneTask(Task):
    """What SFT and classification do alike: check the base model and load its tokenizer (on construction),
    read the data splits, load the base weights in `base_dtype` and make them trainable, export, and
    fingerprint the base and the tokenized data for resume. Subclasses load the model class they train
    (`load_pretrained`), name its output layer (`head`) and hash their tokenized data (`hash_data`)."""

    def __init__(self, recipe: FinetuneRecipe):
        self.recipe = recipe
        self.seq_len = recipe.data.max_length
        check_base_model(recipe.base_model, recipe.task)
        self.tokenizer = load_base_tokenizer(recipe.base_model)

    def read_splits(self) -> Splits:
        """The recipe's training and validation records (after any tokenizer set-up, which may reject the
        recipe before the data is read)."""
        splits = load_splits(self.recipe)
        self.data_description = splits.description
        return splits

    def load_pretrained(self, path: str, **kwargs) -> torch.nn.Module:
        """The base weights at `path` in the model class the task trains; kwargs go to from_pretrained."""
        raise NotImplementedError

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        """The output layer (trained by freeze.all_but_head)."""
        raise NotImplementedError

    def hash_data(self, digest) -> None:
        """Feed the tokenized training and validation data to `digest` (a hashlib object)."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        r = self.recipe
        causal_lm = r.task == "sft"
        check_speed_switches(r.model, causal_lm=causal_lm)
        model = self.load_pretrained(
            resolved(r.base_model), dtype=base_dtype(r), attn_implementation=r.model.attn_implementation
        )
        # Before LoRA and freezing: FP8 swaps the base's linear layers, which LoRA then wraps.
        model = apply_speed_switches(model, r.model, causal_lm=causal_lm)
        return make_trainable(model, r, self.head(model))

    def export(self, accelerator: Accelerator, model, out_dir: Path) -> None:
        export_model(accelerator, model, self.tokenizer, self.recipe, out_dir, **self.export_extras())

    def export_extras(self) -> dict:
        """Further arguments of export_model (a generation config, label names)."""
        return {}

    def card_facts(self) -> dict:
        r = self.recipe
        base_model, base_text = base_model_reference(r.base_model)
        return {
            "kind": r.task,
            "data_rows": [("data", self.data_description), ("examples", self.report)],
            "languages": base_languages(r.base_model),
            "datasets": [r.data.dataset] if r.data.source == "hub" and r.data.dataset else [],
            "base_model": base_model,
            "base_model_text": base_text,
            "adapter": r.lora.enabled,
        }

    def fingerprints(self) -> dict[str, str]:
        digest = hashlib.sha256()
        self.hash_data(digest)
        return {"base_model": base_fingerprint(self.recipe.base_model), "data": digest.hexdigest()}


# ---------------------------------------------------------------------------- what is trained


def base_dtype(recipe: FinetuneRecipe) -> torch.dtype:
    """The dtype to load the base model in. With LoRA in bf16 training, bf16: its matmuls run in bf16
    under autocast either way, and holding it in bf16 halves its memory (a 7B base: 14 GB instead of
    28), at the price of a bf16 residual stream and norms (fp32 with an fp32 base under autocast), the
    usual trade-off of bf16 LoRA. make_trainable keeps what trains (adapters, a classification head)
    in fp32. Otherwise fp32, the master copy of weights that train (DeepSpeed keeps its own)."""
    if recipe.lora.enabled and resolve_precision(recipe.train.precision) == "bf16":
        return torch.bfloat16
    return torch.float32


def make_trainable(model: torch.nn.Module, recipe: FinetuneRecipe, head: torch.nn.Module) -> torch.nn.Module:
    """The loaded model as the recipe trains it: activation checkpointing, freezing, LoRA; says what trains."""
    if recipe.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    frozen = apply_freezing(model, recipe.freeze, head)
    if recipe.lora.enabled:
        if recipe.model.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed layers need inputs that require grad
        model = apply_lora(model, recipe.lora, recipe.task)
        # Over a bf16 base (base_dtype) what trains stays fp32, under autocast. ZeRO-3 neither autocasts nor
        # recasts a model built under zero.Init, so there it must match the base (DeepSpeed keeps fp32 masters).
        trainable_dtype = base_dtype(recipe) if is_deepspeed_zero3_enabled() else torch.float32
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(trainable_dtype)
    say(describe_trainable(model, frozen, recipe.lora) + f" | base weights {str(base_dtype(recipe)).split('.')[-1]}")
    return model


def apply_freezing(model: torch.nn.Module, cfg: FreezeConfig, head: torch.nn.Module) -> str:
    """Freeze as the recipe says; return a description of what is frozen ("" for nothing)."""
    frozen = []
    if cfg.all_but_head:
        for param in model.parameters():
            param.requires_grad_(False)
        for param in head.parameters():
            param.requires_grad_(True)
        frozen.append("everything but the head")
    if cfg.embeddings:
        embeddings = model.get_input_embeddings()
        for param in embeddings.parameters():
            param.requires_grad_(False)
        tied = any(p is q for p in embeddings.parameters() for q in head.parameters())
        frozen.append("embeddings" + (" (tied to the output layer, frozen with them)" if tied else ""))
    if cfg.first_n_layers:
        base = model.base_model
        layers = base.layers if hasattr(base, "layers") else base.encoder.layer  # BERT: encoder.layer
        if cfg.first_n_layers > len(layers):
            raise UserError(f"freeze.first_n_layers: {cfg.first_n_layers} but the model has {len(layers)} layers")
        for layer in layers[: cfg.first_n_layers]:
            for param in layer.parameters():
                param.requires_grad_(False)
        frozen.append(f"layers 0-{cfg.first_n_layers - 1} of {len(layers)}")
    return ", ".join(frozen)


def apply_lora(model: torch.nn.Module, cfg: LoraConfig, task_type: str) -> torch.nn.Module:
    """The model wrapped with LoRA adapters (peft); only the adapters (and a classification head) train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
        )
        raise UserError(
            f"lora.target_modules: {', '.join(missing)} not found in the model; its linear layers are "
            f"{', '.join(linear)}"
        )
    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type=TaskType.CAUSAL_LM if task_type == "sft" else TaskType.SEQ_CLS,
    )
    return get_peft_model(model, peft_config)


def describe_trainable(model: torch.nn.Module, frozen: str, lora: LoraConfig) -> str:
    total, trainable = parameter_count(model), parameter_count(model, trainable_only=True)
    how = (
        f"LoRA r={lora.r}, alpha={lora.alpha:g} on {', '.join(lora.target_modules)}"
        if lora.enabled
        else f"frozen: {frozen}"
        if frozen
        else "full fine-tuning"
    )
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%) | {how}"


def merge_adapter(
    adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, overwrite: bool = False
) -> Path:
    """Merge a LoRA adapter into its base and write a plain model directory (safetensors, config, tokenizer,
    generation config) in the base model's dtype, loadable with AutoModelForCausalLM /
    AutoModelForSequenceClassification alone."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base = base or adapter_info(adapter_dir).get("base_model_name_or_path")
    target = out_dir.resolve()
    for kept, what in ((adapter_dir, "the adapter"), (Path(base or adapter_dir), "the base model")):
        if target == kept.resolve() or target in kept.resolve().parents:
            raise UserError(f"merge: {out_dir} holds {what} ({kept}); write the merged model to a new directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"merge: {out_dir} exists and is not empty; choose a new directory, or pass --overwrite to replace it"
        )
    merged = load_adapter_model(adapter_dir, base, merge=True)
    merged.to(AutoConfig.from_pretrained(base).dtype or torch.float32)  # loaded in fp32 for the merge
    if (adapter_dir / "generation_config.json").is_file():
        merged.generation_config = GenerationConfig.from_pretrained(adapter_dir)
    staging = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(staging)
    if (adapter_dir / "recipe.yaml").is_file():
        shutil.copy(adapter_dir / "recipe.yaml", staging / "recipe.yaml")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir
