"""The model card: `README.md` in every export (final/, best/, each published checkpoint), written with
huggingface_hub's `ModelCard` and `ModelCardData`, so that the Hub reads its metadata (license, languages,
library, pipeline, datasets, base model, model-index) and a reader finds what made the model and how to use it.

Every figure comes from the run's own records: the export's config and weights (the exact parameter count,
read from the safetensors headers), the data manifest, the tokenizer's quality report and metrics.jsonl.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from lmtrain.formatting import format_count, format_duration

PIPELINE_TAGS = {
    "pretrain": "text-generation",
    "pretrain_encoder": "fill-mask",
    "sft": "text-generation",
    "classify": "text-classification",
}
WHAT = {
    "pretrain": "a language model pretrained from scratch",
    "pretrain_encoder": "an encoder pretrained from scratch with masked-language modelling",
    "sft": "an instruction-tuned (SFT) language model",
    "classify": "a text classifier fine-tuned from a pretrained language model",
}


@dataclass
class CardFacts:
    """What a card says beyond the export's own files, gathered by the run from its task and its log."""

    kind: str
    """pretrain, pretrain_encoder (masked-language-model pretraining), sft or classify."""
    recipe: dict
    metrics: list[dict]
    """The records of metrics.jsonl up to the export."""
    launch: dict
    """processes, device, precision, distributed: how the run was launched."""
    license: str = "apache-2.0"
    languages: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    """Hub datasets the model was trained on."""
    manifest: dict | None = None
    """Pretraining: the data manifest (data_prep/prepare.py)."""
    tokenizer_report: dict | None = None
    """Pretraining: the tokenizer's quality report (tokenizer/train_tokenizer.py)."""
    data_rows: list[tuple[str, str]] = field(default_factory=list)
    """Fine-tuning: what its data was, as (what, value) rows."""
    base_model: str | None = None
    """Fine-tuning: the base model's Hub repository, when it has one."""
    base_model_text: str = ""
    """Fine-tuning: the base model as the recipe names it (a directory, or repo@revision)."""
    repo_id: str | None = None
    revision: str = "main"
    branches: list[str] = field(default_factory=list)
    """Published checkpoint branches, oldest first (listed on `main`)."""
    adapter: bool = False


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in the export's safetensors files (a tied embedding is stored, and counted, once)."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def languages_of(texts: list[str]) -> list[str]:
    """ISO codes of the scripts that make up at least 5 % of the letters in `texts`: en (Latin), zh (CJK)."""
    latin = cjk = 0
    for text in texts:
        for ch in text:
            if ch.isascii():
                latin += ch.isalpha()
            elif "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf":
                cjk += 1
    letters = max(latin + cjk, 1)
    return [code for code, n in (("en", latin), ("zh", cjk)) if n / letters >= 0.05]


def write_model_card(model_dir: Path, facts: CardFacts) -> ModelCard:
    """Write `model_dir/README.md` for the export in `model_dir` and return the card."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / ("adapter_config.json" if facts.adapter else "config.json")).read_text())
    parameters = parameter_count(model_dir)
    results = _last_eval(facts.metrics)
    name = facts.repo_id.split("/")[-1] if facts.repo_id else Path(facts.recipe["run_dir"]).name
    data = ModelCardData(
        language=facts.languages or None,
        license=facts.license,
        library_name="peft" if facts.adapter else "transformers",
        pipeline_tag=PIPELINE_TAGS[facts.kind],
        tags=["lmtrain", facts.kind, *(["lora"] if facts.adapter else []), *(config.get("architectures") or [])],
        datasets=facts.datasets or None,
        base_model=facts.base_model,
        model_name=name,
        eval_results=[_eval_result(key, value, facts.kind) for key, value in results.items()] or None,
    )
    sections = [
        f"# {name}",
        _summary(facts, config, parameters, name),
        _architecture(config, parameters, facts),
        _tokenizer(facts) if facts.tokenizer_report else "",
        _training_data(facts),
        _procedure(facts),
        _results(facts, results),
        _usage(facts, name),
        _branches(facts) if facts.branches else "",
        _limitations(facts),
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n")
    card.save(model_dir / "README.md")
    return card


def _eval_result(key: str, value: float, kind: str) -> EvalResult:
    """A figure of the last evaluation for the model-index: validation figures (eval_*) on the held-out split,
    a downstream task's (`<task>/acc`) on that task, scored as multiple choice."""
    task, _, metric = key.partition("/")
    if key.startswith("eval_") or not metric:
        task_type, dataset, metric = PIPELINE_TAGS[kind], "held-out validation", key.removeprefix("eval_")
    else:
        task_type, dataset = "multiple-choice", task
    return EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=dataset, metric_type=metric,
                      metric_value=round(value, 6), metric_name=key)  # fmt: skip


def training_seconds(metrics: list[dict]) -> float:
    """Training time (evaluation excluded), summed over the log's windows: each window's tokens over its speed."""
    seconds, tokens_before = 0.0, 0
    for r in metrics:
        if r.get("tokens_per_s") and "tokens_seen" in r:
            seconds += (r["tokens_seen"] - tokens_before) / r["tokens_per_s"]
            tokens_before = r["tokens_seen"]
    return seconds


def _last_eval(metrics: list[dict]) -> dict[str, float]:
    evals = [r for r in metrics if "eval_loss" in r]
    if not evals:
        return {}
    # every figure of the last evaluation; its timings (downstream_s) are not results
    return {k: v for k, v in evals[-1].items() if k != "step" and not k.endswith("_s") and isinstance(v, (int, float))}


def _summary(facts: CardFacts, config: dict, parameters: int, name: str) -> str:
    train = facts.recipe["train"]
    steps = max((r["step"] for r in facts.metrics if "tokens_seen" in r), default=0)
    tokens = max((r["tokens_seen"] for r in facts.metrics if "tokens_seen" in r), default=0)
    kind = "LoRA adapter" if facts.adapter else (config.get("architectures") or ["model"])[0]
    base = f" from `{facts.base_model_text}`" if facts.base_model_text else ""
    return (
        f"**{name}** is {WHAT[facts.kind]}{base}: a {format_count(parameters)}-parameter {kind}, trained for "
        f"{steps:,} of {train['max_steps']:,} steps on {format_count(tokens)} tokens with "
        "lmtrain (transformers + Accelerate + DeepSpeed). The weights are plain "
        "safetensors; no custom code is needed to load them."
    )


def _architecture(config: dict, parameters: int, facts: CardFacts) -> str:
    if facts.adapter:
        rows = [("PEFT type", config.get("peft_type")), ("rank r", config.get("r")),
                ("alpha", config.get("lora_alpha")), ("target modules", ", ".join(sorted(config.get("target_modules") or []))),
                ("trainable parameters (exact)", f"{parameters:,}")]  # fmt: skip
    else:
        keys = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta", "tie_word_embeddings",
                "hidden_act", "dtype"]  # fmt: skip
        rows = [(k, config[k]) for k in keys if k in config]
        rows.append(("parameters (exact)", f"{parameters:,}"))
    return "## Architecture\n\n" + _table(("", "value"), rows)


def _tokenizer(facts: CardFacts) -> str:
    report, tok = facts.tokenizer_report, facts.recipe.get("tokenizer", {})
    per_token = report.get("bytes_per_token", {})
    rows = [("type", "byte-level BPE (no unknown tokens)"), ("vocabulary", f"{tok.get('vocab_size', 0):,}")]
    rows += [(f"bytes per token, {lang}", f"{value:.2f}") for lang, value in per_token.items() if value]
    return (
        "## Tokenizer\n\n"
        + _table(("", "value"), rows)
        + "\n\nBytes per token on held-out text (from the tokenizer's quality report): higher is a more compact encoding."
    )


def _training_data(facts: CardFacts) -> str:
    if facts.manifest is None:
        return "## Training data\n\n" + _table(("", "value"), facts.data_rows) if facts.data_rows else ""
    return "## Training data\n\n" + data_summary(facts.manifest)


def data_summary(m: dict) -> str:
    """The data manifest as a table of sources (read, kept, dropped by reason, tokens, shares) and the splits."""
    rows = []
    for s in m["sources"]:
        dropped = {**s.get("skipped", {}), **s.get("filtered", {})}
        for reason in ("too_short_after_cleaning", "exact_duplicates", "near_duplicates"):
            if s.get(reason):
                dropped[reason] = s[reason]
        dropped_text = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in dropped.items()) or "none"
        rows.append((s["name"], s["kind"], f"{s['documents_read']:,}", f"{s['kept']:,}", dropped_text,
                     format_count(s["tokens"]), f"{s['target_token_share']:.1%}"))  # fmt: skip
    splits = m["splits"]
    header = ("source", "kind", "documents read", "kept", "dropped (by reason)", "tokens",
              "target share")  # fmt: skip
    return (
        _table(header, rows)
        + f"\n\nAfter cleaning, filtering and deduplication: {splits['train']['documents']:,} training documents "
        f"({format_count(splits['train']['tokens'])} tokens) and {splits['validation']['documents']:,} held-out "
        f"validation documents ({format_count(splits['validation']['tokens'])} tokens), packed in blocks of "
        f"{m['inputs']['seq_len']} tokens. Data fingerprint `{m['content_fingerprint'][:16]}`."
    )


def _procedure(facts: CardFacts) -> str:
    t, launch = facts.recipe["train"], facts.launch
    seq_len = facts.recipe.get("data", {}).get("seq_len") or facts.recipe.get("data", {}).get("max_length")
    seconds = training_seconds(facts.metrics)
    mfus = [r["mfu"] for r in facts.metrics if r.get("mfu")]
    rows = [
        ("steps", f"{t['max_steps']:,}"),
        ("global batch", f"{t['global_batch_size']:,} sequences × {seq_len:,} tokens"),
        ("micro-batch per process", t["micro_batch_size"]),
        (
            "learning rate",
            f"{t['lr']:g}, {t['schedule']} schedule, {t['warmup_steps']:,} warmup steps, "
            f"down to {t['lr'] * t['min_lr_ratio']:g}",
        ),  # fmt: skip
        (
            "optimizer",
            f"AdamW, betas {tuple(t['adam_betas'])}, eps {t['adam_eps']:g}, weight decay {t['weight_decay']}",
        ),
        ("gradient clipping", t["grad_clip"] or "off"),
        ("precision", launch.get("precision")),
        ("launch", f"{launch.get('processes')} process(es) on {launch.get('device')} ({launch.get('distributed')})"),
        ("training time (evaluation excluded)", format_duration(seconds)),
        ("device-hours", f"{seconds * launch.get('processes', 1) / 3600:.3g}"),
        ("mean MFU", f"{sum(mfus) / len(mfus):.1%}" if mfus else "n/a"),
        ("seed", t["seed"]),
    ]
    return (
        "## Training procedure\n\n"
        + _table(("", "value"), rows)
        + "\n\nThe resolved recipe is `recipe.yaml` in this repository; `metrics.jsonl` holds every logged step."
    )


def _results(facts: CardFacts, results: dict[str, float]) -> str:
    if not results:
        return ""
    evals = [r for r in facts.metrics if "eval_loss" in r]
    first = evals[0]
    rows = [(k, f"{first[k]:.4f}" if k in first and evals[0] is not evals[-1] else "", f"{v:.4f}")
            for k, v in results.items()]  # fmt: skip
    return (
        "## Results\n\n"
        + f"On the held-out validation split and the downstream tasks (`eval:`), at step {evals[-1]['step']:,} "
        f"(first: step {first['step']:,}):\n\n"
        + _table(("metric", "first", "last"), rows)
        + "\n\n![Training and validation loss against tokens seen](loss.png)"
    )


def _usage(facts: CardFacts, name: str) -> str:
    where = f'"{facts.repo_id}"' if facts.repo_id else '"path/to/this/directory"'
    rev = f', revision="{facts.revision}"' if facts.repo_id and facts.revision != "main" else ""
    zh = "zh" in facts.languages
    if facts.adapter:
        head = "AutoPeftModelForSequenceClassification" if facts.kind == "classify" else "AutoPeftModelForCausalLM"
        code = (f"from peft import {head}\nfrom transformers import AutoTokenizer\n\n"
                f"model = {head}.from_pretrained({where}{rev})\ntokenizer = AutoTokenizer.from_pretrained({where}{rev})")  # fmt: skip
    elif facts.kind == "classify":
        text = "这家酒店很干净" if zh else "def read_config(path):"
        code = (f'from transformers import pipeline\n\nclassify = pipeline("text-classification", model={where}{rev})\n'
                f'print(classify("{text}"))')  # fmt: skip
    elif facts.kind == "pretrain_encoder":
        text = "中国的首都是[MASK]京。" if zh else "def read(path):\n    with open(path) as f:\n        [MASK] f.read()"
        code = (f'from transformers import pipeline\n\nfill = pipeline("fill-mask", model={where}{rev})\n'
                f"print(fill({text!r}))\n# AutoModelForMaskedLM loads the weights, "
                "AutoModelForSequenceClassification starts a classifier from them (finetune.py)")  # fmt: skip
    elif facts.kind == "sft":
        question = "用一句话介绍你自己。" if zh else "What does this function do? def f(x): return x * 2"
        code = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"tokenizer = AutoTokenizer.from_pretrained({where}{rev})\n"
                f"model = AutoModelForCausalLM.from_pretrained({where}{rev})\n"
                f'messages = [{{"role": "user", "content": "{question}"}}]\n'
                "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
                "return_dict=True)\noutput = model.generate(**inputs, max_new_tokens=64)\n"
                "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))")  # fmt: skip
    else:
        prompt = "中国的首都是" if zh else "def fibonacci(n):"
        code = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"tokenizer = AutoTokenizer.from_pretrained({where}{rev})\n"
                f"model = AutoModelForCausalLM.from_pretrained({where}{rev})\n"
                f'inputs = tokenizer("{prompt}", return_tensors="pt")\n'
                "output = model.generate(**inputs, max_new_tokens=48, do_sample=True, top_p=0.9)\n"
                "print(tokenizer.decode(output[0], skip_special_tokens=True))")  # fmt: skip
    chat = ("\n\nThe chat template (ChatML) is saved with the tokenizer: `tokenizer.apply_chat_template` formats "
            "conversations as in training." if facts.kind == "sft" else "")  # fmt: skip
    chat_zh = (
        "\n\n聊天模板（ChatML）随分词器一起保存：`tokenizer.apply_chat_template` 按训练时的格式排列对话。"
        if chat
        else ""
    )
    return (
        f"## How to use\n\n```python\n{code}\n```{chat}\n\n"
        f"## 使用方法\n\n用 transformers 直接加载（无需自定义代码，权重为 safetensors）：\n\n```python\n{code}\n```{chat_zh}"
    )


def _branches(facts: CardFacts) -> str:
    rows = [(f"`{b}`", f'`from_pretrained("{facts.repo_id}", revision="{b}")`') for b in facts.branches]
    return (
        "## Intermediate checkpoints\n\nEach checkpoint published while training ran is a branch named by its step "
        "and the tokens seen (they sort in training order):\n\n" + _table(("branch", "load it"), rows)
    )


def _limitations(facts: CardFacts) -> str:
    base = (
        "It has had no instruction tuning or safety alignment: it continues text, it does not follow instructions"
        if facts.kind == "pretrain"
        else "It fills masked tokens and is meant to be fine-tuned (classification, retrieval); it generates no text"
        if facts.kind == "pretrain_encoder"
        else "Its behaviour outside the fine-tuning data's distribution was not evaluated"
    )
    return (
        "## Limitations\n\n"
        f"{base}, and it can produce wrong, biased or offensive text. Its figures above are on held-out data from "
        "the same sources as its training data; judge it on your own task before use."
    )


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_tokenizer_card(tokenizer_dir: Path, repo_id: str, report: dict | None, license: str) -> None:
    """`README.md` for a tokenizer published on its own: what it is, how compact it is, how to load it."""
    per_token = (report or {}).get("bytes_per_token", {})
    vocab = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    rows = [("type", "byte-level BPE (no unknown tokens)"), ("vocabulary", f"{len(vocab):,}")]
    rows += [(f"bytes per token, {lang}", f"{value:.2f}") for lang, value in per_token.items() if value]
    code = f'from transformers import AutoTokenizer\n\ntokenizer = AutoTokenizer.from_pretrained("{repo_id}")'
    data = ModelCardData(license=license, library_name="transformers", tags=["lmtrain", "tokenizer"])
    text = (
        f"# {repo_id.split('/')[-1]}\n\nThe tokenizer of an lmtrain pretraining run.\n\n{_table(('', 'value'), rows)}"
        f"\n\n## How to use / 使用方法\n\n```python\n{code}\n```\n"
    )
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(Path(tokenizer_dir) / "README.md")


def dataset_card(manifest: dict, repo_id: str, license: str, languages: list[str]) -> DatasetCard:
    """The card of a packed dataset published with `DatasetDict.push_to_hub`: its sources and counts."""
    data = DatasetCardData(license=license, language=languages or None, tags=["lmtrain", "pretraining"])
    code = f'from datasets import load_dataset\n\nblocks = load_dataset("{repo_id}")'
    text = (
        f"# {repo_id.split('/')[-1]}\n\nTokenized and packed pretraining data made by lmtrain's data_prep/prepare.py: "
        f"rows of `input_ids` ({manifest['inputs']['seq_len']} tokens each) and the `source` they come from, train and "
        f"validation splits.\n\n{data_summary(manifest)}\n\n## How to use / 使用方法\n\n```python\n{code}\n```\n"
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{text}")
