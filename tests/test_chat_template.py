"""The ChatML template's {% generation %} markers: transformers' assistant-token mask, computed from the
exported tokenizer alone, is exactly the set of tokens SFT trains (lmtrain.finetune.sft's label mask)."""

import pytest
from transformers import AutoTokenizer

from lmtrain.config.finetune import FinetuneRecipe
from lmtrain.corpus.records import Record
from tests.test_finetune import make_base_model

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "The sum is 7."},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "The sum is 7."},
        {"role": "user", "content": "Repeat the word red."},
        {"role": "assistant", "content": "red red"},
        {"role": "user", "content": "And blue?"},
        {"role": "assistant", "content": " blue blue\n"},  # leading space and trailing newline stay inside
    ],
    [  # Chinese: byte-level tokens that split characters, so token and span edges need not coincide
        {"role": "system", "content": "你是一个简洁的助手。"},
        {"role": "user", "content": "这家酒店怎么样？"},
        {"role": "assistant", "content": "房间干净，服务很好。"},
        {"role": "user", "content": "早餐呢？"},
        {"role": "assistant", "content": "早餐一般，咖啡不错。"},
    ],
    [
        {"role": "user", "content": "def add(a, b):\n    return a + b\n\n用一句话解释这个函数。"},
        {"role": "assistant", "content": "它返回 a 与 b 的和 (the sum)."},
    ],
]


@pytest.fixture(scope="module")
def exported_tokenizer(tmp_path_factory):
    """The base tokenizer given the SFT chat template, saved and reloaded as a fine-tuned export would be."""
    from lmtrain.finetune.sft import setup_chat_template

    base = make_base_model(tmp_path_factory.mktemp("base") / "model")
    tokenizer = AutoTokenizer.from_pretrained(base)
    setup_chat_template(tokenizer, "chatml")
    out = tmp_path_factory.mktemp("export")
    tokenizer.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_transformers_assistant_mask_equals_the_sft_label_mask(exported_tokenizer, index):
    from lmtrain.finetune.sft import tokenize_conversations

    messages = CONVERSATIONS[index]
    assert "{% generation %}" in exported_tokenizer.chat_template
    data, _ = tokenize_conversations(exported_tokenizer, [Record("x", {"messages": messages})], FinetuneRecipe().data)
    ids, trained = data.example(0)
    out = exported_tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert out["input_ids"] == ids.tolist()
    assert out["assistant_masks"] == trained.astype(int).tolist()
    # Independently of both: the masked tokens decode to the answers, each closed by <|im_end|>.
    answers = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert exported_tokenizer.decode(masked) == answers


def test_the_markers_do_not_change_the_rendered_text(exported_tokenizer):
    """The rendering is plain ChatML, as before the markers: what chat and generation see is unchanged."""
    messages = CONVERSATIONS[2]
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert exported_tokenizer.apply_chat_template(messages, tokenize=False) == expected
    prompt = exported_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected.split("<|im_start|>assistant")[0] + "<|im_start|>assistant\n"
