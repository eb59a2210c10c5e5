"""Per-source document streams (read -> clean -> filter -> dedup) and their weighted mixture.

Both the tokenizer and data preparation draw their text from here, so they see the same
cleaned, filtered documents in the same proportions. Everything is lazy: a source is read only
as far as the mixture needs it, which is what makes streamed Hub datasets usable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lmtrain.config.recipe import DataConfig, SourceConfig
from lmtrain.corpus.cleaning import clean_text
from lmtrain.corpus.dedup import Deduplicator
from lmtrain.corpus.filters import filter_document
from lmtrain.corpus.sources import CorpusStats, read_source, source_label

T = TypeVar("T")


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
        }

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
    source: SourceConfig, index: int, data: DataConfig, dedup: Deduplicator | None, stats: SourceStats
) -> Iterator[str]:
    """One source's cleaned documents that pass its quality filters and are not duplicates."""
    clean = source.clean or data.clean
    filters = source.filters or data.filters
    min_chars = max(clean.min_chars, 1)
    for raw in read_source(source, stats.corpus):
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


def open_sources(data: DataConfig, dedup: Deduplicator | None) -> tuple[list[Iterator[str]], list[SourceStats]]:
    """A document stream and its stats for every source; one deduplicator spans them all."""
    stats = [SourceStats(source_label(s, i)) for i, s in enumerate(data.sources)]
    streams = [source_documents(s, i, data, dedup, st) for i, (s, st) in enumerate(zip(data.sources, stats))]
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
