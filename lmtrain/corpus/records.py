"""Fine-tuning records: read from any registered source (lmtrain/corpus/sources.py: local files, the Hub, a
kind of your own) with the same readers as pretraining, or made from the standard library.

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
import dataclasses
import hashlib
import inspect
import json
import re
import sysconfig
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmtrain.config.finetune import FinetuneDataConfig, FinetuneRecipe
from lmtrain.config.recipe import SourceConfig
from lmtrain.corpus.sources import Request, is_validation_document, source_kind, source_label
from lmtrain.errors import UserError

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
        # Not the registered python_stdlib source (whole files as text): labelled examples made from it.
        records = list(stdlib_sft_records() if recipe.task == "sft" else stdlib_classify_records(d.stdlib_packages))
        train, validation = _hash_split(records, d.validation_fraction)
        origin = f"python_stdlib ({stdlib_root()})"
        held_out = True
    else:
        config = source_config(d)
        train = read_records(config, "data.train_files" if d.source == "files" else "data")
        validation_config = _validation_config(d, config)
        held_out = validation_config is None
        if held_out:
            train, validation = _hash_split(train, d.validation_fraction)
        else:
            key = "data.validation_files" if d.validation_files else "data.validation_split"
            validation = read_records(validation_config, key)
        origin = ", ".join(d.train_files) if d.source == "files" else source_label(config, 0)
    how = f" ({d.validation_fraction:.0%} held out by hash)" if held_out else ""
    if d.max_train_examples:
        train = train[: d.max_train_examples]
    if d.max_validation_examples:
        validation = validation[: d.max_validation_examples]
    if not train:
        raise UserError(f"data: no training records in {origin}; check data.train_files / data.dataset")
    if not validation:
        raise UserError(
            f"data: no validation records{how}: {origin} has a single record; add records, or give "
            "data.validation_files (or data.validation_split)"
            if held_out
            else f"data: no validation records in {d.validation_files or d.validation_split}; check that key"
        )
    return Splits(
        train, validation, f"{origin}: {len(train):,} training and {len(validation):,} validation records{how}"
    )


def source_config(d: FinetuneDataConfig) -> SourceConfig:
    """The training data as a source: the keys pretraining's data.sources use, read by the same readers."""
    return SourceConfig(
        kind=d.source,
        paths=list(d.train_files),
        dataset=d.dataset,
        dataset_config=d.dataset_config,
        split=d.train_split,
    )


def _validation_config(d: FinetuneDataConfig, train: SourceConfig) -> SourceConfig | None:
    if d.validation_files:
        return dataclasses.replace(train, paths=list(d.validation_files))
    if d.validation_split:
        return dataclasses.replace(train, split=d.validation_split)
    return None


def _hash_split(records: list[Record], fraction: float) -> tuple[list[Record], list[Record]]:
    """Deterministic split by a hash of each record's content: the same on every run and machine. When
    the hash holds out no record (few records, a small fraction), the round(fraction x n) records (at least
    one) whose hashes come nearest to being held out are, so that a small data set still has validation."""
    train, validation = [], []
    keys = [json.dumps(r.row, sort_keys=True, ensure_ascii=False, default=str) for r in records]
    for record, key in zip(records, keys):
        (validation if is_validation_document(key, fraction) else train).append(record)
    if len(records) < 2:  # a lone record trains; the caller says that validation needs more
        return records, []
    if validation:
        return train, validation
    order = sorted(range(len(records)), key=lambda i: hashlib.blake2b(keys[i].encode(), digest_size=8).digest())
    held = set(order[: max(1, round(fraction * len(records)))])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def read_records(config: SourceConfig, key: str) -> list[Record]:
    """Every record of a registered source (lmtrain/corpus/sources.py), each with its location; records that
    cannot be read (a line that is not a JSON object, a CSV row with a field too many) are one error."""
    problems = RecordProblems("Fix or remove these records; every record must be an object with named fields.")
    records = []
    for row in source_kind(config.kind, key).read(config, Request(key)):
        if row.problem == "empty_file":
            continue
        if row.problem:
            problems.add(row.where, row.detail or row.problem.replace("_", " "))
        else:
            records.append(Record(row.where, row.values))
    problems.raise_if_any()
    return records


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
