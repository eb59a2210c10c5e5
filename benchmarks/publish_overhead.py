"""Cost of publishing while training: steps/s of the smoke model with hub.push=checkpoints against hub.push=none.

    python benchmarks/publish_overhead.py [--steps 80] [--checkpoint-every 10] [--pairs 2] [--threads 1] [--zero3-steps 30]

The smoke recipe (recipes/smoke/pretrain.yaml: 7.4M parameters, 256-token blocks of the standard library, fp32),
with a checkpoint every `--checkpoint-every` steps, trained by `python train.py` twice per pair: once publishing
nothing, once publishing every checkpoint as a branch (and the final model on `main`) to a local Hub
(tests/hub_server.py, the real huggingface_hub client on the other side) that runs in its own process, as a
remote hub would. The order alternates pair by pair (off, on, then on, off), so that drifting load on a shared
machine falls on both alike.

What is compared is the loop's own training speed: the tokens/s of each 5-step log window of metrics.jsonl,
which leaves out evaluation and the checkpoint saves, both of which are the same with and without publishing.
With publishing, the uploads run in a background thread during these windows: what they cost the steps is what
is measured. `push_vs_off` is the median over the pairs of (median window speed, push on) ÷ (the same, push off).
Staging a checkpoint (gathering the weights and writing the export the uploader sends) is the one part a step
waits for; it is reported apart, from the runs' own log (`hub: staged ... in X s`): for the 1-process runs, and
for one run of `--zero3-steps` steps under 2-process ZeRO-3 (recipes/accelerate/cpu_zero3_2proc.yaml), where the
16-bit weights are gathered from both ranks first. `--pairs 0` runs only the latter.
Prints a line per run, a summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.hub_server import HubServer
with HubServer(tokens={"hf_bench"}, user="bench") as hub:
    print(hub.url, flush=True)
    time.sleep(10**6)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training (default 1)")
    parser.add_argument("--zero3-steps", type=int, default=30, help="steps of the 2-process ZeRO-3 run (0 = none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="publish-bench-") as tmp:
        run(Path(tmp), args)


def run(root: Path, args: argparse.Namespace) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
    recipe = REPO_ROOT / "recipes/smoke/pretrain.yaml"
    inputs = [f"tokenizer.dir={root / 'tokenizer'}", f"data.dir={root / 'data'}"]
    for script in ("tokenizer/train_tokenizer.py", "data_prep/prepare.py"):
        subprocess.run([sys.executable, script, str(recipe), *inputs], cwd=REPO_ROOT, env=env, check=True,
                       capture_output=True)  # fmt: skip
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(REPO_ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        hub_env = {**env, "HF_ENDPOINT": url, "HF_TOKEN": "hf_bench", "HF_HUB_OFFLINE": "0",
                   "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(root / "hf_home")}  # fmt: skip
        Path(root / "hf_home").mkdir()
        (root / "hf_home" / ".agent_harnesses.json").write_text('{"standardEnvVars": [], "harnesses": {}}')
        speeds, staging = {"off": [], "on": []}, []
        for pair in range(args.pairs):
            for way in ("off", "on") if pair % 2 == 0 else ("on", "off"):
                run_dir = root / f"run-{pair}-{way}"
                overrides = [*inputs, f"run_dir={run_dir}", f"train.max_steps={args.steps}", "train.log_every=5",
                             f"train.checkpoint_every={args.checkpoint_every}", "train.eval_every=100000",
                             "train.warmup_steps=5", f"train.keep_last={args.steps}"]  # fmt: skip
                if way == "on":
                    overrides += [f"hub.repo_id=bench/smoke-{pair}", "hub.push=checkpoints"]
                started = time.perf_counter()
                result = subprocess.run([sys.executable, "train.py", str(recipe), *overrides], cwd=REPO_ROOT,
                                        env=hub_env if way == "on" else env, capture_output=True, text=True)  # fmt: skip
                if result.returncode != 0:
                    raise RuntimeError(f"train.py ({way}) failed:\n{result.stderr[-4000:]}")
                records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                windows = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first warms up
                speeds[way].append(statistics.median(windows))
                if way == "on":
                    staging += [float(s) for s in re.findall(r"hub: staged \S+ \(.*?\) in ([\d.]+) s", result.stderr)]
                print(f"pair {pair + 1}, push {way}: median {speeds[way][-1]:,.0f} tokens/s over {len(windows)} "
                      f"windows, whole run {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        zero3 = zero3_staging(root, recipe, inputs, hub_env, args) if args.zero3_steps else []
    finally:
        server.kill()
    result = {"steps": args.steps, "checkpoint_every": args.checkpoint_every, "threads": args.threads}
    if speeds["on"]:
        ratios = [on / off for on, off in zip(speeds["on"], speeds["off"])]
        result.update(push_vs_off=round(statistics.median(ratios), 4), pairs=[round(r, 4) for r in ratios],
                      tokens_per_s={way: [round(v) for v in values] for way, values in speeds.items()},
                      staging_s_per_checkpoint=round(statistics.median(staging), 3))  # fmt: skip
        print(f"\npush_vs_off (median of pairs): {result['push_vs_off']:.3f} "
              f"({', '.join(f'{r:.3f}' for r in ratios)}); goal ≥ 0.98 | staging per checkpoint, 1 process: "
              f"median {statistics.median(staging):.2f} s ({len(staging)} checkpoints)")  # fmt: skip
    if zero3:
        seconds, mib = statistics.median(s for s, _ in zero3), statistics.median(m for _, m in zero3)
        result.update(zero3_staging_s_per_checkpoint=round(seconds, 3), zero3_staged_mib=round(mib, 1))
        print(f"staging per checkpoint, 2-process ZeRO-3 (gather from both ranks + export): median {seconds:.2f} s for "
              f"{mib:.1f} MiB of weights ({mib / seconds:.0f} MiB/s; {len(zero3)} checkpoints)")  # fmt: skip
    print(json.dumps(result))


def zero3_staging(root: Path, recipe: Path, inputs: list[str], env: dict, args) -> list[tuple[float, float]]:
    """(seconds, MiB) of each checkpoint's staging in a 2-process ZeRO-3 run that publishes every checkpoint."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO_ROOT / "recipes/accelerate/cpu_zero3_2proc.yaml"), "--main_process_port", "29673"]  # fmt: skip
    overrides = [*inputs, f"run_dir={root / 'run-zero3'}", f"train.max_steps={args.zero3_steps}", "train.log_every=5",
                 f"train.checkpoint_every={args.checkpoint_every}", "train.eval_every=100000", "train.warmup_steps=5",
                 "hub.repo_id=bench/smoke-zero3", "hub.push=checkpoints"]  # fmt: skip
    result = subprocess.run([*launch, "train.py", str(recipe), *overrides], cwd=REPO_ROOT,
                            env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"the ZeRO-3 run failed:\n{result.stderr[-4000:]}")
    found = re.findall(r"hub: staged \S+ \(([\d.,]+) MiB of weights\) in ([\d.]+) s", result.stderr)
    return [(float(seconds), float(mib.replace(",", ""))) for mib, seconds in found]


if __name__ == "__main__":
    main()
