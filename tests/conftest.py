"""Shared test setup: everything offline, nothing written outside tmp_path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    """Run one of the repository's entry points (e.g. "train.py", recipe, "key=value") as a user would."""
    result = subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def prepare_recipe(root: Path, recipe_yaml: str) -> Path:
    """Write `recipe_yaml` with its run, tokenizer and data directories under `root`, then train its tokenizer and
    prepare its data as a user would; the recipe's path."""
    import yaml

    text = yaml.safe_load(recipe_yaml)
    text["run_dir"] = str(root / "run")
    text["tokenizer"]["dir"], text["data"]["dir"] = str(root / "tokenizer"), str(root / "data")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(text), encoding="utf-8")
    run_cli("tokenizer/train_tokenizer.py", recipe)
    run_cli("data_prep/prepare.py", recipe)
    return recipe


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    """A local Hub (tests/hub_server.py) that huggingface_hub, transformers and datasets talk to, online, despite the
    HF_HUB_OFFLINE=1 set above: HF_ENDPOINT, HF_TOKEN="hf_test" (user "me", org "myorg"), HF_HUB_DISABLE_XET=1 and
    HF_HOME under tmp_path are set in the environment and in the constants already imported (see use_hub)."""
    from tests.hub_server import HubServer, use_hub

    with HubServer(tokens={"hf_test"}, user="me", orgs=("myorg",)) as hub:
        hub.env = use_hub(monkeypatch, hub.url, "hf_test", tmp_path / "hf_home")
        yield hub
