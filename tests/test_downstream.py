"""Downstream multiple-choice evaluation: task files, the line_completion task, scoring in the loop, lm-eval, processes.

- Bad input: every malformed line of a task file is named by file and line; recipe mistakes in `eval:` are named
  by key; an unknown lm-eval task gets a did-you-mean; a Hub task whose data is not cached says how to prepare it.
- line_completion: the right choice completes the context's last line as in its held-out document; the others
  come from other documents; the same seed gives the same items.
- Scoring: on a tiny random Llama whose context (96) is shorter than some items (truncated from the left), acc and
  acc_norm of the loop equal those computed by hand from one unpadded forward per choice, and 2 simulated ranks
  give the same log-likelihoods, bit for bit, as 1.
- lm-eval: lm_eval (HFLM, the exported task configs) on the same saved model gives the same acc and acc_norm, and
  log-likelihoods within 1e-4, as the loop.
- For real: a training run logs eval_bpb and the tasks' metrics in metrics.jsonl and its summary line, exports
  its tasks, and evaluate_model.py on the export reproduces the last in-loop figures; a 2-process ZeRO-3 run
  starting from the same weights logs the same step-0 figures as 1 process; a bad task file stops the run
  before training.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from lmtrain.config.recipe import RecipeError, load_recipe
from lmtrain.data.prepare import read_held_out
from lmtrain.errors import UserError
from lmtrain.evals import harness
from lmtrain.evals.tasks import (
    LINE_CHOICES,
    LocalTask,
    line_completion_items,
    load_tasks,
    read_task_file,
    write_local_tasks,
)
from lmtrain.tokenizer.bpe import load_tokenizer
from lmtrain.training.downstream import DownstreamEval
from tests.conftest import REPO_ROOT, prepare_recipe, run_cli
from tests.test_loss_weighting import launch

TINY = """
tokenizer: {vocab_size: 512, min_frequency: 2}
data:
  sources: [{kind: python_stdlib, max_documents: 150}]
  clean: {strip_html: false}
  seq_len: 128
  validation_fraction: 0.1
model: {hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 172}
train: {max_steps: 40, global_batch_size: 8, micro_batch_size: 4, warmup_steps: 4, lr: 3.0e-3,
        eval_every: 20, eval_batches: 4, log_every: 10}
eval:
  every: 20
  tasks: [{name: lines, build: line_completion, max_items: 40}]
"""
MAX_LENGTH = 96

QA = [
    {"context": "The capital of France is", "choices": ["Paris", "London", "a city in Spain"], "gold": 0},
    {"context": "def add(a, b):\n    return", "choices": ["a + b", "None", "print(a)", "a - b"], "gold": 0},
    {"context": "x = 1\n" * 80 + "y =", "choices": ["x + 1", "2"], "gold": 1},  # longer than the context
    {"context": "import os\n", "choices": ["import sys", "os.path", "class A:"], "gold": 2},
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    return root, prepare_recipe(root, TINY)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- bad input


def test_every_malformed_line_of_a_task_file_is_named(tmp_path):
    path = write_jsonl(
        tmp_path / "task.jsonl",
        [
            QA[0],
            "{not json",
            {"context": "a", "choices": ["b", "c"]},
            {"context": "a", "choices": ["b", "c", "d"], "gold": 3},
            {"context": "a", "choices": "b", "gold": 0},
            {"context": 1, "choices": ["b", "c"], "gold": 0},
        ],
    )
    with pytest.raises(UserError) as error:
        read_task_file(path, "eval.tasks.0.path")
    message = str(error.value)
    assert f"eval.tasks.0.path: 5 malformed item(s) in {path}" in message
    assert f"{path}:2: not JSON" in message
    assert f"{path}:3: missing gold" in message
    assert f"{path}:4: gold 3 is not the index of one of the 3 choices (0 to 2)" in message
    assert f"{path}:5: choices must be a list of at least two non-empty strings" in message
    assert f"{path}:6: context must be a string" in message
    with pytest.raises(UserError, match="is not a file"):
        read_task_file(tmp_path / "missing.jsonl", "eval.tasks.0.path")


def test_recipe_eval_mistakes_are_named_by_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "train": {"eval_every": 20},
                "eval": {
                    "every": 30,
                    "tasks": [
                        {"name": "a b", "path": "x.jsonl"},
                        {"name": "t", "path": "x.jsonl", "build": "line_completion"},
                        {"name": "t", "build": "line_completions"},
                        {"name": "u", "path": "x.jsonl", "source": "zh"},
                    ],
                },
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    problems = error.value.problems
    assert (
        "eval.tasks.2.build: 'line_completions' is not one of '', 'line_completion'; did you mean 'line_completion'?"
        in problems
    )
    # the typed build failed: the value checks run once the types are right
    recipe.write_text(recipe.read_text().replace("line_completions", "line_completion"), encoding="utf-8")
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    problems = error.value.problems
    assert any(p.startswith("eval.tasks.0.name: 'a b' must be a non-empty name") for p in problems)
    assert (
        "eval.tasks.1: set exactly one of path (a JSONL file of items) and build (e.g. build: line_completion)"
        in problems
    )
    assert "eval.tasks.3.source: only a built task reads a source; remove it" in problems
    assert "eval.tasks: names must differ; t is used twice" in problems
    assert any(p.startswith("eval.every: 30 is not a multiple of train.eval_every 20") for p in problems)
    with pytest.raises(RecipeError, match="eval.taks: unknown key; did you mean eval.tasks"):
        load_recipe(recipe, ["eval.taks=[]"])


def test_a_built_task_from_an_unknown_source_lists_the_sources():
    config = SimpleNamespace(
        tasks=[SimpleNamespace(path="", build="line_completion", source="zh", max_items=0)], seed=1
    )
    with pytest.raises(UserError, match=r"eval.tasks.0.source: 'zh' is not a data source .* choose one of en"):
        load_tasks(config, {"en": ["a\nb"]}, "en")


# ---------------------------------------------------------------------------- line_completion


def test_line_completion_asks_for_the_rest_of_a_line_among_rests_of_other_documents():
    documents = ["\n".join(f"line {i:02d} of doc {d:02d}" for i in range(30)) for d in range(5)]
    items = line_completion_items(documents, 50, seed=7)
    assert len(items) == 50 and items == line_completion_items(documents, 50, seed=7)
    assert items != line_completion_items(documents, 50, seed=8)
    assert set(item.gold for item in items) == set(range(LINE_CHOICES))  # the right one is not always in one place
    for item in items:
        *before, head = item.context.split("\n")
        assert 1 <= len(before) <= 3 and not head.endswith(" ")
        d, i = int(before[-1].split()[-1]), int(before[-1].split()[1])
        assert head + item.choices[item.gold] == f"line {i + 1:02d} of doc {d:02d}"
        assert len(item.choices) == LINE_CHOICES == len(set(item.choices))
        assert all(c.startswith(" ") and int(c.split()[-1]) != d for k, c in enumerate(item.choices) if k != item.gold)


# ---------------------------------------------------------------------------- scoring, by hand and by lm-eval


@pytest.fixture(scope="module")
def scored(prepared, tmp_path_factory):
    """A tiny random Llama saved with the run's tokenizer, a file task and a built task, and the loop's scorer."""
    root, recipe = prepared
    out = tmp_path_factory.mktemp("scored")
    tokenizer = load_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=MAX_LENGTH,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_jsonl(out / "qa.jsonl", QA)
    eval_config = load_recipe(recipe, ["eval.tasks=[{name: qa, path: " + str(out / "qa.jsonl") + "}, "
                                       "{name: lines, build: line_completion, max_items: 12}]"]).eval  # fmt: skip
    tasks = load_tasks(eval_config, read_held_out(root / "data"), "python_stdlib.0")
    write_local_tasks(tasks, out / "model" / "eval_tasks")
    return SimpleNamespace(model=model, tokenizer=tokenizer, tasks=tasks, dir=out / "model")


def fake_accelerator(rank, world, reduce):
    return SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"), reduce=reduce)


def hand_loglikelihoods(model, requests) -> list[float]:
    with torch.no_grad():
        values = []
        for r in requests:
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([r.tokens])).logits[0], -1)
            n = len(r.targets)
            values.append(sum(logprobs[len(r.tokens) - n + k, t].item() for k, t in enumerate(r.targets)))
        return values


def test_loop_scores_equal_the_hand_computation_on_one_and_two_ranks(scored):
    evaluator = DownstreamEval(scored.tasks, scored.tokenizer, MAX_LENGTH, batch_tokens=3 * MAX_LENGTH)
    assert len(evaluator.batches) > 2  # padded to each batch's first (longest) request, within the budget
    assert all(len(b) * len(evaluator.requests[b[0]].tokens) <= 3 * MAX_LENGTH for b in evaluator.batches)
    long_item = [r for r in evaluator.requests if r.task == 0 and r.item == 2]
    assert all(r.truncated and len(r.tokens) == MAX_LENGTH for r in long_item)
    assert "qa (4 items, 1 truncated from the left" in evaluator.describe()

    seen = {}
    one = evaluator.evaluate(scored.model, fake_accelerator(0, 1, lambda t, reduction: seen.setdefault(1, t)))
    # two ranks: rank 1 first, then rank 0, whose "reduce" adds rank 1's vector to its own
    evaluator.evaluate(scored.model, fake_accelerator(1, 2, lambda t, reduction: seen.setdefault("r1", t.clone())))
    two = evaluator.evaluate(
        scored.model, fake_accelerator(0, 2, lambda t, reduction: seen.setdefault("r0", t.clone()) + seen["r1"])
    )
    assert one == two
    assert not ((seen["r0"] != 0) & (seen["r1"] != 0)).any()  # each request scored by one rank
    assert torch.equal(seen["r0"] + seen["r1"], seen[1])  # the same bits as on one rank

    hand = np.array(hand_loglikelihoods(scored.model, evaluator.requests))
    assert np.allclose(seen[1].numpy(), hand, atol=1e-4)
    for t, task in enumerate(scored.tasks):
        lls = hand[[r.task == t for r in evaluator.requests]]
        acc = acc_norm = 0
        for item in task.items:
            mine, lls = lls[: len(item.choices)], lls[len(item.choices) :]
            acc += int(np.argmax(mine)) == item.gold
            acc_norm += int(np.argmax(mine / [len(c) for c in item.choices])) == item.gold
        assert one[f"{task.name}/acc"] == acc / len(task.items)
        assert one[f"{task.name}/acc_norm"] == acc_norm / len(task.items)


@pytest.fixture(scope="module")
def manager(scored, tmp_path_factory):
    configs = tmp_path_factory.mktemp("configs")
    assert harness.local_task_configs(scored.dir / "eval_tasks", configs) == ["qa", "lines"]
    return harness.task_manager([configs])


def test_lm_eval_gives_the_loop_figures_on_the_saved_model(scored, manager):
    evaluator = DownstreamEval(scored.tasks, scored.tokenizer, MAX_LENGTH, batch_tokens=4 * MAX_LENGTH)
    lls = {}
    loop = evaluator.evaluate(scored.model, fake_accelerator(0, 1, lambda t, reduction: lls.setdefault(0, t)))
    harness.check_tasks(manager, ["qa", "lines"])
    results = harness.evaluate(str(scored.dir), ["qa", "lines"], manager, "", batch_size=4, device="cpu", limit=None)
    for t, task in enumerate(scored.tasks):
        assert results["results"][task.name]["acc,none"] == loop[f"{task.name}/acc"]
        assert results["results"][task.name]["acc_norm,none"] == loop[f"{task.name}/acc_norm"]
        theirs = [float(resp[0]) for s in sorted(results["samples"][task.name], key=lambda s: s["doc_id"])
                  for resp in s["filtered_resps"]]  # fmt: skip
        mine = lls[0].numpy()[[r.task == t for r in evaluator.requests]]
        assert np.allclose(mine, theirs, atol=1e-4)


def test_lm_eval_tasks_that_are_unknown_or_not_cached_say_what_to_do(manager):
    with pytest.raises(
        UserError, match="'arc_eazy' is not an lm-eval task nor a local task of this model; did you mean arc_easy"
    ):
        harness.check_tasks(manager, ["arc_eazy"])
    with pytest.raises(
        UserError,
        match=r"lm-eval task arc_easy: its data is not in the local Hugging Face cache .*--prepare --tasks arc_easy",
    ):
        harness.check_tasks(manager, ["arc_easy"])


def test_the_7b_suite_names_lm_eval_tasks(manager):
    suite = load_recipe(REPO_ROOT / "recipes/llama-7b/pretrain.yaml").eval.suite
    assert {"hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "mmlu", "ceval-valid", "cmmlu"} == set(
        suite
    )
    assert set(suite) <= set(manager.all_tasks)


# ---------------------------------------------------------------------------- for real


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(prepared):
    root, recipe = prepared
    return run_cli("train.py", recipe)


def test_a_run_logs_bpb_and_task_figures_and_lm_eval_on_its_export_agrees(prepared, trained, tmp_path):
    root, _ = prepared
    evals = [r for r in records(root / "run") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    for r in evals:
        assert {"eval_bpb", "eval_bpb/python_stdlib.0", "lines/acc", "lines/acc_norm"} <= set(r)
    last = evals[-1]
    summary = trained.stderr.strip().splitlines()[-1]
    assert f"lines/acc {last['lines/acc']:.3f}" in summary and f"eval_bpb {last['eval_bpb']:.3f}" in summary
    assert "downstream: lines (40 items" in trained.stderr
    assert (root / "run" / "final" / "eval_tasks" / "lines.jsonl").is_file()

    output = tmp_path / "results.json"
    cli = run_cli("evaluate_model.py", root / "run" / "final", "--output", output)
    assert "lines" in cli.stdout
    results = json.loads(output.read_text())["results"]["lines"]
    assert results["acc,none"] == last["lines/acc"] and results["acc_norm,none"] == last["lines/acc_norm"]


@pytest.mark.distributed
def test_two_zero3_processes_log_the_same_figures_as_one(prepared, trained):
    root, recipe = prepared
    same = [
        f"model.init_from={root / 'run' / 'final'}",
        "train.max_steps=1",
        "train.warmup_steps=0",
        "train.eval_every=1",
        "eval.every=0",
    ]
    run_cli("train.py", recipe, f"run_dir={root / 'one'}", *same)
    result = launch(["train.py", str(recipe), f"run_dir={root / 'two'}", *same])
    assert "2 process(es)" in result.stderr
    one, two = records(root / "one")[0], records(root / "two")[0]
    assert one["step"] == two["step"] == 0
    for key in ("lines/acc", "lines/acc_norm"):
        assert one[key] == two[key]
    for key in ("eval_loss", "eval_bpb", "eval_bpb/python_stdlib.0"):
        assert one[key] == pytest.approx(two[key], rel=1e-5)


def test_a_malformed_task_file_stops_the_run_before_training(prepared, tmp_path):
    _, recipe = prepared
    bad = write_jsonl(tmp_path / "bad.jsonl", [QA[0], {"context": "a", "choices": ["b", "c"], "gold": 2}])
    result = run_cli("train.py", recipe, f"run_dir={tmp_path / 'run'}",
                     f"eval.tasks=[{{name: bad, path: {bad}}}]", check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}:2: gold 2 is not the index of one of the 2 choices (0 to 1)" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_local_task_round_trip(tmp_path):
    task = LocalTask("t", read_task_file(write_jsonl(tmp_path / "t.jsonl", QA), "k"), " ", "t.jsonl")
    write_local_tasks([task], tmp_path / "out")
    assert read_task_file(tmp_path / "out" / "t.jsonl", "k") == task.items
    assert json.loads((tmp_path / "out" / "tasks.json").read_text()) == {"t": {"delimiter": " ", "origin": "t.jsonl"}}
