import hashlib
import os
import random
import zlib

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lmtrain.config.recipe import DedupConfig  # noqa: E402
from lmtrain.corpus.dedup import Deduplicator, MinHasher, exact_key, lsh_bands  # noqa: E402

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


def distinct_words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_near_threshold_is_the_one_configured():
    """Two documents whose 5-gram Jaccard similarity is exactly 1/2, counted by hand: 124 distinct words give 120
    shingles; the copy replaces its last 40 words, which keeps the 80 shingles inside the first 84 words and makes 40
    new ones, so |A ∩ B| = 80 and |A ∪ B| = 120 + 40 = 160. Above 0.5 (0.9: 6 bands of 17 rows, collision chance
    1 - (1 - 0.5^17)^6 ≈ 5e-5) the copy is kept; below it (0.2: 56 bands of 2 rows, 1 - (1 - 0.5^2)^56 ≈ 1 - 1e-7)
    it is removed; the default 0.8 (10 bands of 11 rows, ≈ 0.005) keeps it too, so only the setting can remove it."""
    original = distinct_words("w", 124)
    copy = original[:84] + distinct_words("x", 40)
    a, b = " ".join(original), " ".join(copy)
    assert jaccard(a, b) == 80 / 160 == 0.5  # the helper above agrees with the count
    verdicts = {}
    for threshold in (0.9, 0.8, 0.2):
        dedup = Deduplicator(DedupConfig(exact=False, near_threshold=threshold))
        assert dedup.check(a) is None
        verdicts[threshold] = dedup.check(b)
    assert verdicts == {0.9: None, 0.8: None, 0.2: "near_duplicate"}
    assert Deduplicator(DedupConfig(near_threshold=0.2)).describe()["bands"] == 56
    assert Deduplicator(DedupConfig(near_threshold=0.9)).describe()["rows"] == 17


def test_ngram_length_is_the_one_configured():
    """Shingles of 2 words: "a b c d" has {ab, bc, cd}; "a b x d" has {ab, bx, xd}; Jaccard 1/5. With 1-word shingles
    the same pair shares {a, b, d} of {a, b, c, d, x}: 3/5."""
    hasher_2, hasher_1 = MinHasher(num_perm=8, ngram=2), MinHasher(num_perm=8, ngram=1)
    assert len(hasher_2.shingles("a b c d")) == 3 and len(hasher_1.shingles("a b c d")) == 4
    assert len(set(hasher_2.shingles("a b c d")) & set(hasher_2.shingles("a b x d"))) == 1
    assert len(set(hasher_1.shingles("a b c d")) & set(hasher_1.shingles("a b x d"))) == 3
    assert len(hasher_2.shingles("a b a b a b")) == 2  # {ab, ba}: distinct shingles only
    assert len(hasher_2.shingles("A, b! 河水")) == 3  # units: a, b, 河, 水 (lower-cased, CJK one by one)


def test_describe_reports_the_configuration():
    dedup = Deduplicator(DedupConfig(exact=False, near=True, near_threshold=0.72, num_perm=112, ngram=3))
    assert dedup.describe() == {
        "exact": False,
        "near": True,
        "near_threshold": 0.72,
        "ngram": 3,
        "bands": 14,
        "rows": 8,
    }


# ---------------------------------------------------------------- the hash functions, against a plain-Python version

MASK = 2**64 - 1
BASE = 0x100000001B3  # the module's documented FNV-64 prime


def python_shingles(units: list[str], n: int) -> list[int]:
    """crc32 of each unit, then c0*B^(n-1) + ... + c(n-1) mod 2^64 per n-gram (the whole text if it is shorter)."""
    codes = [zlib.crc32(u.encode("utf-8")) for u in units]
    n = min(n, len(codes))
    grams = set()
    for i in range(len(codes) - n + 1):
        value = 0
        for code in codes[i : i + n]:
            value = (value * BASE + code) & MASK
        grams.add(value)
    return sorted(grams)


def test_shingle_hashes_equal_the_documented_polynomial():
    hasher = MinHasher(num_perm=4, ngram=3)
    assert hasher.shingles("River, TOWN bridge; river town bridge water").tolist() == python_shingles(
        ["river", "town", "bridge", "river", "town", "bridge", "water"], 3
    )
    assert hasher.shingles("河水 流").tolist() == python_shingles(["河", "水", "流"], 3)
    assert hasher.shingles("one two").tolist() == python_shingles(["one", "two"], 2)  # shorter than the n-gram
    assert MinHasher(4, 1).shingles("b a b a").tolist() == sorted({zlib.crc32(b"a"), zlib.crc32(b"b")})
    assert MinHasher(4, 1).shingles("only").tolist() == [zlib.crc32(b"only")]
    assert hasher.shingles("... !").tolist() == []


def test_signature_is_the_minimum_of_multiply_shift_hashes():
    hasher = MinHasher(num_perm=16, ngram=2)
    shingles = hasher.shingles(" ".join(f"w{i}" for i in range(40)))
    signature = hasher.signature(shingles)
    expected = [
        min(((int(s) * int(mul) + int(add)) & MASK) >> 32 for s in shingles) for mul, add in zip(hasher.mul, hasher.add)
    ]
    assert signature.dtype == np.uint32 and signature.tolist() == expected
    # each of the 16 permutations has its own minimum, not always the first shingle
    assert (
        len(
            {
                min(range(len(shingles)), key=lambda i: (int(shingles[i]) * int(m) + int(a)) & MASK)
                for m, a in zip(hasher.mul, hasher.add)
            }
        )
        > 1
    )


def test_permutation_parameters_are_fixed_odd_and_spread_over_64_bits():
    a, b = MinHasher(num_perm=112, ngram=5), MinHasher(num_perm=112, ngram=5)
    assert a.mul.tolist() == b.mul.tolist() and a.add.tolist() == b.add.tolist()  # the same on every run
    assert a.mul.dtype == a.add.dtype == np.uint64 and a.mul.shape == a.add.shape == (112,)
    assert all(m % 2 == 1 for m in a.mul.tolist())
    # uniform below 2^63: 112 draws all below 2^62 has probability 2^-112
    assert max(a.mul.tolist()) >= 2**62 and max(a.add.tolist()) >= 2**62
    assert len(set(a.add.tolist())) == 112


def test_band_keys_are_the_polynomial_of_each_band_rows():
    dedup = Deduplicator(DedupConfig(exact=False, near_threshold=0.5, num_perm=20))
    bands, rows = dedup.bands, dedup.rows
    assert rows > 1 and bands > 1
    text = " ".join(f"w{i}" for i in range(30))
    signature = dedup.hasher.signature(dedup.hasher.shingles(text)).tolist()
    assert dedup.check(text) is None
    for band in range(bands):
        key = 0
        for j, value in enumerate(signature[band * rows : (band + 1) * rows]):
            key = (key + value * pow(BASE, j, 2**64)) & MASK
        assert dedup._band_tables[band] == {key}


def test_exact_key_is_the_64_bit_blake2b_of_the_folded_text():
    folded = "helloworld你好世界"
    expected = int.from_bytes(hashlib.blake2b(folded.encode("utf-8"), digest_size=8).digest(), "big")
    assert exact_key("Hello, World!\n你好，世界。") == expected < 2**64


def test_lsh_bands_edge_thresholds():
    assert lsh_bands(0.01, 112) == (112, 1)  # one row per band: midpoint 1/112
    assert lsh_bands(1.0, 112) == (1, 112)  # b = 1 gives midpoint 1 for every r: the most rows win the tie


def test_the_ascii_path_gives_the_units_and_exact_key_of_the_unicode_path():
    """ASCII text skips the Unicode regexes: the units and exact key must be the ones those regexes give."""
    from lmtrain.corpus.dedup import _NON_WORD, units
    from lmtrain.corpus.filters import UNIT

    rng = random.Random(0)
    every_ascii = "".join(map(chr, range(128)))
    texts = [every_ascii, "def f(x_1, y):\n\treturn x_1+y  # Sum\r\n", "__init__ A1b2 _c_ 3.14e-2"]
    texts += ["".join(rng.choice(every_ascii) for _ in range(200)) for _ in range(50)]
    for text in texts:
        assert text.isascii()
        assert units(text) == [u.encode() for u in UNIT.findall(text.lower())]
        folded = _NON_WORD.sub("", text.casefold()).encode()
        assert exact_key(text) == int.from_bytes(hashlib.blake2b(folded, digest_size=8).digest(), "big")
    assert units("Naïve café 河水") == ["naïve".encode(), "café".encode(), "河".encode(), "水".encode()]


def test_signature_over_several_chunks_is_the_minimum_over_all_shingles():
    """A document longer than one signature step (_CHUNK shingles) still gets the minimum over all its shingles."""
    from lmtrain.corpus.dedup import _CHUNK

    hasher = MinHasher(num_perm=8, ngram=1)
    shingles = hasher.shingles(" ".join(f"w{i}" for i in range(3 * _CHUNK + 7)))
    assert len(shingles) > 3 * _CHUNK
    expected = [
        min(((int(s) * int(mul) + int(add)) & MASK) >> 32 for s in shingles) for mul, add in zip(hasher.mul, hasher.add)
    ]
    assert hasher.signature(shingles).tolist() == expected
