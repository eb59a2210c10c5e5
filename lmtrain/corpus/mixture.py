"""Per-source document streams (read -> clean -> filter -> dedup -> split) and their weighted mixture.

Both the tokenizer and data preparation draw their text from here, so they see the same
cleaned, filtered documents in the same proportions, and hold out the same validation text: asked
to split, a source's documents come out as `Document`s that carry their split. Everything is lazy: a
source is read only as far as the mixture needs it (and, to choose how to hold out validation, its
first 5 / validation_fraction documents), which is what makes streamed Hub datasets usable.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Generic, TypeVar

from lmtrain.config.recipe import DataConfig, SourceConfig
from lmtrain.corpus.cleaning import clean_text
from lmtrain.corpus.dedup import Deduplicator
from lmtrain.corpus.filters import filter_document
from lmtrain.corpus.sources import CorpusStats, Document, is_validation_document, read_source, source_label

T = TypeVar("T")

MIN_HELD_OUT_DOCUMENTS = 5
"""validation_by auto holds out whole documents when at least this many are expected in validation. Below,
chance rules the held-out share (with 5 expected, none at all comes out 0.7% of the time; with 1, 37%)."""


@dataclass
class SourceStats:
    """What happened to one source's documents, step by step."""

    name: str
    corpus: CorpusStats = field(default_factory=CorpusStats)
    too_short: int = 0
    filtered: Counter = field(default_factory=Counter)
    boilerplate_lines_removed: int = 0
    duplicates: Counter = field(default_factory=Counter)
    kept: int = 0
    validation_by: str = ""
    """documents or spans, once the source's first documents have shown which."""
    validation_note: str = ""

    def to_dict(self) -> dict:
        return {
            "documents_read": self.corpus.documents,
            "skipped": dict(self.corpus.skipped),
            "too_short_after_cleaning": self.too_short,
            "filtered": dict(self.filtered),
            "boilerplate_lines_removed": self.boilerplate_lines_removed,
            "exact_duplicates": self.duplicates["exact_duplicate"],
            "near_duplicates": self.duplicates["near_duplicate"],
            "kept": self.kept,
            "validation_by": self.validation_by,
        } | ({"validation_note": self.validation_note} if self.validation_note else {})

    def why_empty(self) -> str:
        """A one-line account of where a source's documents went."""
        parts = [f"{self.corpus.documents} read"]
        parts += [f"{n} skipped ({reason.replace('_', ' ')})" for reason, n in self.corpus.skipped.items()]
        if self.too_short:
            parts.append(f"{self.too_short} too short after cleaning")
        parts += [f"{n} filtered ({reason})" for reason, n in self.filtered.most_common()]
        parts += [f"{n} {reason.replace('_', ' ')}s" for reason, n in self.duplicates.items()]
        return ", ".join(parts)


def source_documents(
    source: SourceConfig,
    index: int,
    data: DataConfig,
    dedup: Deduplicator | None,
    stats: SourceStats,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[str]:
    """One source's cleaned documents that pass its quality filters and are not duplicates (of `shard`, a slice
    of the source: sources.read_source)."""
    clean = source.clean or data.clean
    filters = source.filters or data.filters
    min_chars = max(clean.min_chars, 1)
    for raw in read_source(source, stats.corpus, f"data.sources.{index}", shard):
        text = clean_text(raw, clean)
        if len(text) < min_chars:
            stats.too_short += 1
            continue
        if filters.enabled:
            verdict = filter_document(text, filters)
            stats.boilerplate_lines_removed += verdict.boilerplate_lines
            if verdict.reason is not None:
                stats.filtered[verdict.reason] += 1
                continue
            text = verdict.text
        duplicate = dedup.check(text) if dedup is not None else None
        if duplicate is not None:
            stats.duplicates[duplicate] += 1
            continue
        stats.kept += 1
        yield text


def split_documents(
    documents: Iterator[str], source: SourceConfig, fraction: float, stats: SourceStats
) -> Iterator[Document]:
    """The source's documents, each marked train or validation as its validation_by says."""
    buffered: list[str] = []
    if source.validation_by == "auto":
        enough = math.ceil(MIN_HELD_OUT_DOCUMENTS / fraction)
        buffered = list(islice(documents, enough))
        if len(buffered) < enough:
            yield from _hold_out_tail(buffered, fraction, stats, f"{len(buffered)} document(s), fewer than {enough}")
            return
    elif source.validation_by == "spans":
        yield from _hold_out_tail(list(documents), fraction, stats, "validation_by: spans")
        return
    stats.validation_by = "documents"
    for text in chain(buffered, documents):
        yield Document(text, is_validation_document(text, fraction))


def _hold_out_tail(documents: list[str], fraction: float, stats: SourceStats, why: str) -> Iterator[Document]:
    """The last `fraction` of the characters of `documents` as validation, cut at a line break near the exact
    point when there is one within a tenth of the held-out length. The held-out pieces come first, so that
    a mixture ending before this source does still has its validation text."""
    stats.validation_by = "spans"
    total = sum(map(len, documents))
    need = math.ceil(fraction * total)
    train, held_out = list(documents), []
    while need > 0 and train:
        text = train.pop()
        if len(text) <= need:
            held_out.insert(0, text)
            need -= len(text)
            continue
        cut = len(text) - need
        line_break = text.rfind("\n", max(0, cut - need // 10), cut)
        cut = line_break + 1 if line_break >= 0 else cut
        train.append(text[:cut])
        held_out.insert(0, text[cut:])
        need = 0
    chars = sum(map(len, held_out))
    stats.validation_note = (
        f"{why}: too few to hold out {fraction:.2%} by whole documents, so validation is the last "
        f"{chars:,} of its {total:,} characters"
    )
    print(f"data: {stats.name}: {stats.validation_note}", file=sys.stderr)
    for text in held_out:
        yield Document(text, True)
    for text in train:
        yield Document(text, False)


def open_sources(
    data: DataConfig, dedup: Deduplicator | None, split: bool = False
) -> tuple[list[Iterator[str]], list[SourceStats]]:
    """A document stream and its stats for every source; one deduplicator spans them all. With `split`, the
    documents are `Document`s that carry their split (split_documents); the tokenizer and data preparation
    must both ask for it, to hold out the same text."""
    stats = [SourceStats(source_label(s, i)) for i, s in enumerate(data.sources)]
    streams = [source_documents(s, i, data, dedup, st) for i, (s, st) in enumerate(zip(data.sources, stats))]
    if split:
        streams = [
            split_documents(stream, s, data.validation_fraction, st)
            for stream, s, st in zip(streams, data.sources, stats)
        ]
    return streams, stats


class WeightedMixture(Generic[T]):
    """Items from several streams such that each stream's share of the total size follows its weight.

    Each next item comes from the stream furthest below its share (smallest size taken / weight;
    ties to the first), so the shares are met at every prefix of the output, deterministically,
    without knowing the streams' lengths. The mixture ends when a stream with positive weight runs
    out: going on without it would break the shares. Streams of weight 0 are never read."""

    def __init__(self, streams: list[Iterator[T]], weights: list[float], size: Callable[[T], int]):
        self.streams = streams
        self.weights = weights
        self.size = size
        self.taken = [0] * len(streams)
        self.items = [0] * len(streams)
        self.exhausted: int | None = None
        """Index of the stream whose end ended the mixture."""

    def __iter__(self) -> Iterator[tuple[int, T]]:
        active = [i for i, w in enumerate(self.weights) if w > 0]
        while True:
            i = min(active, key=lambda j: self.taken[j] / self.weights[j])
            item = next(self.streams[i], None)
            if item is None:
                self.exhausted = i
                return
            self.taken[i] += self.size(item)
            self.items[i] += 1
            yield i, item

    def shares(self) -> list[float]:
        total = sum(self.taken)
        return [t / total if total else 0.0 for t in self.taken]
