"""The speed switches (model.compile, model.attn_implementation, model.liger_kernel, model.fp8, fused AdamW): each one
that runs on a CPU gives the plain path's loss and gradients; each one that needs a GPU or a package is refused with
its fix, on this machine and on described ones (lmtrain/model/speed.py)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmtrain.config.finetune import FinetuneRecipe
from lmtrain.config.recipe import RecipeError, load_recipe
from lmtrain.data.packing import document_labels
from lmtrain.errors import UserError
from lmtrain.model.llama import build_model, llama_config
from lmtrain.model.speed import Machine, check_speed_switches, fp8_layer, machine_problems
from lmtrain.training.distributed import make_accelerator
from tests.conftest import REPO_ROOT

SMOKE = REPO_ROOT / "recipes/smoke/pretrain.yaml"
SFT = REPO_ROOT / "recipes/smoke/sft.yaml"
TINY = [
    "tokenizer.vocab_size=384",
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.intermediate_size=128",
    "data.seq_len=48",
]
H100 = Machine("NVIDIA H100 80GB HBM3", (9, 0), False, True, frozenset({"liger_kernel", "torchao", "triton"}))
A100 = Machine("NVIDIA A100-SXM4-80GB", (8, 0), False, True, frozenset({"triton"}))
CPU = Machine("", (0, 0), False, True, frozenset())


def tiny_recipe(*overrides: str):
    return load_recipe(SMOKE, [*TINY, *overrides])


def packed_batch(vocab: int = 384) -> dict[str, torch.Tensor]:
    """Two blocks of 48 tokens holding 3 and 2 documents: the 7B recipe's data path (data.document_masking)."""
    torch.manual_seed(1)
    input_ids = torch.randint(3, vocab, (2, 48))
    position_ids = torch.cat([torch.arange(n) for n in (20, 17, 11, 30, 18)]).reshape(2, 48)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": document_labels(input_ids, position_ids)}


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_compile_gives_the_plain_loss_and_gradients_and_keeps_the_state_dict_names():
    """torch.compile (inductor, CPU) of a tiny model with activation checkpointing and document masking: the loss
    within 1e-5 and every gradient within 1e-4 of the same weights run eagerly. fp32; the tolerance covers
    inductor's reordered reductions."""
    torch._dynamo.reset()
    recipe = tiny_recipe("model.compile=true", "model.gradient_checkpointing=true")
    config = llama_config(recipe)
    torch.manual_seed(0)
    compiled = build_model(recipe, config).train()
    plain = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).train()
    plain.load_state_dict(compiled.state_dict())  # same names: compiling in place renamed nothing
    assert list(compiled.state_dict()) == list(plain.state_dict())
    batch = packed_batch()
    (loss_c, grads_c), (loss_p, grads_p) = loss_and_grads(compiled, batch), loss_and_grads(plain, batch)
    assert compiled.model.layers[0]._compiled_call_impl is not None  # the layer did run compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(loss_c, loss_p, rtol=1e-5, atol=1e-5)
    for name, grad in grads_p.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert grads_p["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0  # gradients are not trivially zero


def test_flex_attention_keeps_documents_apart_as_if_each_ran_alone():
    """FlexAttention's document block mask (built by transformers from position_ids) on CPU, forward only (torch
    has no FlexAttention backward on CPU): each document's logits in a packed block equal the document run alone
    through sdpa with the same weights (within 1e-5), the loss equals sdpa's packed loss, and the same block without
    position_ids (one long document) differs, so the mask is what makes them equal."""
    config = llama_config(tiny_recipe())
    torch.manual_seed(0)
    flex = AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention").eval()
    sdpa = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(flex.state_dict())
    batch = packed_batch()
    with torch.no_grad():
        packed = flex(**batch, use_cache=False)
        unmasked = sdpa(input_ids=batch["input_ids"], use_cache=False).logits
        for row, lengths in enumerate(((20, 17, 11), (30, 18))):
            start = 0
            for n in lengths:
                alone = sdpa(input_ids=batch["input_ids"][row : row + 1, start : start + n], use_cache=False).logits
                torch.testing.assert_close(packed.logits[row, start : start + n], alone[0], rtol=1e-4, atol=1e-5)
                start += n
        torch.testing.assert_close(packed.loss, sdpa(**batch, use_cache=False).loss, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(packed.logits[0, 20:37], unmasked[0, 20:37], atol=1e-3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.attn_implementation=flex_attention"], "flex_attention trains only on a CUDA GPU"),
        (["model.attn_implementation=flash_attention_2"], "pip install flash-attn"),
        (["model.liger_kernel=true"], "model.liger_kernel: Liger's kernels are Triton GPU kernels"),
        (["model.fp8=true", "model.compile=true"], "model.fp8: FP8 matmuls need a CUDA GPU of compute capability 8.9"),
    ],
)
def test_gpu_only_switches_are_refused_on_this_cpu_before_any_weights(overrides, message):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal is for machines without one")
    recipe = tiny_recipe(*overrides)  # the recipe itself is valid: --plan works for it anywhere
    with pytest.raises(UserError, match=message):
        build_model(recipe, llama_config(recipe))


def test_several_refusals_come_in_one_message():
    m = tiny_recipe("model.liger_kernel=true", "model.fp8=true", "model.compile=true").model
    problems = machine_problems(m, CPU)
    assert [p.split(":")[0] for p in problems] == ["model.liger_kernel", "model.fp8"]
    if not torch.cuda.is_available():
        with pytest.raises(UserError) as raised:
            check_speed_switches(m)
        assert "model.liger_kernel" in str(raised.value) and "model.fp8" in str(raised.value)


def test_what_each_gpu_honours():
    fp8 = tiny_recipe("model.fp8=true", "model.compile=true").model
    liger = tiny_recipe("model.liger_kernel=true").model
    assert machine_problems(fp8, H100) == []
    assert machine_problems(liger, H100) == []
    (old,) = [p for p in machine_problems(fp8, A100) if "capability" in p]
    assert "A100" in old and "8.0" in old and "8.9" in old
    assert machine_problems(fp8, A100)[-1] == "model.fp8: pip install torchao (or set model.fp8=false)"
    assert machine_problems(liger, A100) == [
        "model.liger_kernel: pip install liger-kernel (or set model.liger_kernel=false)"
    ]
    zero3 = Machine(H100.gpu, H100.capability, True, True, H100.packages)
    (refused,) = machine_problems(liger, zero3)
    assert "ZeRO-3" in refused and "ZeRO-2" in refused
    assert machine_problems(liger, zero3, causal_lm=False) == []  # a classifier's loss is not Liger's fused one
    no_triton = Machine(H100.gpu, H100.capability, False, True, frozenset())
    assert "triton" in machine_problems(tiny_recipe("model.compile=true").model, no_triton)[0]
    no_compiler = Machine("", (0, 0), False, False, frozenset())
    assert "C++ compiler" in machine_problems(tiny_recipe("model.compile=true").model, no_compiler)[0]


@pytest.mark.parametrize("path, schema", [(SMOKE, None), (SFT, FinetuneRecipe)])
def test_fp8_without_compile_is_a_recipe_error(path, schema):
    kwargs = {"schema": schema} if schema else {}
    with pytest.raises(RecipeError, match=r"model\.fp8: torchao's float8 matmuls need model\.compile=true"):
        load_recipe(path, ["model.fp8=true"], **kwargs)
    assert load_recipe(path, ["model.fp8=true", "model.compile=true"], **kwargs).model.fp8


def test_an_unknown_attention_implementation_names_the_choices():
    with pytest.raises(RecipeError, match="'flex_attention', 'flash_attention_2'"):
        tiny_recipe("model.attn_implementation=flex")


def test_fp8_converts_the_decoder_linear_layers_but_not_the_lm_head():
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llama_config(tiny_recipe()))
    chosen = [name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and fp8_layer(mod, name)]
    assert len(chosen) == 2 * 7 and "lm_head" not in chosen  # q, k, v, o, gate, up, down in each of 2 layers
    assert not fp8_layer(torch.nn.Linear(64, 100, device="meta"), "model.layers.0.mlp.up_proj")  # 100 % 16 != 0


def test_a_compile_set_by_the_accelerate_config_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    with pytest.raises(UserError, match="model.compile decides"):
        make_accelerator(tiny_recipe())
