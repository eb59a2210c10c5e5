"""Fine-tuning on Chinese text, end to end: a base tokenizer that has learned Chinese tokens, a hotel-review
classifier that must beat the majority baseline, and an SFT export whose chat template renders Chinese
conversations exactly. The data is built here from fixed phrases."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from lmtrain.config.finetune import FinetuneRecipe
from lmtrain.corpus.records import Record
from tests.test_finetune import evals, fit_task, make_base_model, recipe, run_generate, write_jsonl

SUBJECTS = ["房间", "床单", "卫生间", "前台", "早餐", "服务", "空调", "位置"]
GOOD = ["干净", "很好", "热情", "舒服", "不错", "方便"]
BAD = ["很脏", "太差", "冷淡", "吵闹", "难用", "糟糕"]
OPENERS = ["这次入住，", "总体来说，", "酒店的", "", "说实话，"]


def reviews(n: int, seed: int = 0) -> list[dict]:
    """Balanced labels; the label is told by which adjectives occur, e.g. 房间干净，服务很好 / 房间很脏，服务太差."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "好评" if i % 2 else "差评"
        words = GOOD if label == "好评" else BAD
        clauses = [rng.choice(SUBJECTS) + rng.choice(words) for _ in range(rng.randint(2, 3))]
        rows.append({"text": rng.choice(OPENERS) + "，".join(clauses) + "。", "label": label})
    return rows


CONVERSATIONS = [
    [
        {"role": "system", "content": "你是一个酒店点评助手。"},
        {"role": "user", "content": f"{s}怎么样？"},
        {"role": "assistant", "content": f"{s}{g}，不过{t}{b}。"},
    ]
    for s, t, g, b in zip(SUBJECTS, reversed(SUBJECTS), GOOD + GOOD, BAD + BAD)
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    chinese = [row["text"] for row in reviews(200, seed=9)] + [m["content"] for c in CONVERSATIONS for m in c]
    return make_base_model(tmp_path_factory.mktemp("base") / "model", 1024, extra_texts=tuple(chinese * 20))


def test_the_base_tokenizer_has_chinese_tokens(base):
    tokenizer = AutoTokenizer.from_pretrained(base)
    text = "房间干净，服务很好。"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) < len(text)  # merged: fewer tokens than characters (each is 3 UTF-8 bytes)
    assert tokenizer.decode(ids) == text


def test_classification_on_chinese_reviews_beats_the_majority_baseline(base, tmp_path):
    rows = reviews(48)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:36])
    val = write_jsonl(tmp_path / "val.jsonl", rows[36:])
    r = recipe(
        tmp_path,
        base,
        "classify",
        [train],
        data__validation_files=[str(val)],
        data__max_length=48,
        train__max_steps=30,
        train__global_batch_size=12,
        train__micro_batch_size=12,
    )
    task, _ = fit_task(r)
    assert set(task.labels) == {"好评", "差评"}
    majority, baseline = task.majority_baseline()
    assert baseline == pytest.approx(0.5)  # balanced validation set
    final = evals(r.run_dir)[-1]
    assert final["accuracy"] >= baseline + 0.25, final
    exported = json.loads((Path(r.run_dir) / "final" / "config.json").read_text(encoding="utf-8"))
    assert set(exported["id2label"].values()) == {"好评", "差评"}


def test_sft_on_chinese_conversations_exports_a_chat_template_that_renders_chinese(base, tmp_path, monkeypatch, capfd):
    from lmtrain.finetune.sft import tokenize_conversations

    rows = [{"messages": c} for c in CONVERSATIONS] * 4
    train = write_jsonl(tmp_path / "sft.jsonl", rows)
    r = recipe(tmp_path, base, "sft", [train], data__validation_files=[str(train)], train__max_steps=10)
    fit_task(r)
    final = Path(r.run_dir) / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    messages = CONVERSATIONS[0]
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    assert tokenizer.decode(out["input_ids"]) == expected  # Chinese survives tokenization, byte for byte
    answer = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(answer) == messages[-1]["content"] + "<|im_end|>"
    data, _ = tokenize_conversations(tokenizer, [Record("x", {"messages": messages})], FinetuneRecipe().data)
    assert np.array_equal(data.example(0)[1], np.array(out["assistant_masks"], dtype=bool))

    capfd.readouterr()
    run_generate(monkeypatch, final, "--chat", "--prompt", "房间怎么样？", "--max-new-tokens", "12")
    assert "user> 房间怎么样？\nassistant> " in capfd.readouterr().out
