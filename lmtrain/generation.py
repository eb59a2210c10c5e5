"""Inference with plain transformers APIs: load a model directory, continue prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtrain.errors import UserError


@dataclass
class SamplingSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0
    """0 = greedy decoding."""
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise UserError("--temperature must be >= 0 (0 = greedy)")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise UserError("--top-k must be >= 0 and --top-p in (0, 1]")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_k": self.top_k or None, "top_p": self.top_p}

    def describe(self) -> str:
        if self.temperature == 0:
            return f"greedy, {self.max_new_tokens} new tokens"
        return (f"sampling: temperature {self.temperature}, top-k {self.top_k or 'off'}, top-p {self.top_p}, "
                f"seed {self.seed}, {self.max_new_tokens} new tokens")


def load_model(model_dir: str | Path):
    """Model and tokenizer from a directory; safetensors weights, no remote code."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json); "
                        "pass a trained model such as runs/smoke/final")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # batched prompts end where generation starts
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    prompts = list(prompts)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise UserError(f"{path}: prompts file not found")
        try:
            prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not prompts:
        raise UserError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], settings: SamplingSettings) -> list[str]:
    """The continuation of each prompt (prompt text excluded)."""
    torch.manual_seed(settings.seed)
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    output = model.generate(**batch, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[:, batch["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
