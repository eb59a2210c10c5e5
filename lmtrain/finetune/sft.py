"""Instruction tuning (SFT) as a `Task`: conversations in, loss on the assistant's tokens only.

A conversation is rendered with the tokenizer's chat template (ChatML by default, with the
<|im_start|>/<|im_end|> tokens the pretraining tokenizer reserves) and tokenized once; the assistant
turns' character spans are found by rendering the conversation up to each assistant turn, so any
prefix-stable template works (not only ours). A token is trained when it overlaps an assistant span:
the answer and its closing <|im_end|> (so the model learns to stop), never the system/user turns or
the `<|im_start|>assistant` header.

Batches are padded (right, with an attention mask), or, with data.packing, several examples share a
max_length row with per-example position_ids, which transformers' Llama turns into a block-diagonal
mask (as pretraining's document masking), so no example sees another.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerBase

from lmtrain.config.finetune import FinetuneDataConfig, FinetuneRecipe
from lmtrain.corpus.records import Record, RecordProblems
from lmtrain.data.packing import IGNORE_INDEX
from lmtrain.errors import UserError
from lmtrain.finetune.base import FinetuneTask, say
from lmtrain.finetune.metrics import load_metric
from lmtrain.tokenizer.bpe import CHAT_TOKENS
from lmtrain.training.evaluation import eval_shard, mean_eval_loss
from lmtrain.training.generation_check import GenerationCheck

IM_START, IM_END = CHAT_TOKENS
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML: <|im_start|>role\\ncontent<|im_end|>\\n per message; the generation prompt opens an assistant turn.
The {% generation %} markers enclose what SFT trains (the answer and its <|im_end|>), so that
apply_chat_template(..., return_assistant_tokens_mask=True, return_dict=True) gives the same mask on the
exported tokenizer (what TRL's assistant-only loss reads)."""
ROLES = ("system", "user", "assistant")
REAL_TOKENS = "real_tokens"
"""Batch key (not a model input) with the number of non-padding tokens, for the throughput log."""


# ---------------------------------------------------------------------------- chat template


def setup_chat_template(tokenizer: PreTrainedTokenizerBase, mode: str) -> tuple[list[int], int]:
    """Give `tokenizer` a chat template (its own with mode auto, else ChatML); return the token ids that end
    an assistant turn (for generation_config.eos_token_id) and how many tokens had to be added to the
    vocabulary (0 with this project's tokenizer, which reserves the ChatML tokens)."""
    if mode == "auto" and tokenizer.chat_template:
        return [tokenizer.eos_token_id], 0
    added = tokenizer.add_tokens([t for t in CHAT_TOKENS if t not in tokenizer.get_vocab()], special_tokens=True)
    tokenizer.chat_template = CHATML_TEMPLATE
    stops = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in stops if i is not None)), added


def special_token_pattern(tokenizer: PreTrainedTokenizerBase) -> re.Pattern | None:
    """Matches the text of any special token: such text in a record would be read as the token itself."""
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials.update(tokenizer.all_special_tokens)
    specials.discard("")
    return re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True)))) if specials else None


# ---------------------------------------------------------------------------- records → conversations


def conversation(record: Record, d: FinetuneDataConfig, problems: RecordProblems) -> list[dict] | None:
    """The record's messages, checked: roles system (first only), then user and assistant alternating,
    ending with an assistant turn. Problems are recorded with the record's location."""
    row = record.row
    if d.messages_column in row and row[d.messages_column] is not None:
        messages = row[d.messages_column]
        if not isinstance(messages, list) or not messages:
            problems.add(
                record.where,
                f'{d.messages_column!r} must be a non-empty list of messages ({{"role": ..., "content": ...}})',
            )
            return None
    elif d.prompt_column in row and d.completion_column in row:
        prompt, completion = row[d.prompt_column], row[d.completion_column]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            problems.add(record.where, f"{d.prompt_column!r} and {d.completion_column!r} must be strings")
            return None
        messages = ([{"role": "system", "content": d.system_prompt}] if d.system_prompt else []) + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
    else:
        problems.add(
            record.where,
            f"no {d.messages_column!r} column and no {d.prompt_column!r}/"
            f"{d.completion_column!r} pair (fields: {', '.join(map(repr, row)) or 'none'}); "
            "set data.messages_column, or data.prompt_column and data.completion_column",
        )
        return None
    checked, expected = [], "user"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            problems.add(
                record.where,
                f"message {i} must be an object with a 'role' and a string 'content', got {str(message)[:80]!r}",
            )
            return None
        role = message["role"]
        if role not in ROLES:
            problems.add(record.where, f"message {i} has role {role!r}; roles are system, user and assistant")
            return None
        if role == "system":
            if i != 0:
                problems.add(
                    record.where,
                    f"roles out of order: message {i} is a system message; only the first message may be one",
                )
                return None
        elif role != expected:
            problems.add(
                record.where,
                f"roles out of order: message {i} is {role!r} where {expected!r} was "
                "expected; turns alternate user → assistant (after an optional system message)",
            )
            return None
        else:
            expected = "assistant" if role == "user" else "user"
        checked.append({"role": role, "content": message["content"]})
    if not any(m["role"] == "assistant" for m in checked):
        problems.add(
            record.where,
            "no assistant turn, so nothing to learn; add the answer as a message with role "
            "'assistant' (or a completion)",
        )
        return None
    if checked[-1]["role"] != "assistant":
        problems.add(
            record.where,
            f"ends with a {checked[-1]['role']!r} turn that has no answer; end the conversation "
            "with the assistant's answer, or drop the last turn",
        )
        return None
    return checked


def render_with_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (answer + end-of-turn token,
    trailing whitespace excluded)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise UserError(
                "the chat template does not render a conversation as the concatenation of its turns, so "
                "the assistant tokens cannot be located; use sft.chat_template=chatml"
            )
        spans.append((len(before), len(upto.rstrip())))
    return text, spans


@dataclass
class Tokenized:
    """Examples as one flat token stream: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray
    trained: np.ndarray
    """True where the token is a label (an assistant token)."""
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.trained[a:b]


@dataclass
class TokenizeReport:
    examples: int = 0
    truncated: int = 0
    skipped_too_long: int = 0
    answer_cut: int = 0
    special_text: int = 0
    special_text_where: list[str] | None = None

    def describe(self, max_length: int) -> str:
        parts = [f"{self.examples:,} examples"]
        if self.truncated:
            parts.append(f"{self.truncated:,} truncated to {max_length} tokens")
        if self.skipped_too_long:
            parts.append(f"{self.skipped_too_long:,} longer than {max_length} tokens skipped")
        if self.answer_cut:
            parts.append(f"{self.answer_cut:,} left out: no answer token within {max_length} tokens")
        if self.special_text:
            parts.append(
                f"{self.special_text:,} left out: special-token text in a message "
                f"(e.g. {', '.join(self.special_text_where or [])})"
            )
        return ", ".join(parts)


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase, records: list[Record], d: FinetuneDataConfig, batch_size: int = 1000
) -> tuple[Tokenized, TokenizeReport]:
    """Render, tokenize and label the records; bad records raise one UserError listing them."""
    problems = RecordProblems(
        "Fix these records (SFT data is a 'messages' list of {role, content} with roles system "
        "(optional, first), user, assistant alternating, ending with the assistant; or a "
        "prompt/completion pair)."
    )
    specials = special_token_pattern(tokenizer)
    report = TokenizeReport(special_text_where=[])
    texts, spans = [], []
    for record in records:
        messages = conversation(record, d, problems)
        if messages is None:
            continue
        if specials is not None and any(specials.search(m["content"]) for m in messages):
            report.special_text += 1
            if len(report.special_text_where) < 3:
                report.special_text_where.append(record.where)
            continue
        text, assistant_spans = render_with_spans(tokenizer, messages)
        texts.append(text)
        spans.append(assistant_spans)
    problems.raise_if_any()

    ids_parts, trained_parts, lengths = [], [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )  # long examples are handled below, not warned about
        for ids, offsets, example_spans in zip(
            encoded["input_ids"], encoded["offset_mapping"], spans[start : start + batch_size]
        ):
            ids = np.asarray(ids, dtype=np.int32)
            trained = assistant_mask(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), example_spans)
            if len(ids) > d.max_length:
                if d.too_long == "skip":
                    report.skipped_too_long += 1
                    continue
                report.truncated += 1
                ids, trained = ids[: d.max_length], trained[: d.max_length]
            if not trained[1:].any():  # the first token has no prediction: it cannot be a label
                report.answer_cut += 1
                continue
            ids_parts.append(ids)
            trained_parts.append(trained)
            lengths.append(len(ids))
    report.examples = len(lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokenized = Tokenized(
        np.concatenate(ids_parts) if ids_parts else np.empty(0, np.int32),
        np.concatenate(trained_parts) if trained_parts else np.empty(0, bool),
        offsets,
    )
    return tokenized, report


def assistant_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """True for every token whose characters overlap an assistant span."""
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        mask |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
    return mask


def pack(lengths: np.ndarray, max_length: int) -> list[np.ndarray]:
    """Examples grouped into rows of at most max_length tokens, in order (a new row when the next one does
    not fit). Every example is at most max_length long."""
    rows, current, used = [], [], 0
    for i, length in enumerate(lengths.tolist()):
        if used + length > max_length and current:
            rows.append(np.asarray(current))
            current, used = [], 0
        current.append(i)
        used += length
    if current:
        rows.append(np.asarray(current))
    return rows


@dataclass
class HeldOutAnswers:
    """The generation check's data: the prompt of each validation conversation (everything before its last
    answer, with the generation prompt) and that answer, the reference."""

    prompts: list[list[int]]
    references: list[str]
    cut: int
    """Prompts cut from the left to fit max_length with the answer's max_new_tokens."""


def held_out_answers(
    tokenizer: PreTrainedTokenizerBase, records: list[Record], d: FinetuneDataConfig, count: int, max_new_tokens: int
) -> HeldOutAnswers:
    """The first `count` conversations of `records` that tokenize_conversations keeps (it has reported the
    bad ones), as generation prompts and references."""
    specials = special_token_pattern(tokenizer)
    answers = HeldOutAnswers([], [], 0)
    budget = d.max_length - max_new_tokens
    for record in records:
        if len(answers.prompts) == count:
            break
        messages = conversation(record, d, RecordProblems(""))
        if messages is None or (specials is not None and any(specials.search(m["content"]) for m in messages)):
            continue
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > budget:
            ids, answers.cut = ids[-budget:], answers.cut + 1
        answers.prompts.append(ids)
        answers.references.append(messages[-1]["content"])
    return answers


# ---------------------------------------------------------------------------- the task


class SftTask(FinetuneTask):
    def __init__(self, recipe: FinetuneRecipe):
        super().__init__(recipe)
        d = recipe.data
        self.stop_ids, self.added_tokens = setup_chat_template(self.tokenizer, recipe.sft.chat_template)
        if self.added_tokens and (recipe.lora.enabled or recipe.freeze.embeddings or recipe.freeze.all_but_head):
            raise UserError(
                f"the tokenizer of {recipe.base_model} lacks the chat tokens {', '.join(CHAT_TOKENS)}, so "
                "their embeddings must be trained; turn off lora.enabled and freeze.embeddings/"
                "all_but_head, or start from a model whose tokenizer has a chat template"
            )
        splits = self.read_splits()
        self.train_data, train_report = tokenize_conversations(self.tokenizer, splits.train, d)
        self.val_data, val_report = tokenize_conversations(self.tokenizer, splits.validation, d)
        for name, data in (("training", self.train_data), ("validation", self.val_data)):
            if len(data) == 0:
                raise UserError(
                    f"data: no {name} example is left after tokenization "
                    f"({(train_report if name == 'training' else val_report).describe(d.max_length)}); "
                    "raise data.max_length or check the data"
                )
        self.report = f"train: {train_report.describe(d.max_length)} | validation: {val_report.describe(d.max_length)}"
        self.train_lengths = self.train_data.lengths()
        self.rows = pack(self.train_lengths, d.max_length) if d.packing else None
        self.train_size = len(self.rows) if d.packing else len(self.train_data)
        self.pad_id = self.tokenizer.pad_token_id
        self.answers, self.generation_check = None, None
        if recipe.sft.eval_generations:
            g = recipe.sft
            self.answers = held_out_answers(
                self.tokenizer, splits.validation, d, g.eval_generations, g.eval_max_new_tokens
            )
            self.generation_check = GenerationCheck(
                self.answers.prompts, self.pad_id, self.stop_ids, g.eval_max_new_tokens, g.eval_batch_size
            )
            self._metrics = {name: load_metric(name) for name in ("exact_match", "chrf")}

    # -- model

    def load_pretrained(self, path: str, **kwargs) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if self.added_tokens:
            model.resize_token_embeddings(len(self.tokenizer))
            say(f"chat template: added {', '.join(CHAT_TOKENS)} to the vocabulary ({len(self.tokenizer):,} tokens)")
        return model

    def head(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.get_output_embeddings()

    # -- batches

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        if self.rows is None:
            return self._padded(self.train_data, indices)
        return self._packed([self.rows[i] for i in indices.tolist()])

    def _padded(self, data: Tokenized, indices: np.ndarray) -> dict[str, torch.Tensor]:
        examples = [data.example(i) for i in indices.tolist()]
        width = max(len(ids) for ids, _ in examples)
        input_ids = np.full((len(examples), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
        attention = np.zeros((len(examples), width), dtype=np.int64)
        for row, (ids, trained) in enumerate(examples):
            input_ids[row, : len(ids)] = ids
            labels[row, : len(ids)] = np.where(trained, ids, IGNORE_INDEX)
            attention[row, : len(ids)] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
            "use_cache": False,
            REAL_TOKENS: torch.tensor(int(attention.sum())),
        }

    def _packed(self, rows: list[np.ndarray]) -> dict[str, torch.Tensor]:
        width = max(int(self.train_lengths[row].sum()) for row in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros((len(rows), width), dtype=np.int64)
        real = 0
        for r, row in enumerate(rows):
            at = 0
            for i in row.tolist():
                ids, trained = self.train_data.example(i)
                n = len(ids)
                input_ids[r, at : at + n] = ids
                labels[r, at : at + n] = np.where(trained, ids, IGNORE_INDEX)
                labels[r, at] = IGNORE_INDEX  # an example's first token would be predicted from the previous one
                positions[r, at : at + n] = np.arange(n)
                at += n
            positions[r, at:] = np.arange(width - at)  # the padding is one more "example", never a label
            real += at
        return {
            "input_ids": torch.from_numpy(input_ids),
            "position_ids": torch.from_numpy(positions),
            "labels": torch.from_numpy(labels),
            "use_cache": False,
            REAL_TOKENS: torch.tensor(real),
        }

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch[REAL_TOKENS])

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**model_inputs(batch)).loss

    # -- evaluation and export

    @torch.no_grad()
    def evaluate(self, model, accelerator: Accelerator, step: int = 0) -> dict[str, float]:
        """Mean loss per assistant token over the validation examples (padded, never packed); with
        sft.eval_generations, exact match and chrF of greedy answers, which the main process also writes to
        run_dir/eval_answers/step<N>.jsonl for reading."""
        t = self.recipe.train
        batches = eval_shard(len(self.val_data), accelerator, t.micro_batch_size, t.eval_batches)
        loss = mean_eval_loss(model, accelerator, batches, lambda idx: self._padded(self.val_data, idx), self)
        metrics = {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}
        if self.generation_check is None:
            return metrics
        start = time.perf_counter()
        tokens = self.generation_check.generate(model, accelerator)
        answers = [self.tokenizer.decode(a, skip_special_tokens=True) for a in tokens]
        for name, metric in self._metrics.items():
            metrics[name] = metric.compute(predictions=answers, references=self.answers.references)[name]
        metrics["generation_s"] = time.perf_counter() - start  # its cost, next to the training time in the log
        if accelerator.is_main_process:
            self._write_answers(step, answers)
        return metrics

    def _write_answers(self, step: int, answers: list[str]) -> None:
        out = Path(self.recipe.run_dir) / "eval_answers" / f"step{step:07d}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = zip(self.answers.prompts, self.answers.references, answers)
        out.write_text(
            "".join(
                json.dumps({"prompt": self.tokenizer.decode(p), "reference": r, "answer": a}, ensure_ascii=False) + "\n"
                for p, r, a in rows
            ),
            encoding="utf-8",
        )

    def generation_config(self) -> GenerationConfig:
        tok = self.tokenizer
        return GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id
        )

    def export_extras(self) -> dict:
        return {"generation_config": self.generation_config()}

    def hash_data(self, digest) -> None:
        for data in (self.train_data, self.val_data):
            for array in (data.ids, data.trained, data.offsets):
                digest.update(np.ascontiguousarray(array).tobytes())

    def describe(self) -> str:
        d = self.recipe.data
        layout = (
            f"packed into {len(self.rows):,} rows of ≤{d.max_length} tokens"
            if self.rows is not None
            else f"padded per micro-batch (≤{d.max_length} tokens)"
        )
        trained = int(self.train_data.trained.sum())
        check = ""
        if self.answers is not None:
            cut = f", {self.answers.cut} prompt(s) cut from the left" if self.answers.cut else ""
            check = (
                f" | generation check: {len(self.answers.prompts)} validation answers, greedy, "
                f"≤{self.recipe.sft.eval_max_new_tokens} new tokens{cut}"
            )
        return (
            f"SFT: {self.data_description} | {self.report} | {trained:,} of {len(self.train_data.ids):,} training "
            f"tokens are assistant tokens (the loss) | {layout}{check}"
        )


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != REAL_TOKENS}
