"""Data preparation as independent tasks on datatrove's executors: one machine (LocalPipelineExecutor, processes)
or a cluster (SlurmPipelineExecutor), with its skipping of completed tasks. Four stages, each a datatrove job:

    1. read     (data.tasks tasks)  each task reads its slice of every source (sources.read_source: a contiguous
                                     run of files), cleans, filters and tokenizes it, and writes per source: the
                                     token ids, document lengths, validation flags, dedup keys (one exact key and
                                     one key per MinHash band per document) and its counts
    2. dedup    (data.tasks tasks)  task p reads the keys with key mod tasks = p from every read task (which
                                     wrote them grouped by partition, so p reads its rows only), sorts them by
                                     (column, key, document order) and writes, for every group of equal keys,
                                     (first document, later document) pairs: memory and reading per task are the
                                     corpus's keys / tasks
    3. cluster  (1 task)            joins the pairs into clusters (union-find, the smallest document order as root)
                                     and keeps each cluster's first document; decides each source's validation mode
                                     from its kept documents (validation_by auto)
    4. write    (data.tasks tasks)  each task writes its slice's kept documents to the final uint16 shards
                                     (lmtrain/data/shards.py), split into train and validation

Document order is (source in recipe order, task, document in the task's slice), which is the source read from
start to end: "the first copy is kept" means the same whatever the number of tasks or workers, and so does the
content: per-source sha256 and the manifest are identical with 1, 2 or 8 workers and after a run is killed and
restarted (tests/test_workers.py). The work directory next to data.dir keeps every finished task's output and
datatrove's completion marks until the run succeeds: a re-run with the same inputs redoes only the tasks that did
not finish. Every file a task writes appears under its final name only once complete (written as .partial, then
renamed), so a killed task's leftovers are never read.

Near-duplicates are judged as FineWeb does (datatrove's MinhashDedup stages): two documents that share a band are
in one cluster, and a cluster keeps one document. An in-memory pass that compared each document with the kept ones
only could keep C when B (dropped, a copy of A) was C's only match; here C goes with A's cluster. datatrove's own
MinHash stages are not used: their shingles are words of a language-specific word tokenizer, where this project's
(lmtrain/corpus/dedup.py) treat each CJK character as a unit, and their clusters keep the root of a union by size,
not the first copy.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import loguru._better_exceptions
import numpy as np
from datatrove.executor import LocalPipelineExecutor
from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from transformers import PreTrainedTokenizerFast

from lmtrain.config.recipe import Recipe
from lmtrain.corpus.dedup import Deduplicator, exact_key
from lmtrain.corpus.mixture import MIN_HELD_OUT_DOCUMENTS, SourceStats, source_documents
from lmtrain.corpus.sources import CorpusStats, is_validation_document, source_label
from lmtrain.data.shards import SHARD_SUFFIX, ShardWriter, source_dir, token_dtype
from lmtrain.tokenizer.bpe import available_cores, corpus_encoder, load_tokenizer, tokenizer_fingerprint

SPLITS = ("train", "validation")
HELD_OUT_CHARS = 2_000_000
"""Characters of held-out documents kept per source in held_out.jsonl (whole documents, up to the first past it)."""
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
"""How datatrove starts worker processes. fork: a worker inherits the imported modules, where forkserver (datatrove's
default) imports lmtrain, datasets and transformers again in every worker of every stage (tests/test_workers.py:
184 s with forkserver, 7.9 s with fork on 2 cores). Nothing in the parent holds threads or locks a task uses."""
WORK_LAYOUT = 2
"""The layout of the files the stages leave for each other in the work directory (2: keys grouped by partition), part
of its name: a work directory an older version left after a failed run is not resumed with this one."""
WRITE_CHUNK = 65_536
"""Documents the write stage handles at a time: its memory is one chunk's tokens, whatever the slice's size."""
LINE_BREAK_SEARCH = 10_000
"""Tokens searched back from a spans cut for a line break to cut after."""
_SOURCE_BITS, _TASK_BITS = 52, 36
"""A document's order as one int64: source << 52 | task << 36 | index in the task's slice."""


def _compute_library_dirs_once() -> None:
    """datatrove adds three loguru sinks per task, and each `logger.add` recomputes Python's library directories
    (for tracebacks) through sysconfig: 10 ms each here, so 30 ms of every task; a stage of 16 tasks that do
    nothing took 0.35 s, and 0.06 s with the directories computed once per process, as here. They depend only on
    the interpreter and sys.path. Done on import, so that forked and SLURM workers have it too."""
    formatter = getattr(loguru._better_exceptions, "ExceptionFormatter", None)
    if formatter is not None and hasattr(formatter, "_get_lib_dirs"):  # loguru 0.7's private helper
        formatter._get_lib_dirs = staticmethod(functools.cache(formatter._get_lib_dirs))


_compute_library_dirs_once()


def document_order(source: int, task: int, index: np.ndarray | int) -> np.ndarray | int:
    return (source << _SOURCE_BITS) | (task << _TASK_BITS) | index


def run_stages(recipe: Recipe, work: Path, executor=None) -> tuple[PipelineExecutor, dict[str, float]]:
    """The four stages, one after the other, each skipping the tasks it finished in an earlier run; returns the
    last stage's executor and each stage's wall seconds (for SLURM: its submission's). `executor` makes a stage's
    executor (LocalPipelineExecutor by default, or SlurmOptions.executor, whose stages each wait for the one
    before)."""
    d = recipe.data
    dedup = d.dedup.exact or d.dedup.near
    # Locally the workers share the machine's cores; a cluster task's process may use the cores it was given.
    threads = None if executor is not None else max(1, available_cores() // min(d.workers, d.tasks))
    if executor is None:
        _tokenizer(recipe.tokenizer.dir)  # loaded here once: every stage's forked workers inherit it
    stages = [("read", ReadStep(recipe, work, threads), d.tasks)]
    if dedup:
        stages.append(("dedup", DedupStep(recipe, work), d.tasks))
    stages += [("cluster", ClusterStep(recipe, work), 1), ("write", WriteStep(recipe, work), d.tasks)]
    make = executor or LocalPipelineExecutor
    last, seconds = None, {}
    for name, step, tasks in stages:
        logs = str(work / "logs" / name)
        workers = min(d.workers, tasks)
        options = {"depends": last} if executor is not None else {}
        last = make(
            pipeline=[step], tasks=tasks, workers=workers, logging_dir=logs, start_method=START_METHOD, **options
        )
        start = time.perf_counter()
        last.run()
        seconds[name] = round(time.perf_counter() - start, 3)
    return last, seconds


@dataclass
class SlurmOptions:
    """Where and how the stages run on a SLURM cluster (data_prep/prepare.py --slurm-partition ...)."""

    partition: str
    time: str = "24:00:00"
    cpus_per_task: int = 4
    """Cores per task: the encoder runs a thread per core."""
    mem_per_cpu_gb: int = 4
    env_command: str | None = None
    """A shell line run before each task (e.g. `source .venv/bin/activate`)."""

    def executor(self, pipeline, tasks, workers, logging_dir, start_method, depends=None, cpus_per_task=None):
        from datatrove.executor import SlurmPipelineExecutor  # only here: a local run never needs it

        return SlurmPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=-1,  # every task at once, as far as the cluster schedules them
            time=self.time,
            partition=self.partition,
            cpus_per_task=cpus_per_task or self.cpus_per_task,
            mem_per_cpu_gb=self.mem_per_cpu_gb,
            job_name=f"lmtrain-data-{Path(logging_dir).name}",
            env_command=self.env_command,
            logging_dir=logging_dir,
            depends=depends,
        )


def _dir(work: Path, stage: str, source: int, task: int) -> Path:
    return work / stage / f"{source:03d}" / f"{task:05d}"


def _tokenizer(directory: str) -> PreTrainedTokenizerFast:
    """The saved tokenizer, loaded once per worker process (a process runs many tasks; AutoTokenizer took 0.04 s
    of each here) and again only when tokenizer.json changes."""
    return _loaded_tokenizer(directory, tokenizer_fingerprint(directory))


@functools.lru_cache(maxsize=2)
def _loaded_tokenizer(directory: str, fingerprint: str) -> PreTrainedTokenizerFast:
    return load_tokenizer(directory)


def _publish(partial: Path, final: Path) -> None:
    """Put a finished task's directory in place (replacing what a killed earlier attempt left)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


class _Step(PipelineStep):
    type = "lmtrain"

    def __init__(self, recipe: Recipe, work: Path):
        super().__init__()
        self.recipe, self.work = recipe, Path(work)


class ReadStep(_Step):
    """Stage 1: read, clean, filter, tokenize one slice of every source; dedup keys and validation flags."""

    name = "read, clean, filter, tokenize"

    def __init__(self, recipe: Recipe, work: Path, threads: int | None = None):
        super().__init__(recipe, work)
        self.threads = threads
        """The encoder's threads: the cores a task has (all its process may use, by default)."""

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        d = self.recipe.data
        tokenizer = _tokenizer(self.recipe.tokenizer.dir)
        encoder = corpus_encoder(self.recipe.tokenizer.dir, self.threads)
        dedup = Deduplicator(d.dedup)
        dtype = token_dtype(len(tokenizer))
        seconds, tokens = Counter(), 0
        for i, source in enumerate(d.sources):
            final = _dir(self.work, "read", i, rank)
            out = _fresh(final.with_name(final.name + ".partial"))
            stats = SourceStats(source_label(source, i))
            documents = source_documents(source, i, d, None, stats, shard=(rank, world_size))
            writer = ShardWriter(out / f"tokens{SHARD_SUFFIX}", dtype, tokenizer.eos_token_id)
            lengths, validation, keys, held_out, held_chars = [], [], [], [], 0
            batches = _batches(documents, d.batch_size)
            while batch := _timed(seconds, "read_clean_filter", next, batches, None):
                ids = _timed(seconds, "tokenize", encoder.encode_batch, batch)
                _timed(seconds, "write", writer.add, ids)
                keys += _timed(seconds, "dedup_keys", lambda: [_keys(text, dedup) for text in batch])
                for text, doc in zip(batch, ids):
                    is_validation = is_validation_document(text, d.validation_fraction)
                    if is_validation and held_chars < HELD_OUT_CHARS:
                        held_out.append({"index": len(lengths), "text": text})
                        held_chars += len(text)
                    lengths.append(len(doc))
                    validation.append(is_validation)
            writer.close()
            tokens += writer.tokens
            np.save(out / "lengths.npy", np.array(lengths, dtype=np.int64))
            np.save(out / "validation.npy", np.array(validation, dtype=bool))
            _save_partitioned_keys(out, _key_table(keys, dedup), int(d.dedup.exact), d.tasks)
            (out / "held_out.json").write_text(json.dumps(held_out, ensure_ascii=False), encoding="utf-8")
            (out / "stats.json").write_text(json.dumps(_stats_dict(stats)), encoding="utf-8")
            _publish(out, final)
            self.stat_update("documents", value=len(lengths))
        task = {"encoder": encoder.stats(), "seconds": dict(seconds), "tokens": tokens, "threads": encoder.threads}
        (self.work / "read" / f"task-{rank:05d}.json").write_text(json.dumps(task), encoding="utf-8")


def _timed(seconds: Counter, phase: str, function, *args):
    """`function(*args)`, its wall time added to seconds[phase]."""
    start = time.perf_counter()
    try:
        return function(*args)
    finally:
        seconds[phase] += time.perf_counter() - start


def _keys(text: str, dedup: Deduplicator) -> list[int]:
    """[exact key] if exact dedup is on, then one key per band if near dedup is on (0 for a text without units:
    such texts get no band key, see _key_table)."""
    keys = [exact_key(text)] if dedup.cfg.exact else []
    if dedup.cfg.near:
        keys += dedup.band_keys(text) or [0] * dedup.bands
    return keys


def _key_table(keys: list[list[int]], dedup: Deduplicator) -> np.ndarray:
    width = int(dedup.cfg.exact) + (dedup.bands if dedup.cfg.near else 0)
    return np.array(keys, dtype=np.uint64).reshape(len(keys), width)


KEY_ROW = np.dtype([("key", "<u8"), ("column", "u1"), ("document", "<i8")])
"""One dedup key in keys.npy: its value, its column (0 the exact key if exact dedup is on, then one per band), and
the document's index in the read task's slice."""


def _save_partitioned_keys(out: Path, table: np.ndarray, exact_columns: int, partitions: int) -> None:
    """A read task's keys (documents × columns) as KEY_ROW rows in keys.npy, grouped by hash partition (key mod
    partitions), then by column and document: dedup task p reads only its own rows of every table (memory-mapped,
    found by bisection), so the stage reads the keys once in all, however many tasks it has. Band keys of 0 (a
    text without units) are left out."""
    documents, width = table.shape
    keys = table.T.reshape(-1)  # column by column, documents in order within each
    columns = np.repeat(np.arange(width, dtype=np.uint8), documents)
    kept = (keys != 0) | (columns < exact_columns)
    rows = np.empty(int(kept.sum()), dtype=KEY_ROW)
    rows["key"], rows["column"] = keys[kept], columns[kept]
    rows["document"] = np.tile(np.arange(documents, dtype=np.int64), width)[kept]
    np.save(out / "keys.npy", rows[np.argsort(rows["key"] % np.uint64(partitions), kind="stable")])


def _partition_rows(path: Path, partition: int, partitions: int) -> np.ndarray:
    """The rows of one hash partition in a keys.npy that _save_partitioned_keys wrote."""
    rows = np.load(path, mmap_mode="r")
    keys = rows["key"]
    start = bisect.bisect_left(keys, partition, key=lambda k: int(k) % partitions)
    end = bisect.bisect_left(keys, partition + 1, lo=start, key=lambda k: int(k) % partitions)
    return np.asarray(rows[start:end])


def _stats_dict(stats: SourceStats) -> dict:
    return {
        "documents": stats.corpus.documents,
        "skipped": dict(stats.corpus.skipped),
        "examples": stats.corpus.examples,
        "too_short": stats.too_short,
        "filtered": dict(stats.filtered),
        "boilerplate_lines_removed": stats.boilerplate_lines_removed,
    }


def merged_stats(work: Path, source: int, name: str, tasks: int) -> SourceStats:
    """A source's counts from every task of stage 1, added up."""
    stats = SourceStats(name, CorpusStats())
    for task in range(tasks):
        part = json.loads((_dir(work, "read", source, task) / "stats.json").read_text(encoding="utf-8"))
        stats.corpus.documents += part["documents"]
        stats.corpus.skipped.update(part["skipped"])
        for reason, where in part["examples"].items():
            stats.corpus.examples.setdefault(reason, []).extend(where)
        stats.too_short += part["too_short"]
        stats.filtered.update(part["filtered"])
        stats.boilerplate_lines_removed += part["boilerplate_lines_removed"]
    return stats


class DedupStep(_Step):
    """Stage 2: one hash partition of every key table: (first, later) pairs of documents with equal keys."""

    name = "dedup: pairs of equal keys, one partition"

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        d = self.recipe.data
        keys, columns, orders = [], [], []
        for i in range(len(d.sources)):
            for t in range(d.tasks):
                rows = _partition_rows(_dir(self.work, "read", i, t) / "keys.npy", rank, d.tasks)
                keys.append(rows["key"])
                columns.append(rows["column"])
                orders.append(document_order(i, t, rows["document"]))
        keys, columns, orders = (np.concatenate(a) if a else np.empty(0, np.int64) for a in (keys, columns, orders))
        sort = np.lexsort((orders, keys, columns))  # groups of equal (column, key), first document first
        keys, columns, orders = keys[sort], columns[sort], orders[sort]
        starts_group = np.ones(len(keys), dtype=bool)
        starts_group[1:] = (keys[1:] != keys[:-1]) | (columns[1:] != columns[:-1])
        first = orders[np.maximum.accumulate(np.where(starts_group, np.arange(len(keys)), 0))]
        later = ~starts_group
        arrays = {
            "first": first[later],
            "later": orders[later],
            "exact": (columns[later] == 0) & d.dedup.exact,
        }
        out = self.work / "dedup" / f"{rank:05d}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial.npz")
        np.savez(partial, **arrays)
        os.replace(partial, out)
        self.stat_update("pairs", value=len(arrays["later"]))


class ClusterStep(_Step):
    """Stage 3: clusters of documents joined by pairs; every document but a cluster's first is removed. Then each
    source's validation mode, and where a source holds out by spans, the token where its validation begins."""

    name = "cluster duplicates, plan the splits"

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        d = self.recipe.data
        removed, exact = self._removed(d.tasks) if (d.dedup.exact or d.dedup.near) else ({}, set())
        out = _fresh(self.work / "plan.partial")
        for i, source in enumerate(d.sources):
            plan = {"tasks": [], "exact_duplicates": 0, "near_duplicates": 0}
            kept_documents = kept_tokens = 0
            for t in range(d.tasks):
                lengths = np.load(_dir(self.work, "read", i, t) / "lengths.npy")
                gone = np.array(sorted(removed.get((i, t), [])), dtype=np.int64)
                kinds = [document_order(i, t, int(g)) in exact for g in gone]
                np.savez(out / f"{i:03d}-{t:05d}.npz", removed=gone, exact=np.array(kinds, dtype=bool))
                plan["exact_duplicates"] += sum(kinds)
                plan["near_duplicates"] += len(kinds) - sum(kinds)
                keep = np.ones(len(lengths), dtype=bool)
                keep[gone] = False
                plan["tasks"].append({"first_token": kept_tokens})
                kept_documents += int(keep.sum())
                kept_tokens += int((lengths[keep] + 1).sum())
            plan |= {"kept": kept_documents, "tokens": kept_tokens} | _validation_plan(
                source.validation_by, kept_documents, kept_tokens, d.validation_fraction
            )
            if plan["validation_by"] == "spans":
                plan["validation_from_token"] = self._after_line_break(i, plan, out)
            (out / f"{i:03d}.json").write_text(json.dumps(plan), encoding="utf-8")
        _publish(out, self.work / "plan")

    def _after_line_break(self, source: int, plan: dict, removals: Path) -> int:
        """The cut moved back to just after a line break, when one is within a tenth of the held-out tokens."""
        cut = plan["validation_from_token"]
        starts = [t["first_token"] for t in plan["tasks"]]
        task = max(t for t, first in enumerate(starts) if first <= cut) if cut < plan["tokens"] else None
        if task is None:
            return cut
        read = _dir(self.work, "read", source, task)
        tokenizer = _tokenizer(self.recipe.tokenizer.dir)
        tokens = _kept_stream(read, removals / f"{source:03d}-{task:05d}.npz", token_dtype(len(tokenizer)))
        local = cut - starts[task]
        reach = min((plan["tokens"] - cut) // 10, LINE_BREAK_SEARCH, local)
        for back in range(reach):
            if tokenizer.decode([int(tokens[local - 1 - back])]).endswith("\n"):
                return cut - back
        return cut

    def _removed(self, tasks: int) -> tuple[dict[tuple[int, int], list[int]], set[int]]:
        parent: dict[int, int] = {}

        def root(x: int) -> int:
            while parent.get(x, x) != x:
                parent[x] = parent.get(parent[x], parent[x])  # path halving
                x = parent[x]
            return x

        exact: set[int] = set()
        for p in range(tasks):
            pairs = np.load(self.work / "dedup" / f"{p:05d}.npz")
            for a, b in zip(pairs["first"].tolist(), pairs["later"].tolist()):
                ra, rb = root(a), root(b)
                if ra != rb:  # the smaller order is the root: the first copy is the one kept
                    parent[max(ra, rb)] = min(ra, rb)
            exact.update(pairs["later"][pairs["exact"]].tolist())
        removed: dict[tuple[int, int], list[int]] = {}
        mask = (1 << _TASK_BITS) - 1
        for node in parent:
            if root(node) != node:
                key = (node >> _SOURCE_BITS, (node >> _TASK_BITS) & ((1 << (_SOURCE_BITS - _TASK_BITS)) - 1))
                removed.setdefault(key, []).append(node & mask)
        return removed, exact


def _kept_stream(read: Path, removals: Path, dtype: np.dtype) -> np.ndarray:
    """A task's token stream without the documents the cluster stage removed."""
    lengths = np.load(read / "lengths.npy")
    if not lengths.sum():
        return np.empty(0, dtype=dtype)
    keep = np.ones(len(lengths), dtype=bool)
    keep[np.load(removals)["removed"]] = False
    tokens = np.memmap(read / f"tokens{SHARD_SUFFIX}", dtype=dtype, mode="r")
    return tokens[np.repeat(keep, lengths + 1)]


def _validation_plan(validation_by: str, documents: int, tokens: int, fraction: float) -> dict:
    """documents: held out by a hash of each document's text; spans: the last `fraction` of the source's tokens."""
    enough = math.ceil(MIN_HELD_OUT_DOCUMENTS / fraction)
    if validation_by == "documents" or (validation_by == "auto" and documents >= enough):
        return {"validation_by": "documents"}
    why = "validation_by: spans" if validation_by == "spans" else f"{documents} document(s), fewer than {enough}"
    held = math.ceil(fraction * tokens)
    return {
        "validation_by": "spans",
        "validation_from_token": tokens - held,
        "note": f"{why}: too few to hold out {fraction:.2%} by whole documents, so validation is the last "
        f"{held:,} of its {tokens:,} tokens",
    }


class WriteStep(_Step):
    """Stage 4: one slice's kept documents, to the final train and validation shards; its counts and held-out text."""

    name = "write the final shards"

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        tokenizer = _tokenizer(self.recipe.tokenizer.dir)
        for i in range(len(self.recipe.data.sources)):
            plan = json.loads((self.work / "plan" / f"{i:03d}.json").read_text(encoding="utf-8"))
            writers = {
                split: ShardWriter(
                    source_dir(self.work / "data", i, split) / f"{rank:05d}{SHARD_SUFFIX}",
                    token_dtype(len(tokenizer)),
                    tokenizer.eos_token_id,
                )
                for split in SPLITS
            }
            if plan["validation_by"] == "documents":
                held_out = self._documents(i, rank, writers)
            else:
                held_out = self._spans(i, rank, plan, writers, tokenizer)
            for writer in writers.values():
                writer.close()
            summary = {split: {"documents": w.documents, "tokens": w.tokens} for split, w in writers.items()}
            out = self.work / "written" / f"{i:03d}-{rank:05d}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            partial.write_text(json.dumps({"splits": summary, "held_out": held_out}, ensure_ascii=False), "utf-8")
            os.replace(partial, out)

    def _documents(self, source: int, rank: int, writers: dict[str, ShardWriter]) -> list[str]:
        """Kept documents to the split their text's hash chose, WRITE_CHUNK documents at a time (bounded memory)."""
        read = _dir(self.work, "read", source, rank)
        lengths = np.load(read / "lengths.npy")
        keep = np.ones(len(lengths), dtype=bool)
        keep[np.load(self.work / "plan" / f"{source:03d}-{rank:05d}.npz")["removed"]] = False
        validation = np.load(read / "validation.npy")
        tokens = (
            np.memmap(read / f"tokens{SHARD_SUFFIX}", dtype=writers["train"].dtype, mode="r") if len(lengths) else None
        )
        ends = np.cumsum(lengths + 1)
        for first in range(0, len(lengths), WRITE_CHUNK):
            last = min(first + WRITE_CHUNK, len(lengths))
            start = int(ends[first - 1]) if first else 0
            chunk = tokens[start : int(ends[last - 1])]
            document = np.repeat(np.arange(last - first), lengths[first:last] + 1)
            for split, wanted in (("train", False), ("validation", True)):
                mask = keep[first:last] & (validation[first:last] == wanted)
                writers[split].add_stream(chunk[mask[document]], int(mask.sum()))
        held_out = json.loads((read / "held_out.json").read_text(encoding="utf-8"))
        return [h["text"] for h in held_out if keep[h["index"]]]

    def _spans(self, source: int, rank: int, plan: dict, writers: dict[str, ShardWriter], tokenizer) -> list[str]:
        """The slice's kept tokens, cut where the source's validation tail begins (if it begins in this slice)."""
        read = _dir(self.work, "read", source, rank)
        removals = self.work / "plan" / f"{source:03d}-{rank:05d}.npz"
        stream = _kept_stream(read, removals, writers["train"].dtype)
        cut = min(max(plan["validation_from_token"] - plan["tasks"][rank]["first_token"], 0), len(stream))
        eos = tokenizer.eos_token_id
        train, validation = stream[:cut], stream[cut:]
        if 0 < cut < len(stream) and stream[cut - 1] != eos:  # the cut piece ends with its own eos
            train = np.append(train, np.array([eos], dtype=train.dtype))
        writers["train"].add_stream(train, int((train == eos).sum()))
        writers["validation"].add_stream(validation, int((validation == eos).sum()))
        return [tokenizer.decode(validation[:HELD_OUT_CHARS].tolist())] if len(validation) else []


def source_summary(work: Path, source: int, tasks: int) -> tuple[dict, dict[str, dict], list[str]]:
    """A source's plan, its per-split documents and tokens added over the tasks, and its held-out text in order."""
    plan = json.loads((work / "plan" / f"{source:03d}.json").read_text(encoding="utf-8"))
    splits = {split: Counter() for split in SPLITS}
    held_out: list[str] = []
    chars = 0
    for t in range(tasks):
        written = json.loads((work / "written" / f"{source:03d}-{t:05d}.json").read_text(encoding="utf-8"))
        for split in SPLITS:
            splits[split].update(written["splits"][split])
        for text in written["held_out"]:  # the source's first held-out documents, up to the cap
            if chars >= HELD_OUT_CHARS:
                break
            held_out.append(text)
            chars += len(text)
    return plan, {split: dict(c) for split, c in splits.items()}, held_out


def read_task_stats(work: Path, tasks: int) -> tuple[dict, dict]:
    """Stage 1's tasks, added up: the encoders' counts (the first difference: the first task's), and where the
    tasks' time went: seconds per phase (read_clean_filter, tokenize, write, dedup_keys), the tokens they encoded
    (duplicates included: they are removed later) and the encoder's threads per task."""
    merged = {"documents": Counter(), "spot_checked_documents": 0, "fell_back_to_tokenizers_at": None}
    seconds, tokens, threads = Counter(), 0, set()
    for t in range(tasks):
        part = json.loads((work / "read" / f"task-{t:05d}.json").read_text(encoding="utf-8"))
        encoder = part["encoder"]
        merged["documents"].update(encoder["documents"])
        merged["spot_checked_documents"] += encoder["spot_checked_documents"]
        merged["fell_back_to_tokenizers_at"] = (
            merged["fell_back_to_tokenizers_at"] or encoder["fell_back_to_tokenizers_at"]
        )
        seconds.update(part["seconds"])
        tokens += part["tokens"]
        threads.add(part["threads"])
    timing = {"seconds": {phase: round(s, 3) for phase, s in seconds.items()}, "tokens_encoded": tokens,
              "encoder_threads": sorted(threads)}  # fmt: skip
    return merged | {"documents": dict(merged["documents"])}, timing
