"""Raw documents from the recipe's sources, with a record of everything skipped and why.

Bad records (a JSONL line that is not JSON, a record without the text field, bytes that
are not UTF-8, an empty file) are skipped and counted, with a few `file:line` examples kept
for the manifest; one bad line must not end a long run. Mistakes in the recipe itself (a
pattern matching nothing, a column that does not exist) raise UserError before work starts.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmtrain.config.recipe import SourceConfig
from lmtrain.errors import UserError

FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet", ".csv")
MAX_EXAMPLES = 5
"""Examples kept (and warned about) per skip reason."""
SILENT_REASONS = {"empty_file"}
"""Counted, but not warned about: empty files are normal (the standard library has ~30 `__init__.py`)."""


@dataclass
class CorpusStats:
    """Documents read and skipped, by reason, with the first few locations of each problem."""

    documents: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(where)
            if reason not in SILENT_REASONS:
                print(f"warning: skipped {where} ({reason.replace('_', ' ')})", file=sys.stderr)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "skipped": dict(self.skipped), "skip_examples": self.examples}


def source_label(source: SourceConfig, index: int) -> str:
    """How logs and the manifest name a source: its `name`, else what it reads."""
    if source.name:
        return source.name
    if source.kind == "hub":
        return source.dataset
    if source.kind == "files":
        return source.paths[0] if len(source.paths) == 1 else f"{source.paths[0]} (+{len(source.paths) - 1})"
    return f"{source.kind}.{index}"


def read_source(source: SourceConfig, stats: CorpusStats) -> Iterator[str]:
    """The documents of one source, at most `source.max_documents` of them."""
    if source.kind == "python_stdlib":
        documents = _read_files(python_stdlib_files(), source.text_column, stats)
    elif source.kind == "files":
        documents = _read_files(resolve_files(source.paths), source.text_column, stats)
    else:
        documents = _read_hub(source, stats)
    for text in islice(documents, source.max_documents or None):
        stats.documents += 1
        yield text


def describe_source(source: SourceConfig) -> dict:
    """The source's settings plus, for local files, a digest of their names, sizes and mtimes,
    so that an edited, added or removed file changes the description (and invalidates caches)."""
    description = dataclasses.asdict(source)
    if source.kind == "hub":
        return description
    files = python_stdlib_files() if source.kind == "python_stdlib" else resolve_files(source.paths)
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return description | {"num_files": len(files), "files_digest": digest.hexdigest()}


def is_validation_document(text: str, fraction: float) -> bool:
    """Deterministic train/validation assignment by a hash of the (cleaned) text: stable across
    runs and machines, and duplicates land in the same split. The tokenizer holds out the same
    documents as the data pipeline."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def python_stdlib_files() -> list[Path]:
    """The running interpreter's standard-library .py files, without installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    installed = {"site-packages", "dist-packages"}
    return sorted(p for p in root.rglob("*.py") if installed.isdisjoint(p.relative_to(root).parts))


def resolve_files(
    patterns: list[str], key: str = "data.sources", suffixes: tuple[str, ...] = FILE_SUFFIXES
) -> list[Path]:
    """Expand glob patterns (sorted, deduplicated); a pattern that matches no file, or a file whose type is
    not one of `suffixes`, is an error naming the recipe `key`."""
    files: dict[Path, None] = {}
    for pattern in patterns:
        matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if os.path.isfile(m)]
        if not matches:
            what = "matches no files" if glob.has_magic(pattern) else "does not exist"
            raise UserError(f"{key}: path {pattern!r} {what} (relative paths start at {Path.cwd()})")
        for path in matches:
            if not path.name.endswith(suffixes):
                raise UserError(
                    f"{key}: {path} has an unsupported file type; "
                    f"use one of {', '.join(suffixes)} or narrow the pattern {pattern!r}"
                )
            files[path] = None
    return list(files)


def _read_files(files: list[Path], text_column: str, stats: CorpusStats) -> Iterator[str]:
    for path in files:
        if path.stat().st_size == 0:
            stats.skip("empty_file", str(path))
        elif path.name.endswith((".jsonl", ".jsonl.gz")):
            yield from _read_jsonl(path, text_column, stats)
        elif path.suffix == ".parquet":
            yield from _read_parquet(path, text_column, stats)
        else:
            text = _decode_file(path, stats)
            if text is None:
                continue
            if path.suffix == ".csv":
                yield from _read_csv(path, text, text_column, stats)
            else:
                yield text


def _decode_file(path: Path, stats: CorpusStats) -> str | None:
    try:
        return path.read_bytes().decode("utf-8-sig")  # -sig: a leading byte-order mark is not text
    except UnicodeDecodeError as exc:
        stats.skip("not_utf8", f"{path}: byte {exc.start}")
        return None


@dataclass
class JsonlLine:
    """One non-blank line of a JSONL file: the parsed value, or why it could not be parsed."""

    where: str  # path:line
    value: object = None
    problem: str = ""  # "not_utf8" or "bad_json"
    detail: str = ""


def jsonl_lines(path: Path, remedy: str) -> Iterator[JsonlLine]:
    """The lines of a .jsonl or .jsonl.gz file, parsed; an unreadable gzip file is a UserError ending in `remedy`."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:  # -sig on the first line: a leading byte-order mark is not text
                    yield JsonlLine(where, json.loads(line.decode("utf-8-sig" if number == 1 else "utf-8")))
                except UnicodeDecodeError as exc:
                    yield JsonlLine(where, problem="not_utf8", detail=f"byte {exc.start}")
                except json.JSONDecodeError as exc:
                    yield JsonlLine(where, problem="bad_json", detail=f"{exc.msg} at column {exc.colno}")
    except (gzip.BadGzipFile, EOFError) as exc:
        raise UserError(f"{path}: not a readable gzip file ({exc}); {remedy}") from None


def _read_jsonl(path: Path, text_column: str, stats: CorpusStats) -> Iterator[str]:
    for line in jsonl_lines(path, "re-create it or remove it from data.sources"):
        if line.problem:
            stats.skip(line.problem, line.where)
            continue
        text = line.value.get(text_column) if isinstance(line.value, dict) else None
        if not isinstance(text, str):
            stats.skip("missing_text_field", f"{line.where}: no string field {text_column!r}")
        elif not _encodable(text):
            stats.skip("not_utf8", f"{line.where}: a \\u escape encodes half a surrogate pair")
        else:
            yield text


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates (JSON can escape them), which no tokenizer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_parquet(path: Path, text_column: str, stats: CorpusStats) -> Iterator[str]:
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowException as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    schema = parquet.schema_arrow
    _require_column(path, text_column, schema.names)
    if not pa.types.is_string(schema.field(text_column).type) and not pa.types.is_large_string(
        schema.field(text_column).type
    ):
        raise UserError(
            f"{path}: column {text_column!r} holds {schema.field(text_column).type}, not text; "
            "set the source's text_column to a string column"
        )
    if parquet.metadata.num_rows == 0:
        stats.skip("empty_file", str(path))
        return
    row = 0
    for batch in parquet.iter_batches(columns=[text_column]):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                stats.skip("missing_text_field", f"{path}: row {row}: {text_column!r} is null")
            else:
                yield text


def _read_csv(path: Path, text: str, text_column: str, stats: CorpusStats) -> Iterator[str]:
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) rejects long documents
    reader = csv.DictReader(io.StringIO(text, newline=""))
    _require_column(path, text_column, reader.fieldnames or [])
    for row in reader:
        value = row[text_column]
        if value is None:  # a short row, with fewer fields than the header
            stats.skip("missing_text_field", f"{path}:{reader.line_num}: no field {text_column!r}")
        else:
            yield value


def _require_column(path: Path, column: str, present: list[str]) -> None:
    if column not in present:
        raise UserError(
            f"{path}: no column {column!r}; columns present: {', '.join(map(repr, present)) or 'none'}. "
            "Set the source's text_column to one of them"
        )


def _read_hub(source: SourceConfig, stats: CorpusStats) -> Iterator[str]:
    import datasets  # deferred: only hub sources need it, and it is slow to import

    where = f"Hub dataset {source.dataset!r} (config {source.dataset_config or 'default'}, split {source.split!r})"
    try:
        dataset = datasets.load_dataset(
            source.dataset, source.dataset_config or None, split=source.split, streaming=source.streaming
        )
    except Exception as exc:  # offline, unknown name, missing config/split: all end the same way for the user
        raise UserError(
            f"data.sources: could not load {where}: {type(exc).__name__}: {exc}. The Hub may be unreachable from "
            "this machine; download the dataset where it is reachable and use a local copy (kind: files) instead"
        ) from None
    if dataset.column_names is not None:  # a streamed dataset may not know its columns before the first record
        _require_column(Path(source.dataset), source.text_column, dataset.column_names)
    rows = iter(dataset)
    row = 0
    while True:
        try:
            record = next(rows, None)
        except Exception as exc:  # a stream can fail mid-way; a silently truncated source is not acceptable
            raise UserError(
                f"data.sources: reading {where} failed after {row} records: {type(exc).__name__}: {exc}"
            ) from None
        if record is None:
            return
        row += 1
        text = record.get(source.text_column)
        if isinstance(text, str):
            yield text
        else:
            stats.skip("missing_text_field", f"{source.dataset}: row {row}: {source.text_column!r} is {text!r}")
