"""Continue prompts with a trained model directory (this project's export or any HF causal LM).

    python generate.py runs/smoke/final --prompt "def fibonacci(n):" --max-new-tokens 64
    python generate.py runs/smoke/final --prompts-file prompts.txt --temperature 0.8 --top-p 0.95
"""

import argparse

from lmtrain.cli import run
from lmtrain.generation import SamplingSettings, generate_texts, load_model, read_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a model directory, e.g. runs/smoke/final")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", help="a UTF-8 text file with one prompt per line")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding; > 0 samples")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1.0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling")
    args = parser.parse_args()

    prompts = read_prompts(args.prompt, args.prompts_file)
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    model, tokenizer = load_model(args.model_dir)
    for prompt, completion in zip(prompts, generate_texts(model, tokenizer, prompts, settings)):
        print(f"--- {settings.describe()}\n{prompt}{completion}\n")


if __name__ == "__main__":
    run(main)
