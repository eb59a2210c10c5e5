"""Inference with plain transformers APIs: load a model directory, then continue prompts, chat with a
fine-tuned model (its tokenizer's chat template, tokens streamed as they come), run a JSONL batch, or
classify texts. LoRA adapter directories load too (peft, base model from the adapter's config)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from threading import Thread
from typing import TextIO

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    TextIteratorStreamer,
)

from lmtrain.errors import UserError
from lmtrain.model.adapters import ADAPTER_CONFIG, is_adapter_dir, load_adapter_model


@dataclass
class SamplingSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0
    """0 = greedy decoding."""
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0
    """> 1 makes tokens already in the prompt or the output less likely (1.0 = off); small models loop without it."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise UserError("--temperature must be >= 0 (0 = greedy)")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise UserError("--top-k must be >= 0 and --top-p in (0, 1]")
        if self.repetition_penalty <= 0:
            raise UserError("--repetition-penalty must be > 0 (1.0 = off)")

    def generate_kwargs(self) -> dict:
        # The penalty applies to greedy decoding too; only a value other than 1.0 is passed, so that the model's
        # own generation config keeps its say otherwise.
        penalty = {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, **penalty}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_k": self.top_k or None,
            "top_p": self.top_p,
            **penalty,
        }

    def describe(self) -> str:
        penalty = f", repetition penalty {self.repetition_penalty}" if self.repetition_penalty != 1.0 else ""
        if self.temperature == 0:
            return f"greedy{penalty}, {self.max_new_tokens} new tokens"
        return (
            f"sampling: temperature {self.temperature}, top-k {self.top_k or 'off'}, top-p {self.top_p}"
            f"{penalty}, seed {self.seed}, {self.max_new_tokens} new tokens"
        )

    def record(self) -> dict:
        """The settings as written next to every batch-mode output."""
        return {**asdict(self), "do_sample": self.temperature > 0}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_kind(model_dir: str | Path) -> str:
    """'causal_lm', 'classifier' or 'masked_lm' (an encoder), from the directory's config (or, for a LoRA adapter, its task type)."""
    model_dir = Path(model_dir)
    if is_adapter_dir(model_dir):
        task_type = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("task_type")
        return "classifier" if task_type == "SEQ_CLS" else "causal_lm"
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"{model_dir}: not a model directory (no config.json); pass a trained model such as runs/smoke/final"
        )
    architectures = getattr(AutoConfig.from_pretrained(model_dir), "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classifier"
    return "masked_lm" if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures) else "causal_lm"


def load_model(model_dir: str | Path, base: str | None = None):
    """Causal LM and tokenizer from a directory (or a LoRA adapter directory); safetensors weights, no remote
    code. The generation config of the directory (e.g. stopping at <|im_end|>) is used."""
    model_dir = Path(model_dir)
    if model_kind(model_dir) != "causal_lm":
        raise UserError(
            f"{model_dir}: a classification model; it labels texts rather than generating: pass the texts "
            "with --prompt/--prompts-file/--input (chat needs a causal LM)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # batched prompts end where generation starts
    if is_adapter_dir(model_dir):
        model = load_adapter_model(model_dir, base)
        if (model_dir / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(_device()).eval(), tokenizer


def load_classifier(model_dir: str | Path, base: str | None = None):
    """Sequence classifier and tokenizer from a directory (or a classification LoRA adapter directory)."""
    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"  # as in training; the head reads the last non-padding token either way
    if is_adapter_dir(model_dir):
        model = load_adapter_model(model_dir, base)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype="auto")
    return model.to(_device()).eval(), tokenizer


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    prompts = list(prompts)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise UserError(f"{path}: prompts file not found")
        try:
            prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not prompts:
        raise UserError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], settings: SamplingSettings) -> list[str]:
    """The continuation of each prompt (prompt text excluded)."""
    torch.manual_seed(settings.seed)
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    output = model.generate(**batch, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


# ---------------------------------------------------------------------------- chat


def require_chat_template(tokenizer, model_dir: str | Path) -> None:
    if not tokenizer.chat_template:
        raise UserError(
            f"{model_dir}: its tokenizer has no chat template, so it cannot chat. Chat with a model "
            "fine-tuned by finetune.py (task: sft), e.g. runs/smoke-sft/final, or continue plain text "
            "with --prompt (without --chat)"
        )


@torch.no_grad()
def chat_replies(model, tokenizer, conversations: list[list[dict]], settings: SamplingSettings) -> list[str]:
    """The assistant's next message for each conversation (batched, not streamed)."""
    torch.manual_seed(settings.seed)
    batch = tokenizer.apply_chat_template(
        conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    output = model.generate(**batch, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def stream_reply(
    model, tokenizer, messages: list[dict], settings: SamplingSettings, write: Callable[[str], None]
) -> str:
    """Generate the assistant's next message, passing text to `write` as tokens are produced; return it."""
    torch.manual_seed(settings.seed)
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors = []

    def work():
        try:
            with torch.no_grad():
                model.generate(
                    **inputs, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id, streamer=streamer
                )
        except Exception as exc:  # surfaced in the caller's thread, after the stream ends
            errors.append(exc)
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        write(piece)
    thread.join()
    if errors:
        raise errors[0]
    return "".join(pieces)


def chat_loop(
    model,
    tokenizer,
    settings: SamplingSettings,
    system: str = "",
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> None:
    """Interactive chat: one user message per line; /reset forgets the conversation, /exit (or end of input) quits."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    history = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    write(f"chat ({settings.describe()}); /reset starts over, /exit or Ctrl-D quits\n")
    while True:
        if interactive:
            write("you> ")
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = history[:1] if system else []
            write("(conversation reset)\n")
            continue
        history.append({"role": "user", "content": text})
        write("assistant> ")
        reply = stream_reply(model, tokenizer, history, settings, write)
        write("\n")
        history.append({"role": "assistant", "content": reply})


# ---------------------------------------------------------------------------- batch mode


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(file:line, record) for every non-empty line, each a JSON object with one of `fields`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: input file not found")
    records, problems = [], []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict) or not any(f in record for f in fields):
            problems.append(f"{where}: expected a JSON object with a {' or '.join(map(repr, fields))} field")
            continue
        records.append((where, record))
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems[:20])
        raise UserError(
            f"{len(problems)} bad line(s) in the input:\n{listing}\nEach line must be one JSON object, "
            f'e.g. {{"{fields[0]}": "..."}}'
        )
    if not records:
        raise UserError(f"{path}: no records (one JSON object per line)")
    return records


def write_jsonl(path: str | Path | None, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if path is None or str(path) == "-":
        sys.stdout.write(text)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")


def generate_batch(
    model,
    tokenizer,
    records: list[tuple[str, dict]],
    settings: SamplingSettings,
    model_dir: str,
    chat: bool,
    batch_size: int = 8,
) -> list[dict]:
    """Each record's completion: a `messages` record (or a `prompt` with chat) through the chat template,
    else a plain continuation of `prompt`; the sampling settings and model are recorded with every output."""
    conversations, plain = [], []
    for i, (where, record) in enumerate(records):
        messages = record.get("messages")
        if messages is not None:
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages
            ):
                raise UserError(f'{where}: \'messages\' must be a list of {{"role": ..., "content": ...}} objects')
            conversations.append((i, messages))
        elif not isinstance(record.get("prompt"), str):
            raise UserError(f"{where}: 'prompt' must be a string")
        elif chat:
            conversations.append((i, [{"role": "user", "content": record["prompt"]}]))
        else:
            plain.append((i, record["prompt"]))
    if conversations:
        require_chat_template(tokenizer, model_dir)
    completions: dict[int, str] = {}
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        for (i, _), reply in zip(chunk, chat_replies(model, tokenizer, [c for _, c in chunk], settings)):
            completions[i] = reply
    for start in range(0, len(plain), batch_size):
        chunk = plain[start : start + batch_size]
        for (i, _), text in zip(chunk, generate_texts(model, tokenizer, [p for _, p in chunk], settings)):
            completions[i] = text
    recorded = settings.record()
    return [
        {**record, "completion": completions[i], "settings": recorded, "model": str(model_dir)}
        for i, (_, record) in enumerate(records)
    ]


# ---------------------------------------------------------------------------- classification


@torch.no_grad()
def classify_texts(model, tokenizer, texts: list[str], batch_size: int = 16) -> list[dict]:
    """For each text: the predicted label and the probability of every label."""
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    results = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True).to(
            model.device
        )
        probabilities = torch.softmax(model(**batch).logits.float(), dim=-1).cpu()
        for row in probabilities.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": labels[best], "probabilities": dict(zip(labels, row))})
    return results
