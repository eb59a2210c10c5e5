import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from lmtrain.config.recipe import DedupConfig  # noqa: E402
from lmtrain.corpus.dedup import Deduplicator, MinHasher, lsh_bands  # noqa: E402

WORDS = (
    "river town bridge water market music square lamp evening spring snow mountain valley boat quay "
    "visitor walk current light stone house street garden window door table chair book letter"
).split()
HAN = "河城桥水市音乐广场灯晚春雪山谷船码头游客步流光石房街园窗门桌椅书信"


def english(seed: int, n: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chinese(seed: int, n: int = 600) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(HAN) for _ in range(n))


def edit(text: str, fraction: float, seed: int, vocabulary) -> str:
    """Replace a fraction of the units (words, or characters for Chinese) with random ones."""
    rng = random.Random(seed)
    units = text.split() if " " in text else list(text)
    for i in rng.sample(range(len(units)), int(len(units) * fraction)):
        units[i] = rng.choice(vocabulary)
    return " ".join(units) if " " in text else "".join(units)


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of n-gram sets, computed independently of the MinHash code."""

    def grams(text):
        units = text.split() if " " in text else list(text)
        return {tuple(units[i : i + n]) for i in range(len(units) - n + 1)}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def test_lsh_bands_put_the_s_curve_midpoint_at_the_threshold():
    assert lsh_bands(0.72, 112) == (14, 8)  # FineWeb's setting
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 128)
        assert bands * rows <= 128 and abs((1 / bands) ** (1 / rows) - threshold) < 0.03


def test_minhash_estimates_jaccard():
    hasher = MinHasher(num_perm=256, ngram=5)
    base = english(1, 2000)
    for fraction in (0.02, 0.05, 0.1):
        other = edit(base, fraction, seed=2, vocabulary=WORDS)
        a, b = (hasher.signature(hasher.shingles(t)) for t in (base, other))
        estimate = (a == b).mean()
        assert abs(estimate - jaccard(base, other)) < 0.08


def test_exact_duplicates_ignore_case_spacing_punctuation_and_width():
    dedup = Deduplicator(DedupConfig(near=False))
    assert dedup.check("Hello, World!\n你好，世界。") is None
    assert dedup.check("hello world   你好 世界") == "exact_duplicate"
    assert (
        dedup.check("ＨＥＬＬＯ　ｗｏｒｌｄ！你好,世界.") == "exact_duplicate"
    )  # full-width forms fold for the comparison
    assert dedup.check("hello worlds 你好世界") is None


@pytest.mark.parametrize("make, vocabulary", [(english, WORDS), (chinese, HAN)], ids=["english", "chinese"])
def test_near_duplicates_above_the_threshold_are_caught_and_distinct_documents_kept(make, vocabulary):
    dedup = Deduplicator(DedupConfig(exact=False, near_threshold=0.8))
    base = make(0)
    assert dedup.check(base) is None
    light_edit = edit(base, 0.01, seed=1, vocabulary=vocabulary)
    assert jaccard(base, light_edit) > 0.9
    assert dedup.check(light_edit) == "near_duplicate"
    heavy_edit = edit(base, 0.3, seed=2, vocabulary=vocabulary)
    assert jaccard(base, heavy_edit) < 0.3
    assert dedup.check(heavy_edit) is None
    unrelated = [make(seed) for seed in range(10, 30)]
    assert [dedup.check(t) for t in unrelated] == [None] * 20


def test_duplicates_are_not_remembered_and_results_are_deterministic():
    texts = [english(i % 7) for i in range(20)]
    runs = []
    for _ in range(2):
        dedup = Deduplicator(DedupConfig())
        runs.append([dedup.check(t) for t in texts])
    assert runs[0] == runs[1]
    assert runs[0][:7] == [None] * 7 and set(runs[0][7:]) == {"exact_duplicate"}


def test_short_and_empty_documents():
    dedup = Deduplicator(DedupConfig(exact=False))
    assert dedup.check("one two") is None
    assert dedup.check("one two") == "near_duplicate"  # shorter than the n-gram: one shingle of all units
    assert dedup.check("...") is None and dedup.check("...") is None  # no units: nothing to compare
