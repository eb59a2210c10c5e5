"""The items of a multiple-choice task: read from a local JSONL file (and checked), or built from held-out text.

A task file has one item per line, {"context": str, "choices": [str, ...], "gold": int}, the format that
lm-evaluation-harness reads with `dataset_path: json` (lmtrain/evals/harness.py writes the config). Every bad
line is reported, with its file and line number, before training starts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lmtrain.config.recipe import EvalConfig, EvalTaskConfig
from lmtrain.errors import UserError

BUILT_ITEMS = 200
"""Items a built task has when its max_items is 0."""
LINE_CONTEXT_LINES = 3
"""Whole lines before the line to complete (fewer at the top of a document)."""
LINE_MIN_CHARS = 12
"""Lines of at most this many non-blank characters (`)`, `else:`, `return x`) are neither asked nor offered:
they are too alike across documents to tell apart."""
LINE_MAX_CHARS = 100
"""Nor are longer lines (a data table, a long string): a choice must fit in a small model's context."""
LINE_CHOICES = 4
SHOWN_PROBLEMS = 10
LOCAL_TASKS = "eval_tasks"
"""The folder of an exported model that holds the tasks it was evaluated on in the loop (write_local_tasks), so
that evaluate_model.py scores the same items with lm-eval."""


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class LocalTask:
    """A task's items, ready to score, and where they came from (for messages)."""

    name: str
    items: list[Item]
    delimiter: str
    origin: str
    """The task file, or what the task was built from."""

    def to_jsonl(self) -> str:
        return "".join(
            json.dumps({"context": i.context, "choices": list(i.choices), "gold": i.gold}, ensure_ascii=False) + "\n"
            for i in self.items
        )


def load_tasks(config: EvalConfig, held_out: dict[str, list[str]], first_source: str) -> list[LocalTask]:
    """The recipe's tasks, read or built; `held_out` holds held-out documents by source name (data prep's sample)."""
    tasks = []
    for i, task in enumerate(config.tasks):
        where = f"eval.tasks.{i}"
        if task.path:
            items = read_task_file(Path(task.path), f"{where}.path")[: task.max_items or None]
            tasks.append(LocalTask(task.name, items, _delimiter(task, " "), task.path))
        else:
            source = task.source or first_source
            if source not in held_out:
                raise UserError(
                    f"{where}.source: {source!r} is not a data source with held-out text; "
                    f"choose one of {', '.join(sorted(held_out))}"
                )
            items = line_completion_items(held_out[source], task.max_items or BUILT_ITEMS, config.seed)
            if not items:
                raise UserError(
                    f"{where}: the held-out text of {source!r} has too few lines of {LINE_MIN_CHARS + 1} to "
                    f"{LINE_MAX_CHARS} characters in different documents to build line_completion items; raise "
                    "data.validation_fraction"
                )
            origin = f"line_completion items from {len(held_out[source])} held-out documents of {source}"
            tasks.append(LocalTask(task.name, items, _delimiter(task, ""), origin))
    return tasks


def write_local_tasks(tasks: list[LocalTask], folder: Path) -> None:
    """Each task's items as <name>.jsonl, and tasks.json: {name: {"delimiter": ..., "origin": ...}}."""
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        (folder / f"{task.name}.jsonl").write_text(task.to_jsonl(), encoding="utf-8")
    described = {task.name: {"delimiter": task.delimiter, "origin": task.origin} for task in tasks}
    (folder / "tasks.json").write_text(json.dumps(described, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_local_tasks(folder: Path) -> list[LocalTask]:
    """The tasks write_local_tasks wrote."""
    described = json.loads((folder / "tasks.json").read_text(encoding="utf-8"))
    return [
        LocalTask(name, read_task_file(folder / f"{name}.jsonl", str(folder)), info["delimiter"], info["origin"])
        for name, info in described.items()
    ]


def _delimiter(task: EvalTaskConfig, default: str) -> str:
    return default if task.delimiter is None else task.delimiter


def read_task_file(path: Path, key: str) -> list[Item]:
    """The items of a JSONL task file; every malformed line is reported at once, by file and line number."""
    if not path.is_file():
        raise UserError(f"{key}: {path} is not a file; write the task as JSONL lines of context, choices and gold")
    items, problems = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = _item(line)
            if isinstance(item, str):
                problems.append(f"{path}:{number}: {item}")
            else:
                items.append(item)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        raise UserError(
            f"{key}: {len(problems)} malformed item(s) in {path}; each line must be "
            f'{{"context": "...", "choices": ["...", "..."], "gold": <index of the right choice>}}:\n{shown}{more}'
        )
    if not items:
        raise UserError(f"{key}: {path} holds no items")
    return items


def _item(line: str) -> Item | str:
    """The item on a line, or what is wrong with it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(row, dict):
        return f"expected an object, got {type(row).__name__}"
    missing = [key for key in ("context", "choices", "gold") if key not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    context, choices, gold = row["context"], row["choices"], row["gold"]
    if not isinstance(context, str):
        return f"context must be a string, got {type(context).__name__}"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        return "choices must be a list of at least two non-empty strings"
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        return f"gold {gold!r} is not the index of one of the {len(choices)} choices (0 to {len(choices) - 1})"
    return Item(context, tuple(choices), gold)


def line_completion_items(documents: list[str], count: int, seed: int) -> list[Item]:
    """Up to `count` items "how does this line end": the LINE_CONTEXT_LINES lines before a line of one document
    and that line up to a space (between 30 % and 70 % of its text) as the context; the rest of the line among
    the rests of LINE_CHOICES - 1 lines of other documents, cut the same way, the right one at a random place.
    Cutting before a space keeps the cut on a token boundary (byte-level BPE starts a token at a space), so
    every choice adds tokens of its own. The same seed gives the same items."""
    rng = random.Random(seed)
    lines = [document.split("\n") for document in documents]
    usable = [(d, i) for d, doc in enumerate(lines) for i, line in enumerate(doc) if _cuts(line)]
    asked = [(d, i) for d, i in usable if i > 0]
    items = []

    def cut(d: int, i: int) -> tuple[str, str]:
        line = lines[d][i]
        at = rng.choice(_cuts(line))
        return line[:at], line[at:]

    for d, i in sorted(rng.sample(asked, min(count, len(asked)))):
        head, answer = cut(d, i)
        # rests of other documents' lines, distinct, none equal to the answer; too few gives no item here
        pool = rng.sample(usable, min(len(usable), 64))
        distractors = list(dict.fromkeys(rest for o, j in pool if o != d for rest in [cut(o, j)[1]] if rest != answer))
        if len(distractors) < LINE_CHOICES - 1:
            continue
        choices = distractors[: LINE_CHOICES - 1]
        gold = rng.randrange(LINE_CHOICES)
        choices.insert(gold, answer)
        context = "\n".join(lines[d][max(0, i - LINE_CONTEXT_LINES) : i] + [head])
        items.append(Item(context, tuple(choices), gold))
    return items


def _cuts(line: str) -> list[int]:
    """Where a line may be cut: before a space between 30 % and 70 % of its text (indentation aside), for lines
    of LINE_MIN_CHARS to LINE_MAX_CHARS."""
    text = line.lstrip()
    indent = len(line) - len(text)
    if not LINE_MIN_CHARS < len(text.rstrip()) or len(line) > LINE_MAX_CHARS:
        return []
    return [indent + c for c in range(int(0.3 * len(text)), int(0.7 * len(text)) + 1) if text[c] == " "]
