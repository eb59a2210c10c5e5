"""The optimizer and the learning-rate schedules (lmtrain/training/optim.py): parameter groups, decoupled
weight decay, every schedule's value at its landmarks, and what a real training run applies and logs."""

import json
import math

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_with_min_lr_schedule_with_warmup

import lmtrain.training.loop as loop
from lmtrain.config.recipe import RecipeError, TrainConfig, load_recipe
from lmtrain.training.optim import build_optimizer, build_scheduler
from tests.conftest import run_cli

# ---------------------------------------------------------------------------- parameter groups


def tiny_model() -> torch.nn.Module:
    """A Llama with biases in its attention and MLP, a LayerNorm with a bias beside it, and frozen input
    embeddings; every parameter randomized away from its init, so decay of a zero bias or a unit norm shows."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
    )
    model = torch.nn.ModuleDict(
        {"llama": LlamaForCausalLM(config), "extra": torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8))}
    )
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(0.5, 1.5)
    model["llama"].model.embed_tokens.weight.requires_grad_(False)
    return model


def expected_groups(model: torch.nn.Module) -> tuple[set[str], set[str], set[str]]:
    """(decayed, not decayed, frozen) parameter names, by what each parameter is in its module."""
    decay, no_decay, frozen = set(), set(), set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}"
            if not param.requires_grad:
                frozen.add(full)
            elif name == "bias" or "norm" in type(module).__name__.lower():
                no_decay.add(full)
            elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                decay.add(full)
            else:
                raise AssertionError(f"{full}: a parameter this test does not classify")
    return decay, no_decay, frozen


def test_matrices_decay_and_norms_biases_do_not_and_frozen_parameters_are_left_out():
    model = tiny_model()
    decay, no_decay, frozen = expected_groups(model)
    assert "llama.model.layers.0.self_attn.q_proj.bias" in no_decay and "extra.1.bias" in no_decay
    assert "llama.model.norm.weight" in no_decay and "llama.model.layers.1.post_attention_layernorm.weight" in no_decay
    assert "llama.lm_head.weight" in decay and "llama.model.layers.0.mlp.down_proj.weight" in decay
    assert frozen == {"llama.model.embed_tokens.weight"}

    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.07))
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay_group, no_decay_group = optimizer.param_groups
    assert decay_group["weight_decay"] == 0.07 and no_decay_group["weight_decay"] == 0.0
    assert {name_of[id(p)] for p in decay_group["params"]} == decay
    assert {name_of[id(p)] for p in no_decay_group["params"]} == no_decay


def test_one_step_with_zero_gradients_shrinks_only_the_matrices_by_lr_times_weight_decay():
    model = tiny_model()
    lr, wd = 0.01, 0.1
    optimizer = build_optimizer(model, TrainConfig(lr=lr, weight_decay=wd))
    decay, no_decay, frozen = expected_groups(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    # Adam's own update is 0 / (0 + eps) = 0 with zero gradients: whatever changes is the decoupled decay.
    optimizer.step()
    after = dict(model.named_parameters())
    for name in decay:
        torch.testing.assert_close(after[name].detach(), before[name] * (1 - lr * wd), rtol=1e-6, atol=0)
    for name in no_decay | frozen:
        assert torch.equal(after[name].detach(), before[name]), name


# ---------------------------------------------------------------------------- schedules

LR, WARMUP, MAX_STEPS, MIN_RATIO = 0.01, 10, 110, 0.1


def lrs(schedule: str, decay_steps: int = 0, max_steps: int = MAX_STEPS) -> list[float]:
    """The learning rate after 0, 1, ..., max_steps scheduler steps."""
    t = TrainConfig(
        lr=LR,
        warmup_steps=WARMUP,
        max_steps=max_steps,
        min_lr_ratio=MIN_RATIO,
        schedule=schedule,
        decay_steps=decay_steps,
    )
    optimizer = build_optimizer(torch.nn.Linear(2, 2), t)
    scheduler = build_scheduler(optimizer, t)
    values = [scheduler.get_last_lr()[0]]
    for _ in range(max_steps):
        optimizer.step()  # no gradients: no update, but torch expects it before the scheduler's step
        scheduler.step()
        values.append(scheduler.get_last_lr()[0])
    return values


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_every_schedule_warms_up_linearly_from_zero(schedule):
    values = lrs(schedule)
    assert values[0] == 0.0
    assert values[5] == pytest.approx(0.005)
    assert values[WARMUP] == pytest.approx(0.01)


def test_cosine_values_and_its_floor():
    values = lrs("cosine")
    # 100 steps after the warmup: progress p = (step - 10) / 100, lr = 0.01 * (0.1 + 0.9 * (1 + cos(pi p)) / 2)
    assert values[60] == pytest.approx(0.0055)  # p = 1/2: 0.01 * (0.1 + 0.45)
    assert values[85] == pytest.approx(0.01 * (0.1 + 0.45 * (1 - math.sqrt(0.5))))  # p = 3/4
    assert values[110] == pytest.approx(0.001)  # lr x min_lr_ratio, not 0
    assert min(values[WARMUP:]) == pytest.approx(0.001)


def test_cosine_is_the_one_transformers_computes():
    """The schedule every run before train.schedule existed used: a resumed run must continue it unchanged."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=LR)
    reference = get_cosine_with_min_lr_schedule_with_warmup(optimizer, WARMUP, MAX_STEPS, min_lr_rate=MIN_RATIO)
    expected = [reference.get_last_lr()[0]]
    for _ in range(MAX_STEPS):
        optimizer.step()
        reference.step()
        expected.append(reference.get_last_lr()[0])
    assert lrs("cosine") == pytest.approx(expected, rel=1e-12)


def test_linear_values():
    values = lrs("linear")
    # lr = 0.01 * (1 - 0.9 p), p = (step - 10) / 100
    assert values[35] == pytest.approx(0.00775)  # p = 1/4
    assert values[60] == pytest.approx(0.0055)  # p = 1/2
    assert values[110] == pytest.approx(0.001)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_decay_steps():
    values = lrs("wsd", decay_steps=20)
    assert values[WARMUP:91] == pytest.approx([0.01] * 81)  # stable until the decay starts at 110 - 20 = 90
    # lr = 0.01 * (1 - 0.9 q), q = (step - 90) / 20
    assert values[95] == pytest.approx(0.00775)
    assert values[100] == pytest.approx(0.0055)
    assert values[110] == pytest.approx(0.001)


def test_wsd_decays_over_a_fifth_of_the_steps_by_default():
    values = lrs("wsd")  # decay_steps 0: 110 // 5 = 22 steps, from step 88
    assert values[88] == pytest.approx(0.01) and values[87] == pytest.approx(0.01)
    assert values[99] == pytest.approx(0.0055)  # q = 11/22
    assert values[110] == pytest.approx(0.001)


def test_a_wsd_checkpoint_of_the_stable_phase_extends_into_a_longer_run():
    """The scheduler's state in a checkpoint (JSON, as lmtrain/training/checkpoint.py stores it) holds its step,
    not its shape: resumed with a larger max_steps, the run stays at the peak and decays at its new end."""
    short = TrainConfig(lr=LR, warmup_steps=WARMUP, max_steps=MAX_STEPS, schedule="wsd", decay_steps=20)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), short)
    scheduler = build_scheduler(optimizer, short)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    saved = json.loads(json.dumps(scheduler.state_dict()))

    longer = TrainConfig(lr=LR, warmup_steps=WARMUP, max_steps=210, schedule="wsd", decay_steps=20)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), longer)
    resumed = build_scheduler(optimizer, longer)
    resumed.load_state_dict(saved)
    values = {}
    for step in range(51, 211):
        optimizer.step()
        resumed.step()
        values[step] = resumed.get_last_lr()[0]
    assert [values[s] for s in range(51, 191)] == pytest.approx([0.01] * 140)  # past the old decay start, 90
    assert values[200] == pytest.approx(0.0055)
    assert values[210] == pytest.approx(0.001)


# ---------------------------------------------------------------------------- recipe validation


def problems_of(tmp_path, overrides) -> list[str]:
    path = tmp_path / "recipe.yaml"
    path.write_text("train: {max_steps: 100, warmup_steps: 10}\n", encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


def test_an_unknown_schedule_names_the_key_and_every_choice(tmp_path):
    assert problems_of(tmp_path, ["train.schedule=cosin"]) == [
        "train.schedule: 'cosin' is not one of 'cosine', 'wsd', 'linear'; did you mean 'cosine'?"
    ]


def test_a_wsd_decay_longer_than_what_follows_the_warmup_is_an_error(tmp_path):
    assert problems_of(tmp_path, ["train.schedule=wsd", "train.decay_steps=91"]) == [
        "train.decay_steps: a decay of 91 steps does not fit after 10 warmup steps in 100; "
        "set train.decay_steps to at most 90"
    ]
    assert problems_of(tmp_path, ["train.schedule=wsd", "train.warmup_steps=85"]) == [
        "train.decay_steps: a decay of 20 steps (the default, a fifth of train.max_steps) does not fit after "
        "85 warmup steps in 100; set train.decay_steps to at most 15"
    ]
    recipe = load_recipe(tmp_path / "recipe.yaml", ["train.schedule=wsd", "train.decay_steps=90"])
    assert recipe.train.wsd_decay_steps() == 90


def test_decay_steps_without_wsd_is_an_error(tmp_path):
    assert problems_of(tmp_path, ["train.decay_steps=20"]) == [
        "train.decay_steps: only train.schedule=wsd has a decay phase (this recipe uses cosine); "
        "set train.schedule=wsd or train.decay_steps=0"
    ]


# ---------------------------------------------------------------------------- a real run

TINY = """
tokenizer: {vocab_size: 512, min_frequency: 2}
data:
  sources: [{kind: python_stdlib, max_documents: 150}]
  clean: {strip_html: false}
  seq_len: 64
  validation_fraction: 0.1
model: {hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 172}
train: {max_steps: 12, global_batch_size: 8, micro_batch_size: 4, lr: 3.0e-3, schedule: wsd, warmup_steps: 4,
        decay_steps: 4, min_lr_ratio: 0.1, grad_clip: 0.05, eval_every: 100, eval_batches: 1, log_every: 1,
        checkpoint_every: 0, precision: fp32}
"""
RUN_LR, RUN_CLIP = 3.0e-3, 0.05
SKIPPED_STEP = 2  # its loss is made NaN (the loop's fault injection): the step applies no update


def run_factor(step: int) -> float:
    """The tiny run's WSD by hand: warmup over 4 steps, stable, linear decay over steps 8..12 to 0.1."""
    if step < 4:
        return step / 4
    if step < 8:
        return 1.0
    return 1.0 - 0.9 * (step - 8) / 4


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Train the tiny recipe in-process, recording what the optimizer applies at each of its steps: the
    learning rate and the global L2 norm of the gradients it is handed (after clipping)."""
    from lmtrain.training.pretrain import PretrainTask

    root = tmp_path_factory.mktemp("optim")
    raw = yaml.safe_load(TINY)
    raw["run_dir"] = str(root / "run")
    raw["tokenizer"]["dir"] = str(root / "tokenizer")
    raw["data"]["dir"] = str(root / "data")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    run_cli("tokenizer/train_tokenizer.py", path)
    run_cli("data_prep/prepare.py", path)

    applied = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        applied.append({"lr": optimizer.param_groups[0]["lr"], "grad_norm": norm})

    def recording_optimizer(model, t):
        optimizer = build_optimizer(model, t)
        optimizer.register_step_pre_hook(record)
        return optimizer

    recipe = load_recipe(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "build_optimizer", recording_optimizer)
        mp.setenv("LMTRAIN_FAULT_NONFINITE_STEPS", str(SKIPPED_STEP))
        loop.fit(recipe, PretrainTask(recipe))
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in records if "lr" in r}
    return logged, applied, records


def test_the_run_logs_the_lr_each_step_applied(tiny_run):
    """The lr logged at step k is the rate step k applied, lr x factor(k - 1) (the scheduler steps after the
    optimizer, as in transformers: the first step of a warmup applies 0). A skipped (non-finite) step still
    steps the scheduler: it logs the rate it would have applied, and the schedule does not pause."""
    logged, _, records = tiny_run
    assert [r["step"] for r in records if r.get("event") == "skipped_nonfinite"] == [SKIPPED_STEP]
    assert sorted(logged) == list(range(1, 13))
    assert logged[1]["lr"] == 0.0
    assert logged[SKIPPED_STEP]["lr"] == pytest.approx(RUN_LR * 0.25)
    assert logged[3]["lr"] == pytest.approx(RUN_LR * 0.5)
    assert logged[5]["lr"] == pytest.approx(RUN_LR)
    assert logged[11]["lr"] == pytest.approx(RUN_LR * 0.55)
    assert [logged[k]["lr"] for k in range(1, 13)] == pytest.approx([RUN_LR * run_factor(k - 1) for k in range(1, 13)])


def test_the_run_applies_each_steps_lr_from_before_its_scheduler_step(tiny_run):
    """Step k updates with lr x factor(k - 1): the first step of a warmup applies 0, and no update is made at
    the skipped step."""
    _, applied, _ = tiny_run
    steps = [k for k in range(1, 13) if k != SKIPPED_STEP]
    assert [a["lr"] for a in applied] == pytest.approx([RUN_LR * run_factor(k - 1) for k in steps])
    assert applied[0]["lr"] == 0.0


def test_gradients_reach_the_optimizer_clipped_to_grad_clip(tiny_run):
    logged, applied, _ = tiny_run
    steps = [k for k in range(1, 13) if k != SKIPPED_STEP]
    assert len(applied) == len(steps)
    assert all(a["grad_norm"] <= RUN_CLIP * (1 + 1e-5) for a in applied), applied
    assert all(a["grad_norm"] > RUN_CLIP * 0.99 for a in applied), applied  # clipped to the limit, not to 0
    # metrics.jsonl logs the norm before clipping: far above the limit, so clipping did the work.
    assert all(logged[k]["grad_norm"] > 4 * RUN_CLIP for k in steps), [logged[k]["grad_norm"] for k in steps]
    assert logged[SKIPPED_STEP]["grad_norm"] is None
