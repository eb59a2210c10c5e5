"""Fine-tuning records: read from local files, the Hub or the standard library, each with its location.

Every record keeps where it came from (`file:line`, `dataset/split row N`), so that any problem the
tasks find in it (lmtrain/finetune/sft.py, lmtrain/finetune/classify.py) names the record and what to do.

The offline smoke data (`data.source: python_stdlib`) is made from the running interpreter's standard
library, real code and documentation written by people that exists on every machine with Python:
- sft: "Explain what this function does" + the function's code (docstring removed) → the first
  paragraph of its docstring;
- classify: a function's code → the standard-library package it belongs to (data.stdlib_packages).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import inspect
import io
import json
import re
import sysconfig
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmtrain.config.finetune import FinetuneRecipe
from lmtrain.corpus.sources import is_validation_document, jsonl_lines, resolve_files
from lmtrain.errors import UserError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
MAX_LISTED_PROBLEMS = 20

SFT_INSTRUCTION = "Explain what this Python function does."
"""The user turn of the smoke SFT examples, followed by the function's code."""
STDLIB_MAX_CODE_CHARS = 400
STDLIB_MAX_ANSWER_CHARS = 300


@dataclass
class Record:
    where: str
    """Where the record came from, for messages: `path:line`, `dataset/split row N`, ..."""
    row: dict


@dataclass
class Splits:
    train: list[Record]
    validation: list[Record]
    description: str


class RecordProblems:
    """Problems found in records, reported together (the first ones listed) as one UserError."""

    def __init__(self, what_to_do: str):
        self.lines: list[str] = []
        self.count = 0
        self.what_to_do = what_to_do

    def add(self, where: str, message: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_LISTED_PROBLEMS:
            self.lines.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        more = f"\n  ... and {self.count - len(self.lines)} more" if self.count > len(self.lines) else ""
        listing = "\n".join(f"  - {line}" for line in self.lines)
        raise UserError(f"{self.count} bad record(s) in the fine-tuning data:\n{listing}{more}\n{self.what_to_do}")


def load_splits(recipe: FinetuneRecipe) -> Splits:
    """Training and validation records as the recipe's data section says."""
    d = recipe.data
    if d.source == "python_stdlib":
        records = list(stdlib_sft_records() if recipe.task == "sft" else stdlib_classify_records(d.stdlib_packages))
        train, validation = _hash_split(records, d.validation_fraction)
        origin = f"python_stdlib ({stdlib_root()})"
    elif d.source == "files":
        train = list(read_files(d.train_files, "data.train_files"))
        if d.validation_files:
            validation = list(read_files(d.validation_files, "data.validation_files"))
        else:
            train, validation = _hash_split(train, d.validation_fraction)
        origin = ", ".join(d.train_files)
    else:
        train = list(read_hub(d.dataset, d.dataset_config, d.train_split))
        if d.validation_split:
            validation = list(read_hub(d.dataset, d.dataset_config, d.validation_split))
        else:
            train, validation = _hash_split(train, d.validation_fraction)
        origin = f"{d.dataset} ({d.dataset_config or 'default'})"
    held_out = "" if (d.validation_files or d.validation_split) else f" ({d.validation_fraction:.0%} held out by hash)"
    if d.max_train_examples:
        train = train[: d.max_train_examples]
    if d.max_validation_examples:
        validation = validation[: d.max_validation_examples]
    if not train:
        raise UserError(f"data: no training records in {origin}; check data.train_files / data.dataset")
    if not validation:
        raise UserError(
            f"data: no validation records{held_out}; add data.validation_files (or "
            "data.validation_split), or raise data.validation_fraction"
        )
    return Splits(
        train, validation, f"{origin}: {len(train):,} training and {len(validation):,} validation records{held_out}"
    )


def _hash_split(records: list[Record], fraction: float) -> tuple[list[Record], list[Record]]:
    """Deterministic split by a hash of each record's content: the same on every run and machine."""
    train, validation = [], []
    for record in records:
        key = json.dumps(record.row, sort_keys=True, ensure_ascii=False, default=str)
        (validation if is_validation_document(key, fraction) else train).append(record)
    return train, validation


# ---------------------------------------------------------------------------- local files and the Hub


def read_files(patterns: list[str], key: str) -> Iterator[Record]:
    """Records of .jsonl(.gz) (one JSON object per line), .json (a list of objects), .csv (a header row)
    and .parquet files. A line that is not a JSON object is an error naming the file and line."""
    problems = RecordProblems("Fix or remove these lines; every line of a .jsonl file must be one JSON object.")
    records = []
    for path in resolve_files(patterns, key, SUFFIXES):
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            records.extend(_read_jsonl(path, problems))
        elif path.suffix == ".json":
            records.extend(_read_json(path))
        elif path.suffix == ".csv":
            records.extend(_read_csv(path, problems))
        else:
            records.extend(_read_parquet(path))
    problems.raise_if_any()
    return iter(records)


def _read_jsonl(path: Path, problems: RecordProblems) -> Iterator[Record]:
    for line in jsonl_lines(path, "re-create it"):
        if line.problem == "not_utf8":
            problems.add(line.where, f"not UTF-8 ({line.detail}); save the file as UTF-8")
        elif line.problem:
            problems.add(line.where, f"not valid JSON ({line.detail})")
        elif not isinstance(line.value, dict):
            problems.add(line.where, f"a JSON {type(line.value).__name__}, not an object with named fields")
        else:
            yield Record(line.where, line.value)


def _read_json(path: Path) -> Iterator[Record]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path}: not a readable JSON file ({exc}); a .json file must hold a list of objects "
            "(or use .jsonl, one object per line)"
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path}: a .json file must hold a list of objects (or use .jsonl, one object per line)")
    for i, row in enumerate(rows):
        yield Record(f"{path} item {i}", row)


def _read_csv(path: Path, problems: RecordProblems) -> Iterator[Record]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2
    for row in reader:
        where = f"{path}:{start}"
        start = reader.line_num + 1
        extra = row.pop(None, [])  # DictReader files extra fields under None, and gives missing ones None
        if extra or None in row.values():
            fields = sum(value is not None for value in row.values()) + len(extra)
            problems.add(where, f"{fields} field(s) where the header has {len(row)}; quote fields that hold commas")
            continue
        yield Record(where, dict(row))


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    for i, row in enumerate(table.to_pylist()):
        yield Record(f"{path} row {i}", row)


def read_hub(dataset: str, config: str, split: str) -> Iterator[Record]:
    import datasets  # slow to import; only Hub data needs it here

    try:
        rows = datasets.load_dataset(dataset, config or None, split=split)
    except Exception as exc:  # offline, unknown name, missing config/split: all end the same way for the user
        raise UserError(
            f"data: could not load Hub dataset {dataset!r} (config {config or 'default'}, split "
            f"{split!r}): {type(exc).__name__}: {exc}. The Hub may be unreachable from this machine; "
            "download the dataset where it is and use data.source=files with a local copy"
        ) from None
    for i, row in enumerate(rows):
        yield Record(f"{dataset}/{split} row {i}", row)


# ---------------------------------------------------------------------------- the standard library


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass
class StdlibFunction:
    where: str
    """relative/path.py:line (qualified name)"""
    package: str
    code: str
    """The function's source, dedented, docstring removed."""
    summary: str
    """The first paragraph of its docstring, on one line."""
    source: str
    """The function's source with its docstring."""


def stdlib_functions(packages: list[str] | None = None) -> Iterator[StdlibFunction]:
    """Documented functions and methods of the standard library (tests and installed packages left out),
    in a fixed order: sorted by a hash of their location, so any prefix is a mix of the whole."""
    root = stdlib_root()
    if packages is not None:
        missing = [p for p in packages if not (root / p).is_dir() and not (root / f"{p}.py").is_file()]
        if missing:
            raise UserError(
                f"data.stdlib_packages: {', '.join(missing)} not found in the standard library at {root}; "
                "choose packages that exist there, e.g. asyncio, email, logging, unittest, xml"
            )
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if skip.intersection(parts):
            continue
        package = parts[0].removesuffix(".py")
        if packages is not None and package not in packages:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        lines = source.splitlines()
        for node, qualname in _functions(tree):
            item = _describe_function(node, qualname, lines, path.relative_to(root), package)
            if item is not None:
                found.append(item)
    found.sort(key=lambda f: hashlib.blake2b(f.where.encode(), digest_size=8).digest())
    yield from found


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[ast.AST, str]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, prefix + node.name
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def _describe_function(node, qualname: str, lines: list[str], rel: Path, package: str) -> StdlibFunction | None:
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    source = textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno]))
    docstring = ast.get_docstring(node, clean=True)
    code, summary = source, ""
    if docstring and node.body and isinstance(node.body[0], ast.Expr):
        doc = node.body[0]
        kept = lines[first - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
        code = textwrap.dedent("\n".join(kept)).rstrip()
        summary = " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())
        if len(node.body) == 1:  # nothing but the docstring: nothing to explain
            summary = ""
    if not summary or len(summary) > STDLIB_MAX_ANSWER_CHARS or len(code) > STDLIB_MAX_CODE_CHARS:
        summary = ""
    if not re.search(r"[A-Za-z]{3}", summary):
        summary = ""
    return StdlibFunction(f"{rel.as_posix()}:{node.lineno} ({qualname})", package, code, summary, source)


def stdlib_sft_records() -> Iterator[Record]:
    """Instruction data: explain a standard-library function (code without its docstring) → its summary."""
    for f in stdlib_functions():
        if f.summary:
            prompt = f"{SFT_INSTRUCTION}\n\n{f.code}"
            yield Record(f"python_stdlib:{f.where}", {"prompt": prompt, "completion": f.summary})


def stdlib_classify_records(packages: list[str]) -> Iterator[Record]:
    """Labelled data: a function's source → the standard-library package it belongs to."""
    for f in stdlib_functions(packages):
        yield Record(f"python_stdlib:{f.where}", {"text": f.source, "label": f.package})
