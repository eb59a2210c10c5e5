"""Encoder or decoder for classification, at the same pretraining compute: MLM (ModernBERT) against CLM (Llama).

    python benchmarks/encoder_vs_decoder.py [--steps 120] [--finetune-steps 60] [--hidden 128] [--layers 4]

Two models of the same shape (hidden, layers, heads, a gated MLP of the same width, tied embeddings: the same matmul
parameters, so the same FLOPs per token, which the trainer's banner prints and this script checks) are pretrained
from scratch on the same standard-library text, the same number of steps, sequences and tokens: one as a decoder
(next-token prediction, recipes/smoke/pretrain.yaml's objective), one as an encoder (masked tokens at 30 %,
recipes/smoke/mlm.yaml's). Each tokenizer is trained on the same corpus (the encoder's adds [CLS] [SEP] [MASK]).
Then each export is fine-tuned with recipes/smoke/classify.yaml (which standard-library package a function comes
from, 5 labels; the same steps, batch and learning rate) and the best validation accuracy and macro-F1 are compared,
with the majority-class baseline. Prints a line per run, a table, then one JSON line (`encoder_vs_decoder`: the
encoder's best accuracy over the decoder's).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120, help="pretraining steps of each model")
    parser.add_argument("--finetune-steps", type=int, default=60, help="classification fine-tuning steps")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--documents", type=int, default=600, help="standard-library files to pretrain on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="enc-vs-dec-") as tmp:
        results = {kind: pretrain_and_classify(Path(tmp) / kind, kind, args) for kind in ("decoder", "encoder")}
    print_table(results)
    enc, dec = results["encoder"], results["decoder"]
    print(json.dumps({
        "encoder_vs_decoder": enc["accuracy"] / dec["accuracy"], "encoder_accuracy": enc["accuracy"],
        "decoder_accuracy": dec["accuracy"], "encoder_macro_f1": enc["macro_f1"], "decoder_macro_f1": dec["macro_f1"],
        "majority_accuracy": enc["majority"], "mflop_per_token": {k: r["mflop"] for k, r in results.items()},
        "pretrain_tokens": enc["tokens"], "steps": args.steps, "finetune_steps": args.finetune_steps,
    }))  # fmt: skip


def pretrain_and_classify(root: Path, kind: str, args) -> dict:
    root.mkdir(parents=True)
    recipe = pretrain_recipe(root, kind, args)
    run("tokenizer/train_tokenizer.py", recipe)
    run("data_prep/prepare.py", recipe)
    banner = run("train.py", recipe)
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    tokens = max(r.get("tokens_seen", 0) for r in records)
    mflop = float(re.search(r"([\d.,]+) MFLOP/token", banner).group(1).replace(",", ""))
    classify = yaml.safe_load((REPO_ROOT / "recipes/smoke/classify.yaml").read_text())
    classify["base_model"], classify["run_dir"] = str(root / "run" / "final"), str(root / "classify")
    classify["train"] |= {"max_steps": args.finetune_steps, "warmup_steps": max(1, args.finetune_steps // 10),
                          "eval_every": max(1, args.finetune_steps // 3)}  # fmt: skip
    classify_path = root / "classify.yaml"
    classify_path.write_text(yaml.safe_dump(classify), encoding="utf-8")
    log = run("finetune.py", classify_path)
    evals = [json.loads(line) for line in (root / "classify" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "accuracy" in r]
    best = max(evals, key=lambda r: r["macro_f1"])
    majority = float(re.search(r"majority-class baseline on validation: ([\d.]+)", log).group(1))
    result = {"accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "majority": majority, "mflop": mflop,
              "tokens": tokens}  # fmt: skip
    print(f"{kind}: pretrained {tokens:,} tokens at {mflop} MFLOP/token; classify best accuracy "
          f"{result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f} (majority {majority:.3f})", flush=True)  # fmt: skip
    return result


def pretrain_recipe(root: Path, kind: str, args) -> Path:
    """The smoke pretraining recipe at the benchmark's size, as a decoder or an encoder of the same shape."""
    base = yaml.safe_load((REPO_ROOT / "recipes/smoke/pretrain.yaml").read_text())
    base.pop("eval", None)  # downstream multiple-choice tasks score a decoder only
    heads = max(1, args.hidden // 64)
    base |= {"run_dir": str(root / "run")}
    base["tokenizer"] |= {"dir": str(root / "tokenizer")}
    base["data"] |= {"dir": str(root / "data"), "seq_len": args.seq_len,
                     "sources": [{"kind": "python_stdlib", "max_documents": args.documents}]}  # fmt: skip
    base["model"] = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": heads,
                     "intermediate_size": args.hidden * 3 // 2, "tie_word_embeddings": True}  # fmt: skip
    base["train"] |= {"max_steps": args.steps, "warmup_steps": max(1, args.steps // 10),
                      "eval_every": max(1, args.steps // 3), "checkpoint_every": 0}  # fmt: skip
    if kind == "encoder":
        del base["model"]["tie_word_embeddings"]  # ModernBERT ties its embeddings itself
        base["model"] |= {"architecture": "modernbert", "local_attention": min(128, args.seq_len)}
        base["objective"] = {"kind": "mlm", "mask_rate": 0.3}
    path = root / "pretrain.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return path


def run(script: str, *args) -> str:
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"{script} {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result.stderr + result.stdout


def print_table(results: dict) -> None:
    print(f"{'model':<10}{'MFLOP/token':>12}{'tokens':>12}{'accuracy':>10}{'macro-F1':>10}{'majority':>10}")
    for kind, r in results.items():
        print(f"{kind:<10}{r['mflop']:>12}{r['tokens']:>12,}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}"
              f"{r['majority']:>10.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
