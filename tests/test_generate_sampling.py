"""generate.py's sampling flags on a tiny random model: --seed makes sampled text reproducible whatever ran
before, and --repetition-penalty keeps greedy decoding from repeating tokens."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.test_finetune import make_base_model, run_generate

PROMPT = "def fibonacci(n):"
SAMPLING = ("--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--max-new-tokens", "24")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base") / "model")


def sample(monkeypatch, capfd, model: Path, *args: str) -> str:
    torch.manual_seed(torch.seed())  # whatever state the previous run left: only --seed may decide
    run_generate(monkeypatch, model, "--prompt", PROMPT, *args)
    out = capfd.readouterr().out
    assert PROMPT in out, out
    return out.split(PROMPT, 1)[1]


def test_the_same_seed_gives_the_same_text_and_another_seed_other_text(model, monkeypatch, capfd):
    first = sample(monkeypatch, capfd, model, *SAMPLING, "--seed", "7")
    assert sample(monkeypatch, capfd, model, *SAMPLING, "--seed", "7") == first
    others = {sample(monkeypatch, capfd, model, *SAMPLING, "--seed", str(seed)) for seed in (8, 9)}
    assert first not in others and len(first.strip()) > 0


def test_repetition_penalty_stops_greedy_decoding_from_repeating_tokens(model, monkeypatch, capfd):
    from lmtrain.inference.generation import SamplingSettings

    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt")

    def new_tokens(settings: SamplingSettings) -> list[int]:
        with torch.no_grad():
            output = lm.generate(**inputs, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
        return output[0, inputs["input_ids"].shape[1] :].tolist()

    plain = new_tokens(SamplingSettings(max_new_tokens=16))
    assert len(set(plain)) < len(plain)  # the random model loops when nothing stops it
    penalised = new_tokens(SamplingSettings(max_new_tokens=16, repetition_penalty=1000.0))
    # Every seen token's logit is divided (or, when negative, multiplied) by 1000: none comes back.
    assert len(set(penalised)) == len(penalised) and not set(inputs["input_ids"][0].tolist()) & set(penalised)

    # The flag reaches these settings: the header says so, and the text is the penalised tokens'.
    run_generate(monkeypatch, model, "--prompt", PROMPT, "--max-new-tokens", "16", "--repetition-penalty", "1000")
    out = capfd.readouterr().out
    assert out.startswith("--- greedy, repetition penalty 1000.0, 16 new tokens\n")
    assert f"{PROMPT}{tokenizer.decode(penalised, skip_special_tokens=True)}\n" in out
