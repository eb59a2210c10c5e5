"""The method, by hand: each formula of docs/method.md computed with plain torch ops and compared with what
transformers and torch compute for this repository's model, optimizer and schedule.

Tolerances (stated in docs/method.md too):
  FP32 = atol 1e-5, rtol 1e-5 for anything that goes through the model: transformers computes RMSNorm, the RoPE
         angles and the eager softmax in float32 whatever the model's dtype, so float64 would not buy precision.
  FP64 = atol 1e-12, rtol 1e-12 for what is float64 end to end: the SwiGLU MLP, AdamW, the schedule.
Each comparison also computes a deliberately wrong variant of the formula (no causal mask, no eps, no shift,
L2 instead of decoupled decay, ...) and checks that it misses the library's result by more than 100 x the
tolerance: a test that cannot tell the right formula from a wrong one fails.
"""

import math
import os
from functools import lru_cache
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import get_cosine_with_min_lr_schedule_with_warmup  # noqa: E402
from transformers.masking_utils import create_causal_mask  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.data.packing import IGNORE_INDEX, document_labels  # noqa: E402
from lmtrain.model.llama import build_model, llama_config  # noqa: E402
from lmtrain.training.optim import build_optimizer, build_scheduler, decay_param_groups  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

SEVEN_B = REPO_ROOT / "recipes/llama-7b/pretrain.yaml"
FP32 = {"atol": 1e-5, "rtol": 1e-5}
FP64 = {"atol": 1e-12, "rtol": 1e-12}
# The 7B recipe shrunk: hidden 32, 4 heads of head_dim 8, SwiGLU 64, one layer. rope_theta (500000) and
# rms_norm_eps (1e-5) stay the 7B recipe's.
TINY = [
    "tokenizer.vocab_size=384",  # the smallest the recipe loader accepts
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "model.num_heads=4",
    "model.max_position_embeddings=64",
    "data.seq_len=64",
]


def check(ours, theirs, tol, *wrong):
    """`ours` (by hand) matches `theirs` (the library); every wrong variant misses it by > 100 x atol."""
    torch.testing.assert_close(theirs, ours, **tol)
    for variant in wrong:
        gap = (torch.as_tensor(variant) - torch.as_tensor(theirs)).abs().max().item()
        assert gap > 100 * tol["atol"], f"a wrong formula is within {gap:.1e} of the library: the test is too weak"


@lru_cache
def tiny_recipe(attn="sdpa", kv_heads=2):
    return load_recipe(SEVEN_B, [*TINY, f"model.num_kv_heads={kv_heads}", f"model.attn_implementation={attn}"])


def tiny_model(attn="sdpa", kv_heads=2):
    """The repository's model (lmtrain.model.llama) with weights drawn so that activations are O(1): at the
    training initialisation (std 0.02) everything is so small that an absolute tolerance would prove little."""
    recipe = tiny_recipe(attn, kv_heads)
    model = build_model(recipe, llama_config(recipe))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm gains
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:  # embedding rows of std 1; linear maps of std 1/sqrt(fan_in)
                std = 1.0 if "embed" in name else p.shape[1] ** -0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


# ---- the formulas by hand -------------------------------------------------------------------------------------


def rms_norm(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope(x, positions, base, pairs="half"):
    """Rotate pair i of every head vector by positions * base**(-2i/d). transformers' Llama pairs dimension i
    with i + d/2 ("half"); the paper's notation pairs 2i with 2i+1 ("adjacent", a wrong variant here)."""
    d = x.shape[-1]
    theta = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    angle = positions.to(torch.float64)[..., None] * theta
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    if pairs == "half":
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


def softmax(z):
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def attention(attn, x, base, causal=True, scale=None, kv_map="block", pairs="half"):
    """softmax(Q K^T / sqrt(d) + M) V per head, then the output projection. Query head h reads key/value head
    h // (heads / kv_heads) (grouped-query attention; kv_map="modulo" is a wrong variant)."""
    b, s, _ = x.shape
    d = attn.head_dim
    positions = torch.arange(s)

    def heads(proj):
        return (x @ proj.weight.T).view(b, s, -1, d).transpose(1, 2)

    q = rope(heads(attn.q_proj), positions, base, pairs)
    k = rope(heads(attn.k_proj), positions, base, pairs)
    v = heads(attn.v_proj)
    group = q.shape[1] // k.shape[1]
    if kv_map == "block":
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    else:
        k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
    scores = q @ k.transpose(-1, -2) * (scale or d**-0.5)
    if causal:
        scores = scores + torch.full((s, s), -math.inf).triu(1)  # M[t, j] = -inf for j > t
    out = (softmax(scores) @ v).transpose(1, 2).reshape(b, s, -1)
    return out @ attn.o_proj.weight.T


def swiglu(mlp, x):
    silu = lambda z: z / (1 + torch.exp(-z))
    return (silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T


def decoder_layer(layer, x, base, eps, post_norm=False):
    if post_norm:  # wrong variant: the original Transformer's norm after the residual sum
        h = rms_norm(x + attention(layer.self_attn, x, base), layer.input_layernorm.weight, eps)
        return rms_norm(h + swiglu(layer.mlp, h), layer.post_attention_layernorm.weight, eps)
    h = x + attention(layer.self_attn, rms_norm(x, layer.input_layernorm.weight, eps), base)
    return h + swiglu(layer.mlp, rms_norm(h, layer.post_attention_layernorm.weight, eps))


def causal_lm(model, ids, **variant):
    c = model.config
    base, eps = c.rope_parameters["rope_theta"], c.rms_norm_eps
    h = model.model.embed_tokens.weight[ids]
    for layer in model.model.layers:
        h = decoder_layer(layer, h, base, eps, **variant)
    return rms_norm(h, model.model.norm.weight, eps) @ model.lm_head.weight.T


def tokens(shape, seed=1, vocab=384):
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def randn(*shape, seed=2, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- RMSNorm ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 3e-3])  # at 3e-3, mean(x^2) is of the order of eps = 1e-5
def test_rmsnorm(scale):
    eps = tiny_recipe().model.rms_norm_eps
    norm = LlamaRMSNorm(32, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * randn(32, seed=3))
    x = scale * (randn(2, 5, 32) + 0.5)  # a non-zero mean: RMSNorm does not subtract it, LayerNorm would
    g = norm.weight.detach()
    ours = rms_norm(x, g, eps)
    wrong = [
        (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * g,  # LayerNorm
        rms_norm(x, torch.ones_like(g), eps),  # no gain
    ]
    if scale < 1:
        wrong.append(x / torch.sqrt((x * x).mean(-1, keepdim=True)) * g)  # no eps
    check(ours, norm(x).detach(), FP32, *wrong)


# ---- RoPE -------------------------------------------------------------------------------------------------------


def test_rope():
    model = tiny_model()
    base = model.config.rope_parameters["rope_theta"]
    assert base == yaml.safe_load(SEVEN_B.read_text())["model"]["rope_theta"] == 500000.0
    q, k = randn(2, 4, 16, 8, seed=4), randn(2, 4, 16, 8, seed=5)
    positions = torch.arange(16)
    cos, sin = model.model.rotary_emb(q, positions[None])
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    wrong = [rope(q, positions, base, pairs="adjacent"), rope(q, positions, 10000.0), rope(q, -positions, base)]
    check(rope(q, positions, base), q_rot, FP32, *wrong)
    check(rope(k, positions, base), k_rot, FP32)


def test_rope_scores_depend_on_relative_position_only():
    """<R_m q, R_n k> = <R_(m+c) q, R_(n+c) k>: the property RoPE is built for, with the model's own RoPE."""
    model = tiny_model()
    q, k = randn(1, 1, 1, 8, seed=6).expand(1, 1, 40, 8), randn(1, 1, 1, 8, seed=7).expand(1, 1, 40, 8)
    cos, sin = model.model.rotary_emb(q, torch.arange(40)[None])
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    scores = q_rot[0, 0] @ k_rot[0, 0].T  # scores[m, n]
    for m, n, c in [(5, 2, 7), (9, 9, 30), (0, 3, 20)]:
        torch.testing.assert_close(scores[m + c, n + c], scores[m, n], **FP32)
    assert (scores[5, 2] - scores[5, 3]).abs() > 1e-3  # ... and it does depend on m - n


# ---- attention --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_causal_self_attention(attn, kv_heads):
    model = tiny_model(attn, kv_heads)
    layer = model.model.layers[0].self_attn
    base = model.config.rope_parameters["rope_theta"]
    x = randn(2, 12, 32, seed=8)
    positions = torch.arange(12)[None]
    mask = create_causal_mask(
        config=model.config, inputs_embeds=x, attention_mask=None, cache=None, position_ids=positions
    )  # sdpa: None (torch's is_causal=True builds it); eager: the additive 0 / -inf matrix
    with torch.no_grad():
        theirs, _ = layer(x, position_embeddings=model.model.rotary_emb(x, positions), attention_mask=mask)
        ours = attention(layer, x, base)
        wrong = [attention(layer, x, base, causal=False), attention(layer, x, base, scale=1 / 8)]
        wrong += [attention(layer, x, base, pairs="adjacent")]
        if kv_heads < 4:
            wrong.append(attention(layer, x, base, kv_map="modulo"))
    check(ours, theirs, FP32, *wrong)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_causality(attn):
    """Changing token 7 leaves the logits of positions 0..6 unchanged and changes those of 7.. ."""
    model = tiny_model(attn)
    ids = tokens((2, 12))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 384
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(b[:, :7], a[:, :7], **FP32)
    assert (b[:, 7:] - a[:, 7:]).abs().amax(-1).min() > 1e-3


# ---- SwiGLU -----------------------------------------------------------------------------------------------------


def test_swiglu():
    mlp = tiny_model().model.layers[0].mlp.double()
    x = randn(2, 5, 32, seed=9, dtype=torch.float64)
    with torch.no_grad():
        gelu = lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
        wrong = [
            (gelu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T,  # GeGLU
            (torch.sigmoid(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T,  # GLU
            (x @ mlp.gate_proj.weight.T * torch.sigmoid(x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T,  # swapped
        ]
        check(swiglu(mlp, x), mlp(x), FP64, *wrong)


# ---- the decoder layer and the whole model ----------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoder_layer(attn):
    model = tiny_model(attn)
    c = model.config
    layer = model.model.layers[0]
    x = randn(2, 12, 32, seed=10)
    positions = torch.arange(12)[None]
    mask = create_causal_mask(config=c, inputs_embeds=x, attention_mask=None, cache=None, position_ids=positions)
    with torch.no_grad():
        theirs = layer(x, attention_mask=mask, position_embeddings=model.model.rotary_emb(x, positions))
        base, eps = c.rope_parameters["rope_theta"], c.rms_norm_eps
        ours = decoder_layer(layer, x, base, eps)
        wrong = decoder_layer(layer, x, base, eps, post_norm=True)
    check(ours, theirs, FP32, wrong)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_whole_model_logits(attn):
    model = tiny_model(attn)
    ids = tokens((2, 16))
    with torch.no_grad():
        theirs = model(ids).logits
        ours = causal_lm(model, ids)
        wrong = causal_lm(model, ids, post_norm=True)
    assert ours.std() > 0.3  # O(1) logits, so that atol 1e-5 means something
    check(ours, theirs, FP32, wrong)


# ---- cross-entropy over next tokens -----------------------------------------------------------------------------


def test_next_token_cross_entropy():
    """Labels are the inputs (the pretraining task); the model shifts them. document_labels puts -100 on a
    document's first token when it starts inside the block, and those targets leave the mean."""
    model = tiny_model()
    ids = tokens((2, 16), seed=11)
    positions = torch.tensor([list(range(16)), [*range(5), *range(11)]])  # row 1: a document starts at 5
    labels = document_labels(ids, positions)
    assert (labels == IGNORE_INDEX).sum() == 1
    with torch.no_grad():
        out = model(ids, labels=labels)
    logits = out.logits.double()
    log_probs = logits - logits.max(-1, keepdim=True).values
    log_probs = log_probs - log_probs.exp().sum(-1, keepdim=True).log()

    def nll(predict_at, target):  # -log p(target) at each position, ignored targets dropped
        keep = target != IGNORE_INDEX
        return -log_probs[:, predict_at].gather(-1, target.clamp(min=0)[..., None])[..., 0][keep]

    terms = nll(slice(0, 15), labels[:, 1:])  # logits at t predict token t+1
    assert terms.numel() == 2 * 15 - 1
    ours = terms.mean().float()
    wrong = [
        nll(slice(0, 16), labels).mean(),  # no shift: predicting the token already seen
        terms.sum() / (2 * 15),  # ignored targets counted in the denominator
        nll(slice(0, 15), ids[:, 1:]).mean(),  # -100 not ignored
    ]
    check(ours, out.loss, FP32, *wrong)


# ---- AdamW ------------------------------------------------------------------------------------------------------


def seven_b_train():
    return SimpleNamespace(**yaml.safe_load(SEVEN_B.read_text())["train"])


def adamw_by_hand(params, grads, lr, betas, eps, wds, steps, coupled=False, bias_correction=True, eps_inside=False):
    """theta <- theta - lr*wd*theta (decoupled); m, v moving averages; m_hat = m/(1-b1^t), v_hat = v/(1-b2^t);
    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps). The keyword arguments select wrong variants."""
    b1, b2 = betas
    theta = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        for i, (g, wd) in enumerate(zip(grads[t - 1], wds, strict=True)):
            if coupled:
                g = g + wd * theta[i]  # L2 regularisation inside the gradient (Adam, not AdamW)
            else:
                theta[i] = theta[i] - lr * wd * theta[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            c1, c2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
            denom = torch.sqrt(v[i] / c2 + eps) if eps_inside else torch.sqrt(v[i] / c2) + eps
            theta[i] = theta[i] - lr * (m[i] / c1) / denom
    return theta


@pytest.mark.parametrize("impl", ["lmtrain.build_optimizer", "foreach", "fused"])
def test_adamw(impl):
    """The 7B recipe's lr, betas, eps and weight decay. The weight (a matrix) decays, the bias does not; the
    bias's gradients are ~1e-8, where eps's placement decides the step."""
    t = seven_b_train()
    assert (t.lr, tuple(t.adam_betas), t.adam_eps, t.weight_decay) == (3e-4, (0.9, 0.95), 1e-8, 0.1)
    torch.manual_seed(12)
    module = torch.nn.Linear(6, 4).double()
    start = [p.detach().clone() for p in module.parameters()]
    f64 = torch.float64
    grads = [[randn(4, 6, seed=13 + s, dtype=f64), 1e-8 * randn(4, seed=20 + s, dtype=f64)] for s in range(2)]
    if impl == "lmtrain.build_optimizer":  # fused wherever torch has the kernel: on CPU too
        opt = build_optimizer(module, t)
        assert opt.defaults["fused"]
    else:  # torch's other two implementations of the same update (fused also runs on CPU)
        groups = decay_param_groups(module, t.weight_decay)
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps, **{impl: True})
    hp = {"lr": t.lr, "betas": t.adam_betas, "eps": t.adam_eps, "wds": [t.weight_decay, 0.0]}
    for steps in (1, 2):
        for p, g in zip(module.parameters(), grads[steps - 1], strict=True):
            p.grad = g.clone()
        opt.step()
        ours = adamw_by_hand(start, grads, steps=steps, **hp)
        wrong = [
            adamw_by_hand(start, grads, steps=steps, coupled=True, **hp),
            adamw_by_hand(start, grads, steps=steps, bias_correction=False, **hp),
            adamw_by_hand(start, grads, steps=steps, eps_inside=True, **hp),
            adamw_by_hand(start, grads, steps=steps, **{**hp, "wds": [t.weight_decay] * 2}),  # bias decayed too
        ]
        flat = lambda tensors: torch.cat([x.detach().flatten() for x in tensors])
        check(flat(ours), flat(module.parameters()), FP64, *map(flat, wrong))


# ---- linear warmup + cosine decay to a floor --------------------------------------------------------------------


def lr_by_hand(step, peak, warmup, total, floor_ratio):
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_warmup_cosine_schedule():
    """lr after k scheduler steps, as the training loop steps it: optimizer step k+1 runs at lr(k)."""
    t = load_recipe(SEVEN_B, [*TINY, "train.schedule=cosine", "train.warmup_steps=10", "train.max_steps=100"]).train
    peak, w, total, rho = t.lr, t.warmup_steps, t.max_steps, t.min_lr_ratio
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=peak)
    scheduler = build_scheduler(opt, t)
    theirs = []
    for _ in range(total + 1):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    ours = [lr_by_hand(k, peak, w, total, rho) for k in range(total + 1)]
    wrong = [
        [lr_by_hand(k, peak, w, total, 0.0) for k in range(total + 1)],  # decay to 0, no floor
        [lr_by_hand(k + 1, peak, w, total, rho) for k in range(total + 1)],  # off by one step
        [lr_by_hand(k, peak, 0, total, rho) if k >= w else peak * k / w for k in range(total + 1)],  # cosine over T
    ]
    check(torch.tensor(ours), torch.tensor(theirs), FP64, *map(torch.tensor, wrong))
    assert theirs[0] == 0 and theirs[w] == peak and math.isclose(theirs[total], rho * peak, rel_tol=1e-12)

    # The same curve as transformers' get_cosine_with_min_lr_schedule_with_warmup (min_lr_rate = min_lr_ratio)
    hf = get_cosine_with_min_lr_schedule_with_warmup(opt, w, total, min_lr_rate=rho).lr_lambdas[0]
    check(torch.tensor(ours), torch.tensor([peak * hf(k) for k in range(total + 1)]), FP64)


def test_seven_b_schedule_landmarks():
    """The 7B recipe's own schedule: 0 -> 3e-4 over 2,000 steps, 3e-4 x 0.55 half-way, 3e-5 at 240,000."""
    t = load_recipe(SEVEN_B, ["train.schedule=cosine"]).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    factor = build_scheduler(opt, t).lr_lambdas[0]
    half = (t.warmup_steps + t.max_steps) // 2
    for step, expected in [(0, 0.0), (1000, 1.5e-4), (2000, 3e-4), (half, 0.55 * 3e-4), (240000, 3e-5)]:
        assert math.isclose(t.lr * factor(step), expected, rel_tol=1e-12, abs_tol=1e-18), step
        assert math.isclose(
            lr_by_hand(step, t.lr, t.warmup_steps, t.max_steps, t.min_lr_ratio), expected, rel_tol=1e-12
        )
