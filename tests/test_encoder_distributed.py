"""An encoder (ModernBERT, MLM) under 2-process DeepSpeed ZeRO-3 on CPU matches one process: the masks depend on the
seed, the step and the block, not on which process masks it, so both runs train on the same inputs and labels."""

import sys

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForMaskedLM

from lmtrain.config.recipe import load_recipe
from lmtrain.model.encoder import build_encoder, model_config
from lmtrain.tokenizer.bpe import load_tokenizer
from tests.test_distributed import LAUNCH, LOSS_RTOL, metrics, run
from tests.test_encoder import TINY_MLM

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder-dist")
    text = yaml.safe_load(TINY_MLM)
    text["train"] = {"max_steps": 6, "global_batch_size": 8, "micro_batch_size": 4, "warmup_steps": 2, "lr": 3.0e-3,
                     "eval_every": 3, "eval_batches": 4, "log_every": 1}  # fmt: skip
    text["tokenizer"]["dir"], text["data"]["dir"] = str(root / "tokenizer"), str(root / "data")
    text["model"]["init_from"] = str(root / "init")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(text), encoding="utf-8")
    run([sys.executable, "tokenizer/train_tokenizer.py", str(recipe_path)])
    run([sys.executable, "data_prep/prepare.py", str(recipe_path)])
    recipe = load_recipe(recipe_path, ["model.init_from="])
    tok = load_tokenizer(recipe.tokenizer.dir)
    ids = {"pad": tok.pad_token_id, "cls": tok.cls_token_id, "sep": tok.sep_token_id}
    torch.manual_seed(0)
    build_encoder(recipe, model_config(recipe, ids)).save_pretrained(root / "init")
    single, zero3 = root / "single", root / "zero3"
    run([sys.executable, "train.py", str(recipe_path), f"run_dir={single}"])
    result = run([*LAUNCH, "train.py", str(recipe_path), f"run_dir={zero3}"])
    return root, single, zero3, result


def test_zero3_encoder_matches_one_process(both_runs):
    root, single, zero3, result = both_runs
    assert "2 process(es) × micro 4 × accumulation 1 = 8 sequences" in result.stderr
    one, two = metrics(single), metrics(zero3)
    for key in ("loss", "mlm_accuracy", "eval_mlm_loss", "eval_mlm_accuracy"):
        first = np.array([m[key] for m in one if key in m])
        second = np.array([m[key] for m in two if key in m])
        assert len(first) == len(second) > 2
        np.testing.assert_allclose(second, first, rtol=LOSS_RTOL, atol=1e-6, err_msg=key)
    losses = [m["loss"] for m in one if "loss" in m]
    assert losses[-1] < losses[0]
    model = AutoModelForMaskedLM.from_pretrained(zero3 / "final")  # the gathered weights, trained
    initial = AutoModelForMaskedLM.from_pretrained(root / "init")
    name = "model.layers.0.mlp.Wo.weight"
    assert not torch.equal(model.state_dict()[name], initial.state_dict()[name])
