"""Data sources: one registry of source kinds and one set of file readers, shared by pretraining and fine-tuning.

A source kind is a function that yields `Row`s (a location and a dict of fields) from a `SourceConfig`,
registered under the name recipes use: `kind: NAME` in a pretraining recipe's data.sources, `source: NAME`
in a fine-tuning recipe's data section. Pretraining takes each row's `text_column`
(`read_source`); fine-tuning keeps whole rows as records (lmtrain/corpus/records.py).

Adding a source is one function, anywhere that is imported before the recipe is read:

    from lmtrain.corpus.sources import Row, source

    @source("sqlite")
    def read_sqlite(config: SourceConfig, request: Request) -> Iterator[Row]:
        with sqlite3.connect(config.paths[0]) as db:
            for i, (text,) in enumerate(db.execute(f"SELECT {request.text_column or 'text'} FROM docs")):
                yield Row(f"{config.paths[0]} row {i}", {request.text_column or "text": text})

It reads the keys every source has (paths, dataset, dataset_config, split, text_column, ...). Pass
`files=` to `@source` if it reads local files, so that editing them invalidates prepared data and
tokenizers. A file type is the same: a function registered with `@file_type(".suffix")`.

Bad records (a JSONL line that is not JSON, a record without the text field, bytes that are not UTF-8,
an empty file) are rows with a `problem`: pretraining skips and counts them, with a few `file:line`
examples kept for the manifest, since one bad line must not end a long run; fine-tuning lists them all
in one error. Mistakes in the recipe itself (a pattern matching nothing, a column that does not exist, an
unknown kind) raise UserError before work starts.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import glob
import gzip
import hashlib
import io
import json
import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmtrain.config.recipe import SourceConfig
from lmtrain.errors import UserError

MAX_EXAMPLES = 5
"""Examples kept (and warned about) per skip reason."""
SILENT_REASONS = {"empty_file"}
"""Counted, but not warned about: empty files are normal (the standard library has ~30 `__init__.py`)."""


# ---------------------------------------------------------------------------- the registry


@dataclass
class Row:
    """One record of a source: where it is, and its fields.

    `where` names it for messages: `path:line` for line-based files, `path row i` for tables (i counted from
    0, as `dataset[i]`), `path item i` for .json lists, `path` for a whole file. A row that could not be read
    has a `problem` (the reason it is counted under: not_utf8, bad_json, empty_file, ...) and a readable
    `detail`; `values` is then None, or the fields that could be read (a CSV row with a field too many)."""

    where: str
    values: dict | None = field(default_factory=dict)
    problem: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Request:
    """What the caller wants from a source."""

    key: str
    """The recipe key that sets the source (data.sources, data.train_files, ...), for messages."""
    text_column: str | None = None
    """Pretraining: the field holding the text; a reader may read only it, and should say so at once if the
    source has no such column. None: whole records (fine-tuning)."""
    shard: tuple[int, int] = (0, 1)
    """(index, count): read only this slice of the source (data preparation's tasks, lmtrain/data/workers.py);
    only kinds registered with shardable=True are asked for a slice other than (0, 1)."""


SourceReader = Callable[[SourceConfig, Request], Iterator[Row]]


@dataclass(frozen=True)
class SourceKind:
    read: SourceReader
    files: Callable[[SourceConfig], list[Path]] | None = None
    """The local files the source reads: their names, sizes and mtimes key the caches (describe_source)."""
    shardable: bool = False
    """The reader honours Request.shard; a kind that does not is read whole by the first task."""


SOURCES: dict[str, SourceKind] = {}
"""Source kinds by the name recipes use; filled by @source."""


def source(
    kind: str, files: Callable[[SourceConfig], list[Path]] | None = None, shardable: bool = False
) -> Callable[[SourceReader], SourceReader]:
    """Register a reader as source kind `kind` (see the module docstring)."""

    def register(read: SourceReader) -> SourceReader:
        if kind in SOURCES:  # a second registration would silently change what existing recipes read
            raise ValueError(f"source kind {kind!r} is already registered (by {SOURCES[kind].read.__qualname__})")
        SOURCES[kind] = SourceKind(read, files, shardable)
        return read

    return register


def source_kind(kind: str, key: str = "data.sources") -> SourceKind:
    """The registered kind `kind`, or a UserError naming `key` and the kinds there are."""
    if kind in SOURCES:
        return SOURCES[kind]
    close = difflib.get_close_matches(kind, SOURCES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"{key}: unknown source kind {kind!r}; {hint}the kinds are {', '.join(sorted(SOURCES))} "
        "(a new kind is a function registered with @source, see lmtrain/corpus/sources.py)"
    )


FileReader = Callable[[Path, SourceConfig, Request], Iterator[Row]]
FILE_TYPES: dict[str, FileReader] = {}
"""File readers by file name ending (.jsonl.gz before .gz: the longest ending wins); filled by @file_type."""


def file_type(*suffixes: str) -> Callable[[FileReader], FileReader]:
    """Register a reader for files whose names end in any of `suffixes`."""

    def register(read: FileReader) -> FileReader:
        for suffix in suffixes:
            if suffix in FILE_TYPES:
                raise ValueError(f"file type {suffix!r} is already registered")
            FILE_TYPES[suffix] = read
        return read

    return register


def file_reader(path: Path) -> FileReader | None:
    matches = [s for s in FILE_TYPES if path.name.endswith(s)]
    return FILE_TYPES[max(matches, key=len)] if matches else None


# ---------------------------------------------------------------------------- pretraining: documents


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
    if source.dataset:
        return source.dataset
    if source.paths:
        return source.paths[0] if len(source.paths) == 1 else f"{source.paths[0]} (+{len(source.paths) - 1})"
    return f"{source.kind}.{index}"


def read_source(
    source: SourceConfig, stats: CorpusStats, key: str = "data.sources", shard: tuple[int, int] = (0, 1)
) -> Iterator[str]:
    """The documents of one source (its text_column of each row), at most `source.max_documents` of them; with
    `shard` (index, count), only that slice: a contiguous run of its files, so that the slices in index order
    are the whole source in order. A kind that cannot be sliced, or a source capped by max_documents (a cap over
    the whole source), is read whole by slice 0."""
    kind = source_kind(source.kind, f"{key}.kind")
    if shard[1] > 1 and (not kind.shardable or source.max_documents):
        if shard[0]:
            return
        shard = (0, 1)
    rows = kind.read(source, Request(key, source.text_column, shard))
    for text in islice(_texts(rows, source.text_column, stats), source.max_documents or None):
        stats.documents += 1
        yield text


def _texts(rows: Iterator[Row], column: str, stats: CorpusStats) -> Iterator[str]:
    for row in rows:
        if row.values is None:
            stats.skip(row.problem, f"{row.where}: {row.detail}" if row.detail else row.where)
            continue
        text = row.values.get(column)
        if not isinstance(text, str):
            found = "absent" if column not in row.values else "null" if text is None else f"a {type(text).__name__}"
            why = f"; {row.detail}" if row.detail else ""
            stats.skip("missing_text_field", f"{row.where}: no string field {column!r} ({found}{why})")
        elif not _encodable(text):
            stats.skip("not_utf8", f"{row.where}: a \\u escape encodes half a surrogate pair")
        else:
            yield text


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates (JSON can escape them), which no tokenizer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def describe_source(source: SourceConfig, key: str = "data.sources") -> dict:
    """The source's settings plus, for local files, a digest of their names, sizes and mtimes,
    so that an edited, added or removed file changes the description (and invalidates caches)."""
    kind = source_kind(source.kind, f"{key}.kind")
    description = dataclasses.asdict(source)
    if kind.files is None:
        return description
    files = kind.files(source)
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return description | {"num_files": len(files), "files_digest": digest.hexdigest()}


class Document(str):
    """A document's text that knows its split. Where a source holds out validation text by spans
    (lmtrain/corpus/mixture.py), the split is not a function of the text: `is_validation_document` reads it
    here. The tokenizer removes exact duplicates only and data preparation near ones too, so for a source
    close to the documents/spans boundary the two may hold out slightly different text; the model's
    validation split is data preparation's."""

    validation: bool

    def __new__(cls, text: str, validation: bool) -> Document:
        document = super().__new__(cls, text)
        document.validation = validation
        return document


def is_validation_document(text: str, fraction: float) -> bool:
    """The split a Document carries; for plain text, a deterministic assignment by a hash of the (cleaned)
    text: stable across runs and machines, and duplicates land in the same split. The tokenizer holds out
    the same documents as the data pipeline."""
    if isinstance(text, Document):
        return text.validation
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


# ---------------------------------------------------------------------------- built-in kinds


@functools.cache  # listed once per process: every data preparation task would otherwise walk the tree again
def python_stdlib_files() -> list[Path]:
    """The running interpreter's standard-library .py files, without installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    installed = {"site-packages", "dist-packages"}
    return sorted(p for p in root.rglob("*.py") if installed.isdisjoint(p.relative_to(root).parts))


def file_slice(files: list[Path], shard: tuple[int, int]) -> list[Path]:
    """Slice `index` of `count` contiguous, near-equal runs of `files`."""
    index, count = shard
    return files[len(files) * index // count : len(files) * (index + 1) // count]


@source("python_stdlib", files=lambda config: python_stdlib_files(), shardable=True)
def read_python_stdlib(config: SourceConfig, request: Request) -> Iterator[Row]:
    """Each .py file of the standard library, whole, as one document (offline, on every machine)."""
    for path in file_slice(python_stdlib_files(), request.shard):
        yield from _text_rows(path, "file", request.text_column or "text")


def _files_of(config: SourceConfig) -> list[Path]:
    return resolve_files(config.paths)


@source("files", files=_files_of, shardable=True)
def read_files(config: SourceConfig, request: Request) -> Iterator[Row]:
    """Local files matched by `paths`, each read by the reader of its type (FILE_TYPES)."""
    for path in file_slice(resolve_files(config.paths, request.key), request.shard):
        if path.stat().st_size == 0:
            yield Row(str(path), None, "empty_file")
        else:
            yield from file_reader(path)(path, config, request)


@source("hub", shardable=True)
def read_hub(config: SourceConfig, request: Request) -> Iterator[Row]:
    """A Hugging Face Hub dataset's split, downloaded or streamed."""
    import datasets  # deferred: only hub sources need it, and it is slow to import

    name = f"Hub dataset {config.dataset!r} (config {config.dataset_config or 'default'}, split {config.split!r})"
    try:
        dataset = datasets.load_dataset(
            config.dataset, config.dataset_config or None, split=config.split, streaming=config.streaming
        )
    except Exception as exc:  # offline, unknown name, missing config/split: all end the same way for the user
        raise UserError(
            f"{request.key}: could not load {name}: {type(exc).__name__}: {exc}. The Hub may be unreachable from "
            "this machine; download the dataset where it is reachable and read a local copy (kind: files) instead"
        ) from None
    # a streamed dataset may not know its columns before the first record
    if request.text_column and dataset.column_names is not None:
        _require_column(Path(config.dataset), request.text_column, dataset.column_names)
    if request.shard[1] > 1:
        dataset = _hub_slice(dataset, *request.shard)
        if dataset is None:
            return
    rows = iter(dataset)
    row = 0
    while True:
        try:
            record = next(rows, None)
        except Exception as exc:  # a stream can fail mid-way; a silently truncated source is not acceptable
            raise UserError(
                f"{request.key}: reading {name} failed after {row} records: {type(exc).__name__}: {exc}"
            ) from None
        if record is None:
            return
        yield Row(f"{config.dataset}/{config.split} row {row}", record)
        row += 1


def _hub_slice(dataset, index: int, count: int):
    """Slice `index` of `count` of a Hub dataset, contiguous so that the slices in order are the whole split:
    a downloaded split by rows; a stream by its data files (`IterableDataset.shard`), and with more slices than
    files, one file each for the first slices and nothing for the others (a stream cannot be cut inside a file
    without every slice reading it)."""
    import datasets

    if not isinstance(dataset, datasets.IterableDataset):
        return dataset.shard(count, index, contiguous=True)
    files = dataset.num_shards
    if count <= files:
        return dataset.shard(count, index, contiguous=True)
    return dataset.shard(files, index, contiguous=True) if index < files else None


def resolve_files(patterns: list[str], key: str = "data.sources") -> list[Path]:
    """Expand glob patterns (sorted, deduplicated); a pattern that matches no file, or a file of a type
    no reader is registered for, is an error naming the recipe `key`."""
    files: dict[Path, None] = {}
    for pattern in patterns:
        matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if os.path.isfile(m)]
        if not matches:
            what = "matches no files" if glob.has_magic(pattern) else "does not exist"
            raise UserError(f"{key}: path {pattern!r} {what} (relative paths start at {Path.cwd()})")
        for path in matches:
            if file_reader(path) is None:
                raise UserError(
                    f"{key}: {path} has an unsupported file type; "
                    f"use one of {', '.join(FILE_TYPES)} or narrow the pattern {pattern!r}"
                )
            files[path] = None
    return list(files)


# ---------------------------------------------------------------------------- file types


@file_type(".txt")
def read_txt(path: Path, config: SourceConfig, request: Request) -> Iterator[Row]:
    """Plain text, cut into documents as the source's txt_documents says."""
    yield from _text_rows(path, config.txt_documents, request.text_column or "text")


def _text_rows(path: Path, split: str, column: str) -> Iterator[Row]:
    if split == "file":
        try:  # -sig: a leading byte-order mark is not text
            yield Row(str(path), {column: path.read_bytes().decode("utf-8-sig")})
        except UnicodeDecodeError as exc:
            yield Row(str(path), None, "not_utf8", f"not UTF-8 (byte {exc.start}); save the file as UTF-8")
        return
    # Lines and paragraphs are read a line at a time: a large file never needs to fit in memory twice.
    found = False
    lines: list[str] = []
    first, bad = 0, ""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                line, error = None, f"not UTF-8 (line {number}, byte {exc.start}); save the file as UTF-8"
            if split == "lines":
                if line is None:
                    yield Row(f"{path}:{number}", None, "not_utf8", error)
                elif line.strip():  # blank lines separate documents; they are not documents
                    found = True
                    yield Row(f"{path}:{number}", {column: line.rstrip("\r\n")})
                continue
            if line is not None and not line.strip():  # a blank line ends a paragraph
                if lines or bad:
                    found = True
                    yield _paragraph(path, first, lines, bad, column)
                lines, bad = [], ""
                continue
            if not lines and not bad:
                first = number
            if line is None:  # the whole paragraph is skipped: half a paragraph would be a different text
                bad = bad or error
            else:
                lines.append(line)
    if lines or bad:
        found = True
        yield _paragraph(path, first, lines, bad, column)
    if not found:
        yield Row(str(path), None, "empty_file")


def _paragraph(path: Path, first: int, lines: list[str], bad: str, column: str) -> Row:
    if bad:
        return Row(f"{path}:{first}", None, "not_utf8", bad)
    return Row(f"{path}:{first}", {column: "".join(lines).rstrip("\r\n")})


@file_type(".jsonl", ".jsonl.gz")
def read_jsonl(path: Path, config: SourceConfig, request: Request) -> Iterator[Row]:
    """One JSON object per line, each named `path:line`."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:  # -sig on the first line: a leading byte-order mark is not text
                    value = json.loads(line.decode("utf-8-sig" if number == 1 else "utf-8"))
                except UnicodeDecodeError as exc:
                    yield Row(where, None, "not_utf8", f"not UTF-8 (byte {exc.start}); save the file as UTF-8")
                    continue
                except json.JSONDecodeError as exc:
                    yield Row(where, None, "bad_json", f"not valid JSON ({exc.msg} at column {exc.colno})")
                    continue
                if isinstance(value, dict):
                    yield Row(where, value)
                else:
                    detail = f"a JSON {type(value).__name__}, not an object with named fields"
                    yield Row(where, {}, "not_an_object", detail)
    except (gzip.BadGzipFile, EOFError) as exc:
        raise UserError(
            f"{path}: not a readable gzip file ({exc}); re-create it or remove it from {request.key}"
        ) from None


@file_type(".json")
def read_json(path: Path, config: SourceConfig, request: Request) -> Iterator[Row]:
    """A list of JSON objects, each named `path item i`."""
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
        yield Row(f"{path} item {i}", row)


@file_type(".csv")
def read_csv(path: Path, config: SourceConfig, request: Request) -> Iterator[Row]:
    """A header row, then one record per row, each named `path:line` of its first line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield Row(str(path), None, "not_utf8", f"not UTF-8 (byte {exc.start}); save the file as UTF-8")
        return
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) rejects long documents
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if request.text_column:
        _require_column(path, request.text_column, header)
    start = 2
    for row in reader:
        where = f"{path}:{start}"
        start = reader.line_num + 1
        extra = row.pop(None, [])  # DictReader files extra fields under None, and gives missing ones None
        values = {name: value for name, value in row.items() if value is not None}
        if extra or len(values) < len(header):
            detail = (
                f"{len(values) + len(extra)} field(s) where the header has {len(header)}; quote fields that hold commas"
            )
            yield Row(where, values, "wrong_field_count", detail)
        else:
            yield Row(where, values)


@file_type(".parquet")
def read_parquet(path: Path, config: SourceConfig, request: Request) -> Iterator[Row]:
    """A table, read a batch at a time (only the text column when that is all the caller wants)."""
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowException as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    columns = None
    if request.text_column:
        schema = parquet.schema_arrow
        _require_column(path, request.text_column, schema.names)
        kind = schema.field(request.text_column).type
        if not pa.types.is_string(kind) and not pa.types.is_large_string(kind):
            raise UserError(
                f"{path}: column {request.text_column!r} holds {kind}, not text; "
                "set the source's text_column to a string column"
            )
        columns = [request.text_column]
    if parquet.metadata.num_rows == 0:
        yield Row(str(path), None, "empty_file")
        return
    row = 0
    for batch in parquet.iter_batches(columns=columns):
        for values in batch.to_pylist():
            yield Row(f"{path} row {row}", values)
            row += 1


def _require_column(path: Path, column: str, present: list[str]) -> None:
    if column not in present:
        raise UserError(
            f"{path}: no column {column!r}; columns present: {', '.join(map(repr, present)) or 'none'}. "
            "Set the source's text_column to one of them"
        )
