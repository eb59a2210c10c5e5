"""Use a trained model directory (this project's export, a fine-tuned model, a LoRA adapter, or any HF model).

Continue text (pretrained models):
    python generate.py runs/smoke/final --prompt "def fibonacci(n):" --max-new-tokens 64
    python generate.py runs/smoke/final --prompts-file prompts.txt --temperature 0.8 --top-p 0.95
    python generate.py runs/smoke/final --prompt "import os" --temperature 0.7 --top-k 40 --repetition-penalty 1.1 --seed 1
Chat (models fine-tuned with task: sft; the tokenizer's chat template, tokens streamed as they come):
    python generate.py runs/smoke-sft/final --chat                          # interactive; /reset, /exit
    python generate.py runs/smoke-sft/final --chat --prompt "Explain what this Python function does. ..."
Batch (JSONL in → JSONL out; each line {"prompt": ...} or {"messages": [...]}, other fields kept; the
output adds "completion", the sampling "settings" and the "model"):
    python generate.py runs/smoke-sft/final --input questions.jsonl --output answers.jsonl [--chat]
Fill masks (encoders pretrained with objective.kind: mlm; top 5 per [MASK], or --top-k):
    python generate.py runs/smoke-mlm/final --prompt "import os
import [MASK]"
Classify (models fine-tuned with task: classify: label and probabilities of every label):
    python generate.py runs/smoke-classify/best --prompt "def handle(self, record): ..."
    python generate.py runs/smoke-classify/best --input texts.jsonl --output labels.jsonl   # lines {"text": ...}
"""

import argparse
import sys

from lmtrain.cli import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a model directory, e.g. runs/smoke/final or runs/smoke-sft/final")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt, chat message or text (repeatable)")
    parser.add_argument("--prompts-file", help="a UTF-8 text file with one prompt per line")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="chat through the tokenizer's chat template, streaming the reply; interactive "
        "(stdin) unless prompts are given",
    )
    parser.add_argument("--system", default="", help="with --chat: a system message first")
    parser.add_argument("--input", help="batch mode: a JSONL file in (one JSON object per line)")
    parser.add_argument("--output", help="batch mode: the JSONL file out (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch mode: inputs per forward pass (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding; > 0 samples")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1.0 = off)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of torch's generator for sampling: the same seed, the same text"
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 discourages repeating tokens already present, e.g. 1.1 (default 1.0 = off)",
    )
    parser.add_argument(
        "--base", help="for a LoRA adapter: its base model directory (default: the one recorded in the adapter)"
    )
    args = parser.parse_args()

    from lmtrain.errors import UserError
    from lmtrain.inference.generation import SamplingSettings, model_kind

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.input and (args.prompt or args.prompts_file):
        raise UserError("--input (batch mode) and --prompt/--prompts-file are alternatives; pass one of them")
    if args.output and not args.input:
        raise UserError("--output is batch mode's file out: pass the JSONL file in with --input")
    if args.system and not args.chat:
        raise UserError("--system is a chat setting: add --chat")
    settings = SamplingSettings(
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.repetition_penalty
    )
    kind = model_kind(args.model_dir)
    if kind == "classifier":
        return classify(args)
    if kind == "masked_lm":
        return fill_mask(args)
    if args.input:
        return batch(args, settings)
    if args.chat:
        return chat(args, settings)
    from lmtrain.inference.generation import generate_texts, load_model, read_prompts

    prompts = read_prompts(args.prompt, args.prompts_file)
    model, tokenizer = load_model(args.model_dir, args.base)
    for prompt, completion in zip(prompts, generate_texts(model, tokenizer, prompts, settings)):
        print(f"--- {settings.describe()}\n{prompt}{completion}\n")


def chat(args, settings) -> None:
    from lmtrain.inference.generation import chat_loop, load_model, read_prompts, require_chat_template, stream_reply

    model, tokenizer = load_model(args.model_dir, args.base)
    require_chat_template(tokenizer, args.model_dir)
    if not (args.prompt or args.prompts_file):
        chat_loop(model, tokenizer, settings, system=args.system)
        return
    system = [{"role": "system", "content": args.system}] if args.system else []

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    for prompt in read_prompts(args.prompt, args.prompts_file):
        write(f"--- {settings.describe()}\nuser> {prompt}\nassistant> ")
        stream_reply(model, tokenizer, system + [{"role": "user", "content": prompt}], settings, write)
        write("\n\n")


def batch(args, settings) -> None:
    from lmtrain.inference.generation import generate_batch, load_model, read_jsonl, write_jsonl

    records = read_jsonl(args.input, ("prompt", "messages"))
    model, tokenizer = load_model(args.model_dir, args.base)
    rows = generate_batch(model, tokenizer, records, settings, args.model_dir, args.chat, args.batch_size)
    write_jsonl(args.output, rows)
    if args.output:
        print(f"{len(rows)} completion(s) ({settings.describe()}) → {args.output}", file=sys.stderr)


def classify(args) -> None:
    from lmtrain.errors import UserError
    from lmtrain.inference.generation import classify_texts, load_classifier, read_jsonl, read_prompts, write_jsonl

    if args.chat:
        raise UserError(
            f"{args.model_dir}: a classification model cannot chat; pass texts with "
            "--prompt/--prompts-file/--input to get labels"
        )
    if args.input:
        records = read_jsonl(args.input, ("text",))
        for where, record in records:
            if not isinstance(record.get("text"), str):
                raise UserError(f"{where}: 'text' must be a string")
        texts = [record["text"] for _, record in records]
    else:
        records = None
        texts = read_prompts(args.prompt, args.prompts_file)
    model, tokenizer = load_classifier(args.model_dir, args.base)
    results = classify_texts(model, tokenizer, texts, args.batch_size)
    if records is not None:
        write_jsonl(args.output, [{**record, **result} for (_, record), result in zip(records, results)])
        if args.output:
            print(f"{len(results)} text(s) classified → {args.output}", file=sys.stderr)
        return
    for text, result in zip(texts, results):
        probabilities = ", ".join(
            f"{label} {p:.3f}" for label, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1])
        )
        preview = text if len(text) <= 80 else text[:77] + "..."
        print(f"{result['label']}\t({probabilities})\t{preview!r}")


def fill_mask(args) -> None:
    from lmtrain.errors import UserError
    from lmtrain.inference.fill_mask import fill_masks
    from lmtrain.inference.generation import read_prompts

    if args.chat or args.input:
        raise UserError(
            f"{args.model_dir}: an encoder fills masks; pass prompts with [MASK] in --prompt/--prompts-file"
        )
    prompts = read_prompts(args.prompt, args.prompts_file)
    for prompt, masks in zip(prompts, fill_masks(args.model_dir, prompts, args.top_k or 5)):
        print(f"--- {prompt!r}")
        for i, candidates in enumerate(masks, 1):
            print(f"  mask {i}: " + ", ".join(f"{c['token_str']!r} {c['score']:.3f}" for c in candidates))


if __name__ == "__main__":
    run(main)
