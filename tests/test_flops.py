"""Model FLOPs per token and peak FLOP/s: the numerator and denominator of MFU."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, LlamaConfig

from lmtrain.config.recipe import load_recipe
from lmtrain.errors import UserError
from lmtrain.model import flops
from lmtrain.model.flops import flops_per_token, peak_flops_for_kind, peak_flops_per_device
from lmtrain.model.llama import llama_config
from tests.conftest import REPO_ROOT


def test_7b_flops_per_token_by_hand():
    """PaLM appendix B for the shipped 7B, written out from its shape (hidden 4096, 32 layers, 32 heads
    of 128, SwiGLU 11008, vocabulary 64000, seq 4096): per layer q, k, v, o are 4096 x 4096 each and
    gate, up, down 4096 x 11008; the LM head is 4096 x 64000; the input embedding does no matmul."""
    matmul_params = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 64000
    assert matmul_params == 6_738_149_376  # = all 7,000,559,616 minus the embedding and the 65 norm vectors
    expected = 6 * matmul_params + 12 * 32 * 32 * 128 * 4096
    config = llama_config(load_recipe(REPO_ROOT / "recipes/llama-7b/pretrain.yaml"))
    assert flops_per_token(config, 4096) == expected
    assert round(expected / 1e9, 2) == 46.87


@pytest.mark.parametrize("kv_heads,tied", [(4, False), (2, True)])
def test_flops_per_token_matches_torch_flop_counter(kv_heads, tied):
    """torch's FlopCounterMode counts every matmul of a real forward + backward (eager attention, so the
    score and value products are plain bmm it sees). Grouped-query attention and a tied head included."""
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=tied,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    batch, seq = 2, 32
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    assert flops_per_token(config, seq) * batch * seq == counter.get_total_flops()


def test_cpu_peak_is_measured_once_per_process(monkeypatch):
    peak, label = peak_flops_per_device(torch.device("cpu"))
    assert 1e8 < peak < 1e14  # anything from a slow VM core to a big server
    assert label.startswith("cpu (measured fp32 matmul")

    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(flops.torch, "matmul", fail)
    assert peak_flops_per_device(torch.device("cpu"))[0] == peak


@pytest.mark.parametrize(
    "name,expected",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("Tesla V100-SXM2-32GB", 125e12),
    ],
)
def test_gpu_peak_from_the_table_by_device_name(monkeypatch, name, expected):
    """The longest matching key wins: an A100 is not an A10, an L40S not an L4."""
    monkeypatch.setattr(flops.torch.cuda, "get_device_name", lambda device=None: name)
    peak, label = peak_flops_per_device(torch.device("cuda", 0))
    assert peak == expected
    assert name in label and "datasheet" in label


def test_gpu_kind_for_the_planner():
    assert peak_flops_for_kind("H100") == 989e12
    with pytest.raises(UserError, match=r"--gpu-kind: unknown GPU kind 'x100'; known kinds: .*h100"):
        peak_flops_for_kind("x100")


def test_a_classification_head_counts_its_labels_not_the_vocabulary():
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    lm, classifier = flops_per_token(config, 32), flops_per_token(config, 32, head_width=3)
    assert lm - classifier == 6 * 64 * (1000 - 3)
