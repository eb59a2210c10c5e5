"""Publishing while training runs, against the local Hub of tests/hub_server.py with the real huggingface_hub client.

Checks: every checkpoint becomes a branch named by its step and tokens, and `main` the final model, each loadable
with `from_pretrained(repo, revision=...)` and equal (logits) to what the run saved locally; pruning while an
upload waits loses nothing; a hub that fails, then recovers, leaves the run finished and, after the same command
again, everything published exactly once; bad input at start stops the run before any training, with one message.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_dataset
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from lmtrain.config.recipe import RecipeError, load_recipe
from tests.conftest import REPO_ROOT, prepare_recipe, run_cli

TINY = """
tokenizer: {vocab_size: 512, min_frequency: 2}
data:
  sources: [{kind: python_stdlib, max_documents: 120}]
  clean: {strip_html: false}
  seq_len: 64
  validation_fraction: 0.1
model: {hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 172}
train: {max_steps: 20, global_batch_size: 8, micro_batch_size: 8, warmup_steps: 2, lr: 3.0e-3,
        eval_every: 10, eval_batches: 2, log_every: 5, checkpoint_every: 10, keep_last: 5}
"""
TOKENS_PER_STEP = 8 * 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny recipe whose tokenizer and data are prepared once for this module."""
    return prepare_recipe(tmp_path_factory.mktemp("publish"), TINY)  # each test passes its own run_dir


def train(recipe, run_dir, *overrides, check=True):
    return run_cli("train.py", recipe, f"run_dir={run_dir}", *overrides, check=check)


def logits(model_or_path, revision=None):
    model = model_or_path
    if not isinstance(model, torch.nn.Module):
        model = AutoModelForCausalLM.from_pretrained(model_or_path, revision=revision)
    with torch.no_grad():
        return model.eval()(torch.arange(1, 33).unsqueeze(0)).logits


def checkpoint_model(run_dir, step):
    """The weights the run saved in its checkpoint at `step`, in the final export's architecture."""
    config = AutoConfig.from_pretrained(run_dir / "final")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(load_file(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))
    return model


def branches(repo_id):
    return sorted(b.name for b in HfApi().list_repo_refs(repo_id).branches)


def test_push_checkpoints_publishes_a_loadable_branch_per_checkpoint_and_main(prepared, hub_server, tmp_path):
    run_dir = tmp_path / "run"
    result = train(prepared, run_dir, "hub.repo_id=me/tiny", "hub.push=checkpoints")
    # 10 steps × 8 sequences × 64 tokens = 5,120 tokens per checkpoint interval
    expected = ["main", "step0000010-tokens5.12K", "step0000020-tokens10.2K"]
    assert branches("me/tiny") == expected, result.stderr[-3000:]
    for step, branch in ((10, expected[1]), (20, expected[2])):
        torch.testing.assert_close(logits("me/tiny", branch), logits(checkpoint_model(run_dir, step)))
    torch.testing.assert_close(logits("me/tiny", "main"), logits(run_dir / "final"))
    assert hub_server.count("POST", "/commit/") == 3  # one commit per branch, nothing uploaded twice
    assert not (run_dir / "publish" / expected[1]).exists()  # staged copies go once the hub has them
    card = ModelCard.load(HfApi().hf_hub_download("me/tiny", "README.md"))
    assert all(f'revision="{b}"' in card.text for b in expected[1:])
    files = hub_server.files("me/tiny", "main")
    assert {"model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "loss.png", "metrics.jsonl"} <= set(
        files
    )
    assert not any("optimizer" in name for name in files)
    assert "hf_test" not in (run_dir / "recipe.yaml").read_text() + result.stderr + card.content
    ledger = json.loads((run_dir / "publish" / "published.json").read_text())
    assert sorted(ledger["me/tiny"]) == expected


def test_card_figures_match_the_run(prepared, tmp_path):
    run_dir = tmp_path / "run"
    train(prepared, run_dir)  # no hub: the card is in every export all the same
    card = ModelCard.load(run_dir / "final" / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation" and "en" in data["language"]
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in evals if "eval_loss" in r][-1]
    metrics = {m["name"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics["eval_loss"] == pytest.approx(last["eval_loss"], abs=1e-6)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert f"| parameters (exact) | {sum(p.numel() for p in model.parameters()):,} |" in card.text
    manifest = json.loads((Path(yaml.safe_load(prepared.read_text())["data"]["dir"]) / "manifest.json").read_text())
    source = manifest["sources"][0]
    assert f"| {source['documents_read']:,} | {source['kept']:,} |" in card.text
    for section in ("Architecture", "Tokenizer", "Training data", "Training procedure", "Results", "How to use",
                    "使用方法", "Limitations"):  # fmt: skip
        assert card.text.count(f"\n## {section}\n") == 1
    for png in (run_dir / "loss.png", run_dir / "final" / "loss.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pruning_while_uploads_wait_loses_nothing(prepared, hub_server, tmp_path):
    run_dir = tmp_path / "run"
    hub_server.fail(503, times=3, path="/commit/")  # the first uploads retry while training prunes checkpoints
    train(prepared, run_dir, "hub.repo_id=me/pruned", "hub.push=checkpoints", "hub.retry_wait_s=0.5",
          "train.checkpoint_every=5", "train.keep_last=1")  # fmt: skip
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_00000020"]
    steps = [b.split("-")[0] for b in branches("me/pruned") if b != "main"]
    assert steps == ["step0000005", "step0000010", "step0000015", "step0000020"]


def test_a_failing_hub_leaves_the_run_finished_and_a_rerun_publishes_the_rest_once(prepared, hub_server, tmp_path):
    run_dir = tmp_path / "run"
    args = ("hub.repo_id=me/flaky", "hub.push=checkpoints", "hub.upload_retries=1", "hub.retry_wait_s=0.1")
    outage = hub_server.fail(500, times=1000, path="/commit/")
    first = train(prepared, run_dir, *args)
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert "could not publish" in first.stderr and "run the same command again" in first.stderr
    assert "model.safetensors" not in hub_server.files("me/flaky", "main")
    outage.times = 0
    second = train(prepared, run_dir, *args)
    assert "run already complete" in second.stderr
    assert branches("me/flaky") == ["main", "step0000010-tokens5.12K", "step0000020-tokens10.2K"]
    commits = [c for c in hub_server.calls if c.method == "POST" and "/commit/" in c.path and c.status == 200]
    assert len(commits) == 3
    third = train(prepared, run_dir, *args)  # nothing left: nothing uploaded
    assert "0 upload(s)" in third.stderr
    assert len([c for c in hub_server.calls if c.method == "POST" and "/commit/" in c.path and c.status == 200]) == 3


def test_rate_limit_is_waited_out(prepared, hub_server, tmp_path):
    hub_server.fail(429, times=1, path="/commit/", retry_after=1)
    result = train(prepared, tmp_path / "run", "hub.repo_id=me/limited", "hub.push=final", "hub.retry_wait_s=30")
    assert "retrying in 1 s" in result.stderr  # Retry-After wins over the recipe's 30 s
    assert branches("me/limited") == ["main"]


@pytest.mark.parametrize(
    "override, env, message",
    [
        ("hub.repo_id=someone/else", {}, "belongs to 'someone'"),
        ("hub.repo_id=me/x", {"HF_TOKEN": "hf_wrong"}, "refused the token"),
        ("hub.repo_id=me/x", {"HF_TOKEN": ""}, "no Hugging Face token found"),
        ("hub.repo_id=me/x", {"HF_ENDPOINT": "http://127.0.0.1:9"}, "is unreachable"),
        ("hub.repo_id=me/x", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ],
)
def test_bad_hub_set_up_stops_before_training(prepared, hub_server, tmp_path, override, env, message):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", str(prepared), f"run_dir={run_dir}", override, "hub.push=final"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (run_dir / "metrics.jsonl").exists()


def test_recipe_refuses_tokens_and_bad_repo_ids(prepared):
    with pytest.raises(RecipeError, match="hub.token: tokens do not belong in a recipe"):
        load_recipe(prepared, ["hub.token=abc"])
    with pytest.raises(RecipeError, match="run_dir: tokens do not belong"):
        load_recipe(prepared, ["run_dir=hf_" + "a" * 34])
    with pytest.raises(RecipeError, match="is not `org/name`"):
        load_recipe(prepared, ["hub.repo_id=no-slash"])
    with pytest.raises(RecipeError, match="hub.push=checkpoints needs a repository"):
        load_recipe(prepared, ["hub.push=checkpoints"])
    assert load_recipe(prepared, ["hub.repo_id=me/smoke", "hub.push=checkpoints"]).hub.private is True


def test_publish_an_existing_run_later_once(prepared, hub_server, tmp_path):
    run_dir = tmp_path / "run"
    train(prepared, run_dir)  # hub.push=none: nothing leaves the machine while it trains
    assert hub_server.count("POST", "/commit/") == 0
    args = ("publish.py", run_dir, "--repo-id", "me/later", "--tokenizer-repo", "me/later-tokenizer",
            "--dataset-repo", "me/later-data")  # fmt: skip
    run_cli(*args)
    assert branches("me/later") == ["main", "step0000010-tokens5.12K", "step0000020-tokens10.2K"]
    torch.testing.assert_close(logits("me/later", "step0000010-tokens5.12K"), logits(checkpoint_model(run_dir, 10)))
    torch.testing.assert_close(logits("me/later", "main"), logits(run_dir / "final"))
    tokenizer_files = hub_server.files("me/later-tokenizer")
    tokenizer_dir = Path(yaml.safe_load(prepared.read_text())["tokenizer"]["dir"])
    assert tokenizer_files["tokenizer.json"] == (tokenizer_dir / "tokenizer.json").read_bytes()
    assert "| vocabulary | 512 |" in tokenizer_files["README.md"].decode()
    data_dir = Path(yaml.safe_load(prepared.read_text())["data"]["dir"])
    published = load_dataset("me/later-data", split="validation")
    manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
    assert len(published) == manifest["splits"]["validation"]["blocks"]
    commits = hub_server.count("POST", "/commit/")
    again = run_cli(*args)
    assert hub_server.count("POST", "/commit/") == commits, again.stderr[-2000:]  # nothing published twice


@pytest.mark.distributed
def test_under_two_process_zero3_only_the_main_process_talks_to_the_hub(prepared, hub_server, tmp_path):
    run_dir = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO_ROOT / "recipes/accelerate/cpu_zero3_2proc.yaml")]  # fmt: skip
    result = subprocess.run(
        [*launch, "train.py", str(prepared), f"run_dir={run_dir}", "train.micro_batch_size=4", "hub.repo_id=myorg/zero3",
         "hub.push=checkpoints"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert hub_server.count("GET", "/whoami") == 1  # one access check: the main process's
    assert hub_server.count("POST", "/commit/") == 3  # each branch committed once, by one process
    assert branches("myorg/zero3") == ["main", "step0000010-tokens5.12K", "step0000020-tokens10.2K"]
    # the branch holds the weights gathered from both ranks' shards: equal to the run's own final export
    torch.testing.assert_close(logits("myorg/zero3", "step0000020-tokens10.2K"), logits(run_dir / "final"))
    assert "DeepSpeed ZeRO-3" in hub_server.files("myorg/zero3")["README.md"].decode()


def test_fine_tunes_publish_with_their_base_model(prepared, hub_server, tmp_path):
    base_dir = tmp_path / "base"
    train(prepared, base_dir, "hub.repo_id=me/base", "hub.push=final")
    common = [f"base_model={base_dir / 'final'}", "data.source=python_stdlib",
              "data.max_train_examples=64", "data.max_validation_examples=16", "data.max_length=64", "sft.eval_max_new_tokens=16",
              "train.max_steps=4", "train.global_batch_size=4", "train.micro_batch_size=4", "train.warmup_steps=1",
              "train.eval_every=4", "train.checkpoint_every=0"]  # fmt: skip
    recipe = REPO_ROOT / "recipes/smoke/sft.yaml"
    run_cli("finetune.py", recipe, *common, f"run_dir={tmp_path / 'sft'}", "hub.repo_id=me/base-sft", "hub.push=final")
    run_cli("finetune.py", recipe, *common, f"run_dir={tmp_path / 'lora'}", "lora.enabled=true", "lora.r=4",
            "hub.repo_id=me/base-lora", "hub.push=final")  # fmt: skip
    sft = ModelCard.load(HfApi().hf_hub_download("me/base-sft", "README.md"))
    assert sft.data.base_model == "me/base" and sft.data.pipeline_tag == "text-generation"
    assert "sft" in sft.data.tags and "apply_chat_template" in sft.text and "en" in sft.data.language
    torch.testing.assert_close(logits("me/base-sft", "main"), logits(tmp_path / "sft" / "final"))
    lora = ModelCard.load(HfApi().hf_hub_download("me/base-lora", "README.md"))
    assert lora.data.library_name == "peft" and lora.data.base_model == "me/base"
    assert "adapter_model.safetensors" in hub_server.files("me/base-lora")


def test_hub_checkpoint_every_publishes_a_subset_of_the_checkpoints(prepared, hub_server, tmp_path):
    train(prepared, tmp_path / "run", "hub.repo_id=me/sparse", "hub.push=checkpoints", "hub.checkpoint_every=10",
          "train.checkpoint_every=5")  # fmt: skip
    assert [b.split("-")[0] for b in branches("me/sparse")] == ["main", "step0000010", "step0000020"]


EXPORT_BF16 = """
import sys
from accelerate import Accelerator
from lmtrain.config.recipe import load_recipe
from lmtrain.model.export import export_model
from lmtrain.model.llama import build_model, llama_config
from lmtrain.tokenizer.bpe import load_tokenizer

recipe = load_recipe(sys.argv[1], ["hub.max_shard_size=0.2MB"])
tok = load_tokenizer(recipe.tokenizer.dir)
model = build_model(recipe, llama_config(recipe, {"bos": tok.bos_token_id, "eos": tok.eos_token_id,
                                                  "pad": tok.pad_token_id}))
model.save_pretrained(sys.argv[2] + "/fp32")
export_model(Accelerator(cpu=True, mixed_precision="bf16"), model, tok, recipe, sys.argv[2] + "/export")
"""


def test_a_bf16_run_exports_bf16_weights_in_shards_of_hub_max_shard_size(prepared, tmp_path):
    # bf16 training needs a GPU (the recipe refuses it here); the export only needs the Accelerator to say bf16
    run_cli("-c", EXPORT_BF16, prepared, tmp_path)
    shards = sorted((tmp_path / "export").glob("*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "export" / "model.safetensors.index.json").is_file()  # 330 KB in ≤ 0.2 MB
    exported = {k: v for shard in shards for k, v in load_file(shard).items()}
    reference = load_file(tmp_path / "fp32" / "model.safetensors")
    assert exported.keys() == reference.keys() and all(v.dtype == torch.bfloat16 for v in exported.values())
    for name, weight in reference.items():
        torch.testing.assert_close(exported[name], weight.to(torch.bfloat16), rtol=0, atol=0)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype="auto").dtype == torch.bfloat16
