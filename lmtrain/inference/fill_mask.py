"""Fill masks with an encoder (masked-language-model exports): transformers' fill-mask pipeline, on the CPU or GPU."""

from __future__ import annotations

from pathlib import Path

from lmtrain.errors import UserError


def fill_masks(model_dir: str | Path, prompts: list[str], top_k: int) -> list[list[dict]]:
    """For each prompt, per mask token in it (the tokenizer's, e.g. [MASK]), the `top_k` candidates as the
    pipeline gives them: {"token_str", "score", "sequence"}."""
    import torch
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(model_dir), top_k=top_k, device=0 if torch.cuda.is_available() else -1)
    mask = fill.tokenizer.mask_token
    for prompt in prompts:
        if mask not in prompt:
            raise UserError(f"{prompt[:60]!r}: put the mask token {mask} where a token should be filled in")
    results = []
    for prompt in prompts:
        out = fill(prompt)
        results.append(out if prompt.count(mask) > 1 else [out])  # one list per mask, whatever their number
    return results
