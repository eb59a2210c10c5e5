"""Fine-tuning on tiny models, on CPU: SFT masks and runs, chat through the exported template, classification
against the majority baseline with the best checkpoint, freezing, LoRA merge parity, metric modules, and every
bad input the issue lists. The base "pretrained" model is built here (hidden 64, 2 layers, vocab 512)."""

import json
import random
import re
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch
import yaml
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from generate import main as generate_main  # the entry point, run in-process
from lmtrain.config.finetune import FinetuneRecipe
from lmtrain.config.recipe import load_recipe
from lmtrain.corpus.records import Record
from lmtrain.data.packing import IGNORE_INDEX
from lmtrain.errors import UserError
from lmtrain.tokenizer.bpe import EOS_TOKEN, PAD_TOKEN, RESERVED_TOKEN, bpe_trainer, new_tokenizer
from tests.conftest import REPO_ROOT, run_cli

VOCAB = ["cat", "dog", "horse", "cow", "apple", "pear", "banana", "grape", "hammer", "saw", "drill", "wrench"]
CLASSES = {"animal": VOCAB[0:4], "fruit": VOCAB[4:8], "tool": VOCAB[8:12]}
FILLER = ["the", "a", "I", "saw", "one", "near", "today", "and", "with", "this", "very", "big", "small", "old"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]


# ---------------------------------------------------------------------------- fixtures


def make_base_model(out: Path, vocab_size: int = 512, extra_texts: tuple[str, ...] = ()) -> Path:
    """A tiny "pretrained" Llama with this project's tokenizer design (ChatML tokens reserved, no template);
    `extra_texts` join the tokenizer's training text (e.g. Chinese, so that it learns Chinese tokens)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8") for p in sorted(root.glob("*.py"))[:25]]
    texts += [" ".join(VOCAB + FILLER + COLORS)] * 20 + ["What is 3 plus 4? The sum is 7. Repeat the word red."] * 20
    texts += list(extra_texts)
    backend = new_tokenizer()
    backend.train_from_iterator(texts, bpe_trainer(vocab_size, 2))
    backend.add_special_tokens([RESERVED_TOKEN.format(i) for i in range(vocab_size - backend.get_vocab_size())])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base") / "model")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            a, b = rng.randrange(10), rng.randrange(10)
            rows.append({"prompt": f"What is {a} plus {b}?", "completion": f"The sum is {a + b}."})
        else:
            color = rng.choice(COLORS)
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": f"Repeat the word {color}."},
                        {"role": "assistant", "content": f"{color} {color}"},
                    ]
                }
            )
    return rows


def classify_rows(n: int, seed: int = 1) -> list[dict]:
    """Imbalanced (50/30/20) keyword classes: the label is told by which words occur, anywhere in the text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choices(list(CLASSES), weights=[0.5, 0.3, 0.2])[0]
        words = rng.choices(FILLER, k=rng.randint(3, 8))
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(CLASSES[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def recipe(tmp_path: Path, base: Path, task: str, train_files: list[Path], **sections) -> FinetuneRecipe:
    raw = {
        "run_dir": str(tmp_path / "run"),
        "base_model": str(base),
        "task": task,
        "data": {
            "source": "files",
            "train_files": [str(p) for p in train_files],
            "validation_fraction": 0.2,
            "max_length": 64,
        },
        "train": {
            "max_steps": 20,
            "global_batch_size": 16,
            "micro_batch_size": 16,
            "lr": 3.0e-3,
            "warmup_steps": 2,
            "eval_every": 10,
            "eval_batches": 0,
            "log_every": 10,
            "checkpoint_every": 0,
            "weight_decay": 0.0,
        },
        "sft": {"eval_max_new_tokens": 16},  # the answers here are short; max_length 64 holds the prompts
    }
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_recipe(path, [], schema=FinetuneRecipe)


def fit_task(r: FinetuneRecipe):
    from lmtrain.training.loop import fit

    if r.task == "sft":
        from lmtrain.finetune.sft import SftTask

        task = SftTask(r)
    else:
        from lmtrain.finetune.classify import ClassifyTask

        task = ClassifyTask(r)
    return task, fit(r, task)


def evals(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "eval_loss" in line]


# ---------------------------------------------------------------------------- SFT


def test_assistant_mask_token_by_token(base):
    """Only the assistant's answers and their <|im_end|> are labels; the expected mask is built here by
    tokenizing each piece of the ChatML rendering separately."""
    from lmtrain.finetune.sft import setup_chat_template, tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(base)
    stops, added = setup_chat_template(tokenizer, "auto")
    assert added == 0 and stops == [3, 0]  # <|im_end|>, <|endoftext|>
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "The sum is 7."},
        {"role": "user", "content": "Repeat the word red."},
        {"role": "assistant", "content": "red red"},
    ]
    d = FinetuneRecipe().data
    data, report = tokenize_conversations(tokenizer, [Record("x.jsonl:1", {"messages": messages})], d)
    ids, trained = data.example(0)

    def enc(text):
        return tokenizer.encode(text, add_special_tokens=False)

    expected_ids, expected_mask = [], []
    for m in messages:
        head, body, end, newline = enc(f"<|im_start|>{m['role']}\n"), enc(m["content"]), enc("<|im_end|>"), enc("\n")
        answer = m["role"] == "assistant"
        expected_ids += head + body + end + newline
        expected_mask += [False] * len(head) + [answer] * (len(body) + len(end)) + [False] * len(newline)
    assert ids.tolist() == expected_ids
    assert trained.tolist() == expected_mask
    assert enc("<|im_end|>") == [3] and sum(expected_mask) == len(enc("The sum is 7.")) + len(enc("red red")) + 2
    # The template stored in the tokenizer renders exactly what was trained on.
    assert tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False) == expected_ids
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_padded_and_packed_batches_label_the_same_tokens_and_give_the_same_loss(base, tmp_path):
    from lmtrain.finetune.sft import REAL_TOKENS, SftTask, model_inputs

    train = write_jsonl(tmp_path / "sft.jsonl", sft_rows(40))
    r = recipe(tmp_path, base, "sft", [train], data__packing=True, data__max_length=128)
    task = SftTask(r)
    assert len(task.rows) < len(task.train_data)  # several examples per row
    row = task.rows[0]
    packed = task.batch(np.array([0]))
    padded = task._padded(task.train_data, row)
    lengths = task.train_data.lengths()[row]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    positions = packed["position_ids"][0].tolist()
    assert all(positions[s] == 0 for s in starts)  # positions restart at every example
    labels = packed["labels"][0]
    assert (labels[labels != IGNORE_INDEX]).tolist() == padded["labels"][padded["labels"] != IGNORE_INDEX].tolist()
    assert int(packed[REAL_TOKENS]) == int(lengths.sum()) == int(padded[REAL_TOKENS])
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        count = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
        # Per-example means, weighted by tokens, against one mean over the packed row: the same tokens
        # predicted from the same context (attention stays inside each example).
        per_example = (
            sum(
                model(**model_inputs(task._padded(task.train_data, np.array([i])))).loss.item()
                * int((task._padded(task.train_data, np.array([i]))["labels"][:, 1:] != IGNORE_INDEX).sum())
                for i in row.tolist()
            )
            / count
        )
        assert model(**model_inputs(packed)).loss.item() == pytest.approx(per_example, rel=1e-4)


def run_generate(monkeypatch, *args) -> None:
    """generate.py's entry point, in-process (the CLI wrapper is exercised by test_cli_reports_bad_input...)."""
    monkeypatch.setattr(sys, "argv", ["generate.py", *map(str, args)])
    generate_main()


def test_sft_run_lowers_validation_loss_and_the_export_answers_through_its_chat_template(
    base, tmp_path, capfd, monkeypatch
):
    train = write_jsonl(tmp_path / "sft.jsonl", sft_rows(120))
    r = recipe(tmp_path, base, "sft", [train], train__max_steps=40, train__eval_every=20)
    fit_task(r)
    assert "trainable parameters: 164,672 of 164,672 (100.00%) | full fine-tuning" in capfd.readouterr().err
    losses = [e["eval_loss"] for e in evals(r.run_dir)]
    assert len(losses) == 3 and losses[-1] < losses[0] - 1.5
    final = Path(r.run_dir) / "final"
    assert (final / "chat_template.jinja").is_file() and (final / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    assert model.generation_config.eos_token_id == [3, 0]
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 5?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert output[-1].item() == 3, tokenizer.decode(output)  # stopped at <|im_end|>
    assert tokenizer.decode(output, skip_special_tokens=True).startswith("The sum is")

    # generate.py: chat mode streams the reply; batch mode writes JSONL with the sampling settings.
    run_generate(monkeypatch, final, "--chat", "--prompt", "What is 2 plus 5?", "--max-new-tokens", "24")
    chat = capfd.readouterr().out
    assert "user> What is 2 plus 5?\nassistant> The sum is" in chat and "<|im_end|>" not in chat
    write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": 7, "prompt": "What is 1 plus 1?"}, {"messages": [{"role": "user", "content": "Repeat the word red."}]}],
    )
    run_generate(
        monkeypatch,
        final,
        "--chat",
        "--input",
        tmp_path / "in.jsonl",
        "--output",
        tmp_path / "out.jsonl",
        "--temperature",
        "0.7",
        "--top-k",
        "5",
        "--seed",
        "3",
        "--max-new-tokens",
        "8",
    )
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out[0]["id"] == 7 and isinstance(out[1]["completion"], str)
    assert out[0]["settings"] == {
        "max_new_tokens": 8,
        "temperature": 0.7,
        "top_k": 5,
        "top_p": 1.0,
        "seed": 3,
        "repetition_penalty": 1.0,
        "do_sample": True,
    }
    # Interactive chat: one message per line, /reset, end of input quits.
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("What is 4 plus 4?\n/reset\n"))
    run_generate(monkeypatch, final, "--chat", "--max-new-tokens", "12")
    assert "assistant> The sum is" in capfd.readouterr().out


def reference_answers(model_dir: Path, rows: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy answers of the exported model to each row's conversation without its last answer, one prompt at a
    time through plain transformers: the independent expectation for the in-loop generation check."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    answers = []
    for row in rows:
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        messages = [m for m in messages if m["role"] != "assistant"]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def answer_of(row: dict) -> str:
    return row["completion"] if "completion" in row else row["messages"][-1]["content"]


def test_sft_generation_check_scores_the_greedy_answers_of_the_model(base, tmp_path):
    rows = sft_rows(130, seed=3)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:120])
    val = write_jsonl(tmp_path / "val.jsonl", rows[120:])  # 10 conversations; 8 are checked, in file order
    r = recipe(
        tmp_path, base, "sft", [train], data__validation_files=[str(val)], train__max_steps=40,
        train__eval_every=20, sft__eval_generations=8, sft__eval_max_new_tokens=12, sft__eval_batch_size=3,
    )  # fmt: skip
    task, _ = fit_task(r)
    assert "generation check: 8 validation answers, greedy, ≤12 new tokens" in task.describe()
    first, last = evals(r.run_dir)[0], evals(r.run_dir)[-1]

    answers = reference_answers(Path(r.run_dir) / "final", rows[120:128], max_new_tokens=12)
    references = [answer_of(row) for row in rows[120:128]]
    matches = [" ".join(a.split()) == " ".join(b.split()) for a, b in zip(answers, references)]
    assert last["exact_match"] == pytest.approx(sum(matches) / 8)
    assert last["chrf"] == pytest.approx(sacrebleu.metrics.CHRF().corpus_score(answers, [references]).score)
    assert last["chrf"] > first["chrf"] + 30, (first, last)  # measured 4.9 → 48.8: "The sum is 10." for "… 14."
    written = [
        json.loads(line) for line in (Path(r.run_dir) / "eval_answers/step0000040.jsonl").read_text().splitlines()
    ]
    assert [w["answer"] for w in written] == answers and [w["reference"] for w in written] == references


def test_chat_needs_a_chat_template(base, monkeypatch):
    with pytest.raises(UserError, match=r"has no chat template, so it cannot chat.*task: sft"):
        run_generate(monkeypatch, base, "--chat", "--prompt", "hi")


# ---------------------------------------------------------------------------- classification


def test_classification_beats_the_majority_baseline_and_exports_the_best_checkpoint(base, tmp_path):
    from lmtrain.inference.generation import classify_texts

    rows = classify_rows(400)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:320])
    val = write_jsonl(tmp_path / "val.jsonl", rows[320:])
    r = recipe(
        tmp_path,
        base,
        "classify",
        [train],
        data__validation_files=[str(val)],
        data__max_length=32,
        train__max_steps=30,
        train__best_metric="accuracy",
    )
    task, result = fit_task(r)
    held_out = rows[320:]
    majority = max(CLASSES, key=lambda c: sum(row["label"] == c for row in rows[:320]))
    baseline = np.mean([row["label"] == majority for row in held_out])
    assert task.majority_baseline() == (majority, pytest.approx(baseline))
    records = evals(r.run_dir)
    best = max(records, key=lambda e: e["accuracy"])  # the first of equal values wins
    assert (result.best_step, result.best_value) == (best["step"], best["accuracy"])
    assert result.best_value > baseline + 0.3

    model = AutoModelForSequenceClassification.from_pretrained(Path(r.run_dir) / "best").eval()
    tokenizer = AutoTokenizer.from_pretrained(Path(r.run_dir) / "best")
    assert model.config.id2label == {0: "animal", 1: "fruit", 2: "tool"}
    predictions = classify_texts(model, tokenizer, [row["text"] for row in held_out])
    accuracy = np.mean([p["label"] == row["label"] for p, row in zip(predictions, held_out)])
    assert accuracy == pytest.approx(result.best_value)  # best/ is the checkpoint that scored it
    assert all(sum(p["probabilities"].values()) == pytest.approx(1.0) for p in predictions)


def test_class_weights_enter_the_loss(base, tmp_path):
    from lmtrain.finetune.classify import ClassifyTask

    train = write_jsonl(tmp_path / "train.jsonl", classify_rows(60))
    r = recipe(tmp_path, base, "classify", [train], classify__balance_classes=True)
    task = ClassifyTask(r)
    counts = np.array(task.train_counts)
    assert task.class_weights.tolist() == pytest.approx((counts.sum() / (3 * counts)).tolist())
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 0, 0, 1, 2, 2])

    class Fixed(torch.nn.Module):
        def forward(self, **_):
            return type("Out", (), {"logits": logits})

    w = task.class_weights[labels]
    expected = (torch.nn.functional.cross_entropy(logits, labels, reduction="none") * w).sum() / w.sum()
    loss = task.loss(Fixed(), {"input_ids": torch.zeros(6, 2, dtype=torch.long), "labels": labels})
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_metric_modules_load_offline_with_evaluate(tmp_path):
    import evaluate

    predictions, references = [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]
    accuracy = evaluate.load(str(REPO_ROOT / "lmtrain/finetune/metrics/accuracy"), keep_in_memory=True)
    f1 = evaluate.load(str(REPO_ROOT / "lmtrain/finetune/metrics/macro_f1"), keep_in_memory=True)
    assert accuracy.compute(predictions=predictions, references=references)["accuracy"] == pytest.approx(5 / 7)
    # per class: 0: tp 1 fp 1 fn 1 → 0.5; 1: tp 2 fp 0 fn 1 → 0.8; 2: tp 2 fp 1 fn 0 → 0.8
    result = f1.compute(predictions=predictions, references=references)
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert f1.compute(predictions=[0, 0], references=[0, 0], num_labels=2)["macro_f1"] == pytest.approx(0.5)

    exact = evaluate.load(str(REPO_ROOT / "lmtrain/finetune/metrics/exact_match"), keep_in_memory=True)
    chrf = evaluate.load(str(REPO_ROOT / "lmtrain/finetune/metrics/chrf"), keep_in_memory=True)
    answers, references = [" The sum is\n7. ", "red", "The sum is 7"], ["The sum is 7.", "red red", "The sum is 7."]
    assert exact.compute(predictions=answers, references=references)["exact_match"] == pytest.approx(1 / 3)
    assert chrf.compute(predictions=["红色的猫"], references=["红色的猫"])["chrf"] == pytest.approx(100.0)
    # the module is sacrebleu's corpus-level chrF with its defaults
    expected = sacrebleu.metrics.CHRF().corpus_score(answers, [references]).score
    assert chrf.compute(predictions=answers, references=references)["chrf"] == pytest.approx(expected)
    assert 0 < expected < 100


# ---------------------------------------------------------------------------- freezing and LoRA


def test_freezing_keeps_frozen_weights_bit_identical_and_out_of_the_optimizer(base, tmp_path, capfd):
    from lmtrain.training.optim import decay_param_groups

    train = write_jsonl(tmp_path / "sft.jsonl", sft_rows(48))
    r = recipe(
        tmp_path,
        base,
        "sft",
        [train],
        freeze={"embeddings": True, "first_n_layers": 1},
        train__max_steps=3,
        train__eval_every=3,
    )
    task, _ = fit_task(r)
    before = load_file(base / "model.safetensors")
    after = load_file(Path(r.run_dir) / "final" / "model.safetensors")
    frozen = [k for k in before if k.startswith(("model.embed_tokens.", "model.layers.0."))]
    assert len(frozen) == 10
    for key in before:
        assert torch.equal(before[key], after[key]) == (key in frozen), key
    total = sum(t.numel() for t in before.values())
    trainable = total - sum(before[k].numel() for k in frozen)
    assert f"trainable parameters: {trainable:,} of {total:,}" in capfd.readouterr().err

    model = task.build_model()  # the optimizer's groups hold exactly the trainable parameters
    grouped = [p for group in decay_param_groups(model, 0.1) for p in group["params"]]
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    assert sum(p.numel() for p in grouped) == trainable

    r.freeze.embeddings, r.freeze.first_n_layers, r.freeze.all_but_head = False, 0, True
    probe = task.build_model()
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["lm_head.weight"]


def test_lora_train_merge_export_reload_gives_the_adapter_logits(base, tmp_path):
    from peft import PeftModel

    from lmtrain.finetune.base import merge_adapter

    train = write_jsonl(tmp_path / "sft.jsonl", sft_rows(48))
    r = recipe(
        tmp_path,
        base,
        "sft",
        [train],
        lora={"enabled": True, "r": 4, "alpha": 8},
        train__max_steps=6,
        train__eval_every=6,
        train__lr=1.0e-2,
    )
    fit_task(r)
    adapter = Path(r.run_dir) / "final"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    merged_dir = merge_adapter(adapter, tmp_path / "merged")
    x = torch.tensor([[2, 40, 41, 42, 43, 3, 2, 50, 51]])
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
        adapter_logits = unmerged(input_ids=x).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()  # plain transformers, no peft
        base_logits = AutoModelForCausalLM.from_pretrained(base).eval()(input_ids=x).logits
        torch.testing.assert_close(merged(input_ids=x).logits, adapter_logits, rtol=1e-5, atol=1e-5)
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # the adapter changed the model
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template
    assert not any(k for k in load_file(merged_dir / "model.safetensors") if "lora" in k)

    # merge never replaces what it reads, nor an existing directory unless told to
    for out in (Path(r.run_dir), adapter, base):
        with pytest.raises(UserError, match="write the merged model to a new directory"):
            merge_adapter(adapter, out, overwrite=True)
    with pytest.raises(UserError, match="exists and is not empty.*--overwrite"):
        merge_adapter(adapter, merged_dir)
    assert (Path(r.run_dir) / "metrics.jsonl").is_file() and (merged_dir / "model.safetensors").is_file()
    assert merge_adapter(adapter, merged_dir, overwrite=True) == merged_dir


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_lora_in_bf16_training_holds_the_frozen_base_in_bf16_and_trains_in_fp32(base, tmp_path, monkeypatch, task):
    from lmtrain.finetune import base as finetuning
    from lmtrain.finetune.classify import ClassifyTask
    from lmtrain.finetune.sft import SftTask

    rows = sft_rows(24) if task == "sft" else classify_rows(24)
    r = recipe(tmp_path, base, task, [write_jsonl(tmp_path / "train.jsonl", rows)], lora={"enabled": True, "r": 4})
    assert finetuning.base_dtype(r) == torch.float32  # fp32 training here: nothing changes
    monkeypatch.setattr(finetuning, "resolve_precision", lambda setting: "bf16")  # bf16 training, as on a GPU
    assert finetuning.base_dtype(recipe(tmp_path, base, task, [tmp_path / "train.jsonl"])) == torch.float32  # no LoRA
    model = (SftTask if task == "sft" else ClassifyTask)(r).build_model()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert any("lora_A" in name for name in trainable)
    assert task == "sft" or any("score" in name for name in trainable)  # the new head trains, in fp32
    x = torch.randint(4, 500, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=x, labels=x if task == "sft" else torch.tensor([0, 1])).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
    assert all(p.grad is None for p in frozen)
    # ZeRO-3 does not autocast: there what trains matches the bf16 base, DeepSpeed holding the fp32 masters.
    monkeypatch.setattr(finetuning, "is_deepspeed_zero3_enabled", lambda: True)
    model = (SftTask if task == "sft" else ClassifyTask)(r).build_model()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------------------- bad input


def sft_error(tmp_path, base, rows, **sections) -> str:
    from lmtrain.finetune.sft import SftTask

    train = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = recipe(tmp_path, base, "sft", [train], data__validation_files=[str(train)], **sections)
    with pytest.raises(UserError) as error:
        SftTask(r)
    return str(error.value)


GOOD = {"prompt": "What is 1 plus 1?", "completion": "The sum is 2."}


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn, so nothing to learn"),
        (
            {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]},
            "roles out of order: message 0 is 'assistant' where 'user' was expected",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            },
            "roles out of order: message 1 is a system message; only the first",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            "ends with a 'user' turn that has no answer",
        ),
        (
            {"messages": [{"role": "human", "content": "a"}]},
            "message 0 has role 'human'; roles are system, user and assistant",
        ),
        ({"question": "a", "answer": "b"}, "no 'messages' column and no 'prompt'/'completion' pair"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_sft_records_are_named_with_file_and_line(base, tmp_path, bad, expected):
    message = sft_error(tmp_path, base, [GOOD, GOOD, bad, GOOD])
    assert f"bad.jsonl:3: {expected}" in message, message


def test_too_long_examples_are_truncated_or_skipped_and_counted(base, tmp_path):
    from lmtrain.finetune.sft import SftTask

    long = {"prompt": "word " * 200, "completion": "The sum is 2."}
    rows = [GOOD] * 10 + [long] * 3 + [{"prompt": "hi", "completion": "very " * 100}]
    train = write_jsonl(tmp_path / "sft.jsonl", rows)
    r = recipe(tmp_path, base, "sft", [train], data__validation_files=[str(train)])
    task = SftTask(r)  # the long prompts lose their answer to truncation; the long answer is cut
    assert "train: 11 examples, 4 truncated to 64 tokens, 3 left out: no answer token within 64 tokens" in task.report
    assert task.train_data.lengths().max() == 64
    r.data.too_long = "skip"
    assert "train: 10 examples, 4 longer than 64 tokens skipped" in SftTask(r).report


def test_bad_classification_data(base, tmp_path):
    from lmtrain.finetune.classify import ClassifyTask

    rows = classify_rows(20)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    r = recipe(tmp_path, base, "classify", [train], classify__labels=["animal", "fruit"])
    with pytest.raises(UserError, match=r"train.jsonl:\d+: label 'tool' is not in the label set"):
        ClassifyTask(r)
    single = write_jsonl(tmp_path / "single.jsonl", [{"text": "a cat", "label": 1}] * 10)
    r = recipe(tmp_path, base, "classify", [single], data__validation_files=[str(train)])
    with pytest.raises(UserError, match=r"the training data has a single class \(1\)"):
        ClassifyTask(r)
    missing = write_jsonl(tmp_path / "missing.jsonl", rows[:5] + [{"review": "a cat", "label": "animal"}])
    r = recipe(tmp_path, base, "classify", [missing])
    with pytest.raises(UserError, match=r"missing.jsonl:6: no text in column 'text' \(fields: 'review', 'label'\)"):
        ClassifyTask(r)
    table = tmp_path / "reviews.csv"  # an unquoted comma on line 3, a short row on line 5
    table.write_text("text,label\na cat,animal\nan apple, a pear,fruit\na dog,animal\na kiwi\n", encoding="utf-8")
    r = recipe(tmp_path, base, "classify", [table])
    with pytest.raises(UserError) as error:
        ClassifyTask(r)
    assert re.search(
        r"reviews.csv:3: 3 field\(s\) where the header has 2; quote fields that hold commas", str(error.value)
    )
    assert re.search(r"reviews.csv:5: 1 field\(s\) where the header has 2", str(error.value))


def test_base_model_must_be_a_causal_lm_directory(base, tmp_path):
    from lmtrain.finetune.base import check_base_model

    with pytest.raises(UserError, match="does not exist; pretrain first"):
        check_base_model(str(tmp_path / "nowhere"))
    classifier = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=2).save_pretrained(classifier)
    with pytest.raises(UserError, match="is a LlamaForSequenceClassification model, not a causal language model"):
        check_base_model(str(classifier))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="is a LoRA adapter, not a full model; merge it first"):
        check_base_model(str(tmp_path / "adapter"))


def test_cli_reports_bad_input_without_a_traceback(base, tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"messages": [{"role": "user", "content": "hi"}]}])
    recipe(tmp_path, base, "sft", [tmp_path / "bad.jsonl"], data__validation_files=[str(tmp_path / "bad.jsonl")])
    result = run_cli("finetune.py", tmp_path / "recipe.yaml", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(r"error: 1 bad record\(s\).*bad.jsonl:2: no assistant turn", result.stderr, re.S)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.best_metric=accuracy", "train.best_metric: 'accuracy' is not a metric of task sft"),
        ("lora.enabled=true", "freeze: LoRA already freezes every base weight"),
        ("classify.class_weights=[1.0,2.0]", "classify.class_weights: 2 weight(s) for 0 label(s)"),
        ("data.packing=maybe", "data.packing: expected bool"),
        ("data.too_lng=skip", "data.too_lng: unknown key; did you mean data.too_long?"),
        ("sft.eval_max_new_tokens=100000", "sft.eval_max_new_tokens: 100000 leaves no room for the prompt"),
        ("sft.eval_generations=-1", "sft.eval_generations: give 0 (off) or a number of conversations"),
    ],
)
def test_recipe_problems_are_reported_before_any_work(tmp_path, override, expected):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump({"task": "sft", "data": {"source": "python_stdlib"}, "freeze": {"embeddings": True}})
    )
    with pytest.raises(UserError) as error:
        load_recipe(path, [override], schema=FinetuneRecipe)
    assert expected in str(error.value)


FINETUNE_RECIPES = sorted(
    str(p.relative_to(REPO_ROOT / "recipes"))[: -len(".yaml")]
    for p in (REPO_ROOT / "recipes").rglob("*.yaml")
    if p.stem in ("sft", "classify")
)


def test_every_model_ships_both_finetune_recipes():
    assert {"smoke/sft", "smoke/classify", "llama-7b/sft", "llama-7b/classify"} <= set(FINETUNE_RECIPES)


@pytest.mark.parametrize("name", FINETUNE_RECIPES)
def test_shipped_recipes_load(name):
    r = load_recipe(REPO_ROOT / "recipes" / f"{name}.yaml", [], schema=FinetuneRecipe)
    assert r.task == name.split("/")[1]
    text = (REPO_ROOT / "recipes" / f"{name}.yaml").read_text()
    assert text.startswith("#") and "Launch:" in text and "Expected time:" in text


def test_stdlib_classification_data_is_real_code_with_package_labels():
    from lmtrain.corpus.records import stdlib_classify_records

    records = list(stdlib_classify_records(["json", "email"]))
    labels = {r.row["label"] for r in records}
    assert labels == {"json", "email"} and len(records) > 100
    assert all(r.where.startswith(("python_stdlib:json/", "python_stdlib:email/")) for r in records)
    assert all("def " in r.row["text"] for r in records)


def test_stdlib_sft_examples_pair_code_without_its_docstring_with_the_docstring_summary():
    import ast

    from lmtrain.corpus.records import stdlib_functions

    documented = [f for f in stdlib_functions(["json"]) if f.summary]
    assert len(documented) >= 5
    for f in documented:
        node = ast.parse(f.source).body[0]
        docstring = ast.get_docstring(node)
        assert f.summary == " ".join(docstring.split("\n\n")[0].split())
        assert docstring.splitlines()[0] not in f.code and f.code.lstrip().startswith(("def ", "async def ", "@"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--prompt", "hi", "--output", "out.jsonl"],
            "--output is batch mode's file out: pass the JSONL file in with --input",
        ),
        (["--prompt", "hi", "--system", "Be brief."], "--system is a chat setting: add --chat"),
    ],
)
def test_generate_refuses_flags_that_would_be_ignored(tmp_path, args, expected):
    result = run_cli("generate.py", tmp_path / "model", *args, check=False)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
