import os

os.environ["HF_HUB_OFFLINE"] = "1"

from lmtrain.config.recipe import CleanConfig, DataConfig, DedupConfig, QualityFilterConfig, SourceConfig  # noqa: E402
from lmtrain.corpus.dedup import Deduplicator  # noqa: E402
from lmtrain.corpus.mixture import WeightedMixture, open_sources  # noqa: E402
from tests.test_filters import ENGLISH  # noqa: E402


def test_shares_follow_the_weights_at_every_prefix():
    streams = [iter(["a" * 10] * 1000), iter(["b" * 3] * 1000), iter(["c" * 7] * 1000)]
    mixture = WeightedMixture(streams, [0.5, 0.3, 0.2], size=len)
    taken = [0, 0, 0]
    for count, (i, item) in enumerate(mixture, start=1):
        taken[i] += len(item)
        if count % 50 == 0:
            total = sum(taken)
            # The furthest-behind rule keeps every share within one item of its target.
            assert all(abs(t - w * total) <= 10 for t, w in zip(taken, [0.5, 0.3, 0.2]))
    assert mixture.taken == taken


def test_ends_when_a_weighted_stream_runs_out_and_never_reads_weight_zero():
    read_from_zero = []

    def zero_weight():
        read_from_zero.append(1)
        yield "z"

    mixture = WeightedMixture([iter(["a"] * 100), iter(["b"] * 3), zero_weight()], [1, 1, 0], size=len)
    items = list(mixture)
    assert mixture.exhausted == 1
    assert [i for i, _ in items].count(1) == 3 and [i for i, _ in items].count(0) in (3, 4)
    assert not read_from_zero


def test_sources_are_cleaned_filtered_and_deduplicated_with_their_own_settings(tmp_path):
    prose = ENGLISH
    (tmp_path / "a.txt").write_text("<p>" + prose + "</p>", encoding="utf-8")
    (tmp_path / "b.txt").write_text(prose, encoding="utf-8")  # the same text once cleaned
    (tmp_path / "short.txt").write_text("x", encoding="utf-8")
    (tmp_path / "code.txt").write_text("if a<b and c>d:\n    pass", encoding="utf-8")
    data = DataConfig(
        sources=[
            SourceConfig(kind="files", paths=[str(tmp_path / p) for p in ("a.txt", "b.txt", "short.txt")]),
            SourceConfig(
                kind="files",
                paths=[str(tmp_path / "code.txt")],
                clean=CleanConfig(strip_html=False),
                filters=QualityFilterConfig(enabled=False),
            ),
        ],
        clean=CleanConfig(min_chars=5),
        filters=QualityFilterConfig(enabled=True, min_units=10),
    )
    streams, stats = open_sources(data, Deduplicator(DedupConfig()))
    assert list(streams[0]) == [prose]
    assert list(streams[1]) == ["if a<b and c>d:\n    pass"]  # not stripped as HTML, not filtered as prose
    assert stats[0].too_short == 1 and stats[0].duplicates["exact_duplicate"] == 1 and stats[0].kept == 1
    assert stats[1].kept == 1 and not stats[1].filtered
