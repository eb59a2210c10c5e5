"""Model construction from recipes, and the parameter arithmetic of the shipped recipes."""

import os
import subprocess
import sys

import pytest
import yaml

from lmtrain.config.recipe import load_recipe
from lmtrain.model.encoder import recipe_parameter_count
from lmtrain.model.llama import count_parameters, llama_config
from tests.conftest import REPO_ROOT

SEVEN_B = REPO_ROOT / "recipes/llama-7b/pretrain.yaml"


def llama_parameter_formula(vocab, hidden, layers, ffn, heads, kv_heads, tied=False):
    """Llama parameters by hand: embeddings (+ untied head), attention, SwiGLU MLP, two norms per layer, final norm."""
    head_dim = hidden // heads
    attention = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim
    per_layer = attention + 3 * hidden * ffn + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def test_llama2_7b_count_is_the_published_figure():
    recipe = load_recipe(SEVEN_B, ["tokenizer.vocab_size=32000"])
    assert count_parameters(llama_config(recipe)) == 6_738_415_616  # Llama-2-7B


def test_shipped_7b_recipe_count():
    recipe = load_recipe(SEVEN_B)
    expected = llama_parameter_formula(64000, 4096, 32, 11008, 32, 32)
    assert expected == 7_000_559_616
    assert count_parameters(llama_config(recipe)) == expected


def test_grouped_query_attention_and_tied_embeddings_follow_the_recipe():
    recipe = load_recipe(
        REPO_ROOT / "recipes/smoke/pretrain.yaml", ["model.num_kv_heads=2", "model.tie_word_embeddings=true"]
    )
    config = llama_config(recipe, {"bos": 0, "eos": 0, "pad": 1})
    assert config.num_key_value_heads == 2 and config.tie_word_embeddings
    assert config.max_position_embeddings == recipe.data.seq_len
    assert count_parameters(config) == llama_parameter_formula(8192, 256, 4, 688, 8, 2, tied=True)


# Pretraining recipes; the fine-tuning ones (they name a task) are checked in tests/test_finetune.py.
SHIPPED_RECIPES = sorted(
    str(p.relative_to(REPO_ROOT))
    for p in (REPO_ROOT / "recipes").rglob("*.yaml")
    if p.parent.name != "accelerate" and "task" not in yaml.safe_load(p.read_text())
)


def test_shipped_pretraining_recipes_are_found():
    assert {"recipes/smoke/pretrain.yaml", "recipes/llama-7b/pretrain.yaml"} <= set(SHIPPED_RECIPES)


@pytest.mark.parametrize("recipe", SHIPPED_RECIPES)
def test_every_shipped_recipe_dry_runs(recipe):
    result = subprocess.run(
        [sys.executable, "train.py", recipe, "--dry-run"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "# resolved recipe" in result.stdout
    count_line = next(line for line in result.stdout.splitlines() if line.startswith("parameters:"))
    n_params = int(count_line.split()[1].replace(",", ""))
    assert n_params == recipe_parameter_count(load_recipe(REPO_ROOT / recipe))
    assert "tokens/step" in result.stdout


def test_dry_run_batch_arithmetic_for_a_64_gpu_launch():
    result = subprocess.run(
        [sys.executable, "train.py", str(SEVEN_B), "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WORLD_SIZE": "64"},
    )
    assert result.returncode == 0, result.stderr
    assert (
        "64 process(es) × micro 1 × accumulation 16 = 1024 sequences × 4096 tokens = 4,194,304 tokens/step"
        in result.stdout
    )
    assert "240,000 steps = 1,006,632,960,000 tokens" in result.stdout
