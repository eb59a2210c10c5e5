"""Byte-level BPE tokenizer: training on the recipe's corpus, saving, loading, fingerprinting.

Design (GPT-2/GPT-4 family):
- No normalizer, and byte-level pre-tokenization with a byte-level decoder, so that
  decode(encode(text)) == text for any Unicode string: cleaning is done once, in the data
  pipeline, never hidden in the tokenizer.
- A GPT-4-style split regex before the byte mapping, with two changes: digits are split one
  by one (numbers get consistent tokens, as in Llama 3 / Qwen), and runs of CJK characters
  are split from runs of other letters (so "Python是" is two pre-tokens, not one). While training
  only, CJK runs are also cut into pieces of at most CJK_TRAINING_CHUNK_CHARS characters
  (tokenizer.cjk_training_chunk_chars), so that the trainer's memory does not grow with every
  distinct Chinese clause.
- Special tokens get fixed ids 0-3 (see SPECIAL_TOKENS); the vocabulary is then padded with
  `<|reserved_N|>` tokens to exactly `tokenizer.vocab_size`, the model's embedding size.

Training (`train_bpe`) learns the merges on characters and writes them as byte-level BPE, about
3× faster than training on bytes (benchmarks/README.md): on bytes, every CJK character first
costs two merges of its UTF-8 bytes, and `tokenizers`' trainer pays for each merge with a pass
over every word that holds it (in Chinese, nearly every word). So the alphabet is chosen first (ASCII, then the most frequent other characters, to
ALPHABET_COVERAGE of the text, as sentencepiece's character_coverage), BPE is trained on those
characters, and the byte-level model gets, first, the merges that build each alphabet character
from its bytes, then the learned merges spelled in bytes. Text made of alphabet characters is
encoded exactly as the character-level model would encode it; any other character is left to its
bytes, so nothing is ever unknown and the round trip stays exact.

The tokenizer trains on the cleaned documents of the train split only (the same hash split
as the data pipeline), so validation text is held out and gives an honest bytes/token.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tiktoken
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmtrain.config.recipe import DedupConfig, Recipe, TokenizerConfig
from lmtrain.corpus.dedup import Deduplicator
from lmtrain.corpus.mixture import WeightedMixture, open_sources
from lmtrain.corpus.sources import describe_source, is_validation_document
from lmtrain.errors import UserError
from lmtrain.tokenizer.report import write_quality_report

EOS_TOKEN = "<|endoftext|>"
"""Ends every document in the packed data; also used as bos (documents are not prefixed)."""
PAD_TOKEN = "<|pad|>"
"""Padding for batched generation and fine-tuning; never appears in packed pretraining data."""
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
"""Reserved from the start for the ChatML template that SFT stores (lmtrain.finetune.sft), so fine-tuning
needs no new embeddings."""
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, *CHAT_TOKENS)
"""In id order: <|endoftext|>=0, <|pad|>=1, <|im_start|>=2, <|im_end|>=3."""
ENCODER_TOKENS = ("[CLS]", "[SEP]", "[MASK]")
"""An encoder's tokenizer only (model.architecture bert or modernbert): the ids right after the learned vocabulary,
where a decoder's tokenizer has its first reserved tokens, so decoder tokenizers keep every id they had. [MASK]
takes the space before it (lstrip, as RoBERTa's <mask>): words carry their leading space in this BPE, so
"x [MASK] 1" asks for the token " +", the one training replaced."""
RESERVED_TOKEN = "<|reserved_{}|>"

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"


def split_pattern(cjk_max_chars: int | None = None) -> str:
    """The pre-tokenization regex; with `cjk_max_chars`, CJK runs are cut into pieces of at most that many
    characters (from the run's start). tiktoken's regex engine (fancy-regex) and `tokenizers`' (Oniguruma) split
    alike with or without the bound (tests/test_tokenizer_cjk.py)."""
    cjk_run = f"{{1,{cjk_max_chars}}}" if cjk_max_chars else "+"
    return (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"  # English contractions
        rf"|[^\r\n\p{{L}}\p{{N}}]?[{_CJK}]{cjk_run}"  # a run of CJK characters
        rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{_CJK}]]+"  # a word of other letters, with its leading space
        r"|\p{N}"  # one digit
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*"  # punctuation and symbols
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"  # newlines; spaces (indentation stays one pre-token)
    )


SPLIT_PATTERN = split_pattern()
"""How the tokenizer splits text when it encodes (tiktoken and `tokenizers` alike): a CJK run stays whole, so
BPE places the token boundaries inside it where its merges fall, not at fixed offsets (measured with the
default 4: 6-10 % fewer tokens on held-out Chinese than cutting it as in training; benchmarks/README.md)."""
CJK_TRAINING_CHUNK_CHARS = TokenizerConfig.cjk_training_chunk_chars
r"""While the merges are learned, a run of CJK characters is cut into pre-tokens of at most this many characters
(from its start; the recipe's tokenizer.cjk_training_chunk_chars), so no learned token holds more. Why: Chinese
has no spaces, so a whole run is a clause, nearly every clause is a distinct "word" for `tokenizers`' BPE
trainer, and its word table grew with the text (≈167 MB per million Chinese characters against ≈10 for code).
Qwen2 and GLM-4 keep the run whole (`\p{L}+`); sentencepiece bounds its pieces (max_sentencepiece_length,
default 16). Why 4: the smallest bound that keeps Chinese compression within 2 % at vocabulary 8,192 and 5 % at
64,000; it cuts the slope to ≈124 MB. 2 cuts it to ≈45 MB but costs 7 % and 19 %, 3 costs 4 % and 9 %
(benchmarks/tokenizer_cjk_bound.py and tokenizer_scale.py)."""

TRAINING_RECORD = "lmtrain_training.json"
"""Written next to tokenizer.json: the settings and corpus the tokenizer was trained on, and stats."""
HELD_OUT_SAMPLE_CHARS = 1_000_000
"""Validation-split characters kept aside to measure bytes/token after training."""
_FORMAT_VERSION = 4
"""Bump when the tokenizer design above changes, so that existing tokenizers are retrained."""
ALPHABET_COVERAGE = 0.999
"""Share of the training text's characters that are covered by characters with a token of their
own (sentencepiece's character_coverage; its default for CJK is 0.9995). Measured on 8 MB of
English and Chinese with 8,192 tokens (benchmarks/README.md, format 3): 0.995 gives 3.69/4.09 bytes/token
(en/zh), 0.999 3.62/4.21, 0.9995 3.58/4.18."""
ALPHABET_MAX_SHARE = 0.5
"""At most this share of the learnable vocabulary (beyond special tokens and the 256 bytes) goes to
whole characters and the byte prefixes that build them; the rest is left to merges."""
ALPHABET_SAMPLE_CHARS = 20_000_000
"""Characters counted, from the start of the training stream, to choose the alphabet."""
SERIAL_TRAINING_MAX_CORES = 2
"""On a machine with at most this many cores, the merges run on one thread: `tokenizers`' threads
hand work over at every merge, which costs more than it gains there (measured on 2 cores: 0.41 s
against 0.76 s for the benchmark's 8.4 MB), while reading the text gains from both (0.87 s against
1.32 s). With more cores, `tokenizers` parallelizes everything as usual."""
SPOT_CHECK_EVERY = 256
"""CorpusEncoder also encodes one document in this many with `tokenizers`, to compare."""


def train_tokenizer(
    recipe: Recipe, report_samples: dict[str, list[str]] | None = None, sample_text_column: str = "text"
) -> PreTrainedTokenizerFast:
    """Train (or reuse, if trained with the same settings on the same corpus) and save to tokenizer.dir,
    with its quality report (lmtrain/tokenizer/report.py). `report_samples` maps a language (en, zh,
    code) to files to measure it on instead of the defaults; a reused tokenizer is re-measured only
    when they are given."""
    out_dir = Path(recipe.tokenizer.dir)
    settings = _training_settings(recipe)
    model_max_length = recipe.model.max_position_embeddings or recipe.data.seq_len
    record_path = out_dir / TRAINING_RECORD
    if record_path.is_file() and (out_dir / "tokenizer.json").is_file():
        if json.loads(record_path.read_text(encoding="utf-8"))["settings"] == settings:
            print(f"tokenizer: reusing {out_dir} (trained with the same settings on the same corpus)")
            tokenizer = _reuse(out_dir, model_max_length)
            if report_samples:
                write_quality_report(recipe, [], report_samples, sample_text_column)
            return tokenizer
        print(f"tokenizer: settings or corpus changed since {out_dir} was trained; retraining")

    start = time.perf_counter()
    corpus = _TrainingCorpus(recipe)
    encoder_tokens = _encoder_tokens(recipe)
    learnable = recipe.tokenizer.vocab_size - len(encoder_tokens)
    backend = train_bpe(
        corpus.batches(), learnable, recipe.tokenizer.min_frequency, recipe.tokenizer.cjk_training_chunk_chars
    )
    if corpus.chars == 0:
        raise UserError(
            f"tokenizer: no training text: the sources gave {corpus.documents_read} document(s) and "
            "none is left after cleaning and holding out the validation split; add data to data.sources"
        )
    if encoder_tokens:
        add_encoder_tokens(backend)
    learned_size = backend.get_vocab_size()
    backend.add_special_tokens([RESERVED_TOKEN.format(i) for i in range(recipe.tokenizer.vocab_size - learned_size)])
    assert backend.get_vocab_size() == recipe.tokenizer.vocab_size

    cls, sep, mask = ENCODER_TOKENS if encoder_tokens else (None, None, None)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        **({"cls_token": cls, "sep_token": sep, "mask_token": mask} if encoder_tokens else {}),
        clean_up_tokenization_spaces=False,  # would otherwise "fix" spaces before punctuation and break round trips
        model_max_length=model_max_length,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path.unlink(missing_ok=True)  # until the new record is written, the dir never looks reusable
    tokenizer.save_pretrained(out_dir)
    record = {
        "settings": settings,
        "stats": {
            "seconds": round(time.perf_counter() - start, 2),
            "training_chars": corpus.chars,
            "learned_vocab_size": learned_size,
            "reserved_tokens_added": recipe.tokenizer.vocab_size - learned_size,
            "held_out_bytes_per_token": _bytes_per_token(corpus_encoder(out_dir), corpus.held_out),
            "corpus": corpus.stats(),
        },
    }
    write_quality_report(recipe, corpus.held_out, report_samples or {}, sample_text_column)
    # The record goes last: until it exists, the directory never looks reusable.
    record_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tokenizer


def _encoder_tokens(recipe: Recipe) -> tuple[str, ...]:
    return ENCODER_TOKENS if recipe.model.architecture in ("bert", "modernbert") else ()


def add_encoder_tokens(backend: Tokenizer) -> None:
    """[CLS], [SEP] and [MASK] after the learned vocabulary, and BERT's template: `tokenizer(text)` gives
    `[CLS] text [SEP]` and a pair `[CLS] A [SEP] B [SEP]` with token_type_ids 0 then 1, as fill-mask pipelines and
    sequence classification expect. The data pipeline encodes with add_special_tokens=False and never gets them."""
    cls, sep, mask = ENCODER_TOKENS
    backend.add_special_tokens([AddedToken(cls, special=True), AddedToken(sep, special=True),
                                AddedToken(mask, special=True, lstrip=True)])  # fmt: skip
    cls_id, sep_id = backend.token_to_id(cls), backend.token_to_id(sep)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """The saved tokenizer, through AutoTokenizer exactly as downstream users will load it."""
    if not (Path(directory) / "tokenizer.json").is_file():
        raise UserError(f"no tokenizer in {directory}; train one first: python tokenizer/train_tokenizer.py RECIPE")
    return AutoTokenizer.from_pretrained(str(directory))


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """The UTF-8 bytes of text each token id stands for, indexed by id: 0 for special and reserved tokens,
    which stand for no text. Byte-level BPE spells each byte as one character (GPT-2's byte-to-unicode map),
    so a token's byte count is the length of its string; the bytes of a text's tokens add up to the text's
    UTF-8 bytes, which bits per byte divides by."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    reserved = RESERVED_TOKEN.split("{")[0]
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return np.array(
        [0 if i in special or piece.startswith(reserved) else len(piece) for i, piece in enumerate(pieces)],
        dtype=np.int64,
    )


def tokenizer_fingerprint(directory: str | Path) -> str:
    """sha256 of tokenizer.json: changes exactly when the token ids a text gets could change."""
    return hashlib.sha256((Path(directory) / "tokenizer.json").read_bytes()).hexdigest()


def corpus_encoder(directory: str | Path, threads: int | None = None) -> CorpusEncoder:
    """The encoder the data pipeline tokenizes corpus text with (see CorpusEncoder), on `threads` threads (default:
    every core this process may run on)."""
    return CorpusEncoder(Path(directory) / "tokenizer.json", threads)


class CorpusEncoder:
    """Token ids for corpus text exactly as the saved tokenizer gives them, except that special-token
    strings in the text (say, a web page quoting "<|endoftext|>") are encoded as plain text, so only
    the pipeline itself places eos between documents.

    For a tokenizer of this project's design the ids come from tiktoken's BPE on the same merges, 3-4×
    faster than `tokenizers` on 2 cores (benchmarks/README.md). The two agree when the split regex
    is the same (SPLIT_PATTERN, which both regex engines split alike on every code point: benchmarks/README.md) and
    applying the lowest-ranked adjacent pair first gives what applying the merge list in order gives.
    That holds for merge lists the BPE trainer learns, but it is not implied by their shape, so it is
    checked, not assumed: `_tiktoken_encoding` accepts only a merge list in which each token is made by
    one merge, in id order, and on which both encode every vocabulary token's text alike; during a run,
    one document in SPOT_CHECK_EVERY is also encoded by `tokenizers`, and at the first difference that
    batch and all later ones are encoded by `tokenizers` (the data manifest counts both)."""

    def __init__(self, tokenizer_json: Path, threads: int | None = None):
        text = tokenizer_json.read_text(encoding="utf-8")
        self.reference = Tokenizer.from_str(text)
        self.reference.encode_special_tokens = True
        self.fast = _verified_tiktoken(text, self.reference)
        self.threads = threads or available_cores()
        self._workers = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tiktoken")
        self.documents = Counter()
        self.spot_checked = 0
        self.first_difference: str | None = None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.fast is not None:
            ids = self.fast_ids(texts)
            checked = texts[::SPOT_CHECK_EVERY]
            self.spot_checked += len(checked)
            for text, fast, reference in zip(checked, ids[::SPOT_CHECK_EVERY], self._reference(checked)):
                if fast != reference:
                    self.first_difference = text[:200]
                    self.fast = None
                    print(
                        f"data: tiktoken and tokenizers encode a document differently ({text[:80]!r}...); "
                        "encoding this batch and the rest with tokenizers",
                        file=sys.stderr,
                    )
                    break
            else:
                self.documents["tiktoken"] += len(texts)
                return ids
        self.documents["tokenizers"] += len(texts)
        return self._reference(texts)

    def fast_ids(self, texts: list[str]) -> list[list[int]]:
        """tiktoken's ids with no spot check (encode_batch checks them)."""
        # Contiguous slices of about equal size, a few per thread for balance, each encoded text by text:
        # tiktoken's own encode_ordinary_batch hands each text to a thread pool, which costs more than
        # encoding a short one (measured on 7,766 Chinese reviews: 0.53 s against 0.16 s this way).
        encode = self.fast.encode_ordinary
        slices = _slices_of_equal_size(texts, self.threads * 4)
        return list(itertools.chain.from_iterable(self._workers.map(lambda part: [encode(t) for t in part], slices)))

    def stats(self) -> dict:
        """Documents encoded by each library, how many were spot-checked, and the start of the document
        that first differed (None if none did)."""
        return {
            "documents": dict(self.documents),
            "spot_checked_documents": self.spot_checked,
            "fell_back_to_tokenizers_at": self.first_difference,
        }

    def _reference(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast runs on all cores and skips computing character offsets.
        return [e.ids for e in self.reference.encode_batch_fast(texts, add_special_tokens=False)]


def _slices_of_equal_size(texts: list[str], count: int) -> list[list[str]]:
    """`texts` cut into `count` contiguous slices of about equal total length (some may be empty): each
    text goes to the slice in which its middle character falls."""
    if not texts:
        return []
    lengths = list(map(len, texts))
    middles = [end - length / 2 for end, length in zip(itertools.accumulate(lengths), lengths)]
    total = sum(lengths)
    cuts = [0, *(bisect.bisect_left(middles, total * k / count) for k in range(1, count)), len(texts)]
    return [texts[start:end] for start, end in zip(cuts, cuts[1:])]


_VERIFIED: dict[str, tiktoken.Encoding | None] = {}
"""_tiktoken_encoding's answer per tokenizer.json (by sha256), once per process: a data-preparation worker runs
many tasks, and building and checking the encoding took 0.075 s of each 1 s task here (8,192 tokens; the check
encodes every vocabulary token twice, so it grows with the vocabulary)."""


def _verified_tiktoken(tokenizer_json: str, reference: Tokenizer) -> tiktoken.Encoding | None:
    key = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
    if key not in _VERIFIED:
        _VERIFIED[key] = _tiktoken_encoding(json.loads(tokenizer_json), reference)
    return _VERIFIED[key]


def _tiktoken_encoding(spec: dict, reference: Tokenizer) -> tiktoken.Encoding | None:
    """tiktoken's BPE for a saved tokenizer.json of this project's design, or None for any other:
    no normalizer, SPLIT_PATTERN then the byte-level mapping, plain BPE whose merges each make a new
    token in id order (so that tiktoken's ranks are the merge order), only special added tokens, and
    every vocabulary token's text encoded alike by tiktoken and `reference` (tiktoken takes a piece
    that is a whole token as that token; `tokenizers` only if its merges build it)."""
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (
        spec.get("normalizer") is not None
        or model.get("type") != "BPE"
        or model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("byte_fallback")
        or model.get("ignore_merges")
        or len(steps) != 2
        or any(not t["special"] for t in spec["added_tokens"])
    ):
        return None
    split, byte_level = steps
    if not (
        split["type"] == "Split"
        and split["pattern"].get("Regex") == SPLIT_PATTERN
        and split["behavior"] == "Isolated"
        and not split["invert"]
        and byte_level["type"] == "ByteLevel"
        and not byte_level["use_regex"]
        and not byte_level["add_prefix_space"]
    ):
        return None
    byte_of = {symbol: b for b, symbol in enumerate(_byte_symbols())}
    special = {t["content"] for t in spec["added_tokens"]}
    vocab = {token: i for token, i in model["vocab"].items() if token not in special}
    if any(c not in byte_of for token in vocab for c in token):
        return None
    made = [vocab.get("".join(m) if isinstance(m, list) else m.replace(" ", "", 1)) for m in model["merges"]]
    singles = sum(len(token) == 1 for token in vocab)
    if None in made or any(a >= b for a, b in zip(made, made[1:])) or singles != 256 or len(vocab) != 256 + len(made):
        return None
    ranks = {bytes(byte_of[c] for c in token): i for token, i in vocab.items()}
    encoding = tiktoken.Encoding("lmtrain", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={})
    texts = []
    for token in ranks:
        with contextlib.suppress(UnicodeDecodeError):  # a token holding part of a character has no text
            texts.append(token.decode("utf-8"))
    expected = [e.ids for e in reference.encode_batch_fast(texts, add_special_tokens=False)]
    return encoding if [encoding.encode_ordinary(text) for text in texts] == expected else None


def training_record(directory: str | Path) -> dict:
    """What `train_tokenizer` recorded: settings, corpus and stats of the training run."""
    return json.loads((Path(directory) / TRAINING_RECORD).read_text(encoding="utf-8"))


def train_bpe(
    batches: Iterable[list[str]],
    vocab_size: int,
    min_frequency: int,
    cjk_chunk_chars: int = CJK_TRAINING_CHUNK_CHARS,
) -> Tokenizer:
    """This project's byte-level BPE trained on `batches` of texts, with at most `vocab_size` tokens
    (special tokens included, no reserved padding); CJK runs cut every `cjk_chunk_chars` characters while
    training (0: whole). See the module docstring for the method."""
    return _byte_level(*_train_characters(batches, vocab_size, min_frequency, cjk_chunk_chars))


def _train_characters(
    batches: Iterable[list[str]], vocab_size: int, min_frequency: int, cjk_chunk_chars: int = CJK_TRAINING_CHUNK_CHARS
) -> tuple[Tokenizer, list[str]]:
    """The character-level BPE that `train_bpe` converts, and its non-ASCII alphabet."""
    batches = iter(batches)
    counts = np.zeros(0x110000, dtype=np.int64)
    head, sampled = [], 0
    for batch in batches:
        head.append(batch)
        sampled += _count_chars(batch, counts)
        if sampled >= ALPHABET_SAMPLE_CHARS:
            break
    alphabet = _choose_alphabet(counts, vocab_size, max(2, min_frequency))
    initial = [chr(i) for i in range(128)] + alphabet
    # The byte-level model adds the 128 non-ASCII bytes, the byte prefixes of the alphabet and the special tokens.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS) - 128 - len(_utf8_prefixes(alphabet)),
        min_frequency=min_frequency,
        initial_alphabet=initial,
        limit_alphabet=len(initial),  # exactly these characters: the others are left out of the words
        show_progress=False,
    )
    char_level = Tokenizer(models.BPE())
    char_level.pre_tokenizer = pre_tokenizers.Split(Regex(split_pattern(cjk_chunk_chars or None)), behavior="isolated")
    with _serial_merges() as switch:
        char_level.train_from_iterator(switch(itertools.chain(head, batches)), trainer)
    char_level.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")  # encodes as the result
    return char_level, alphabet


def bpe_trainer(vocab_size: int, min_frequency: int) -> trainers.BpeTrainer:
    """A plain byte-level trainer for `new_tokenizer()`: the same design, trained on bytes (slower
    than `train_bpe`; enough for a small tokenizer in a test)."""
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


def new_tokenizer(model: models.BPE | None = None) -> Tokenizer:
    """A tokenizer with this project's pre-tokenization and decoder (untrained without `model`)."""
    tokenizer = Tokenizer(model or models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            # use_regex=False: the Split above already did the splitting; this only maps bytes to symbols.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _training_settings(recipe: Recipe) -> dict:
    """Everything the trained tokenizer depends on; equal settings mean the result can be reused."""
    return {
        "format_version": _FORMAT_VERSION,
        "split_pattern": SPLIT_PATTERN,
        "cjk_training_chunk_chars": recipe.tokenizer.cjk_training_chunk_chars,
        "alphabet": {
            "coverage": ALPHABET_COVERAGE,
            "max_share": ALPHABET_MAX_SHARE,
            "sample_chars": ALPHABET_SAMPLE_CHARS,
        },
        "special_tokens": list(SPECIAL_TOKENS),
        **({"encoder_tokens": list(_encoder_tokens(recipe))} if _encoder_tokens(recipe) else {}),
        "vocab_size": recipe.tokenizer.vocab_size,
        "min_frequency": recipe.tokenizer.min_frequency,
        "max_training_chars": recipe.tokenizer.max_training_chars,
        "sources": [describe_source(s) for s in recipe.data.sources],
        "clean": dataclasses.asdict(recipe.data.clean),
        "filters": dataclasses.asdict(recipe.data.filters),
        "validation_fraction": recipe.data.validation_fraction,
    }


def _count_chars(texts: list[str], counts: np.ndarray) -> int:
    """Add the code points of `texts` to `counts`; returns how many there were."""
    code_points = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    found = np.bincount(code_points)
    counts[: len(found)] += found
    return len(code_points)


def _choose_alphabet(counts: np.ndarray, vocab_size: int, min_count: int) -> list[str]:
    """The non-ASCII characters that get a token: the most frequent first, until ALPHABET_COVERAGE
    of all characters is covered, each seen at least `min_count` times, within ALPHABET_MAX_SHARE
    of the learnable vocabulary (a character costs its token and any byte prefix not yet built)."""
    budget = int((vocab_size - len(SPECIAL_TOKENS) - 256) * ALPHABET_MAX_SHARE)
    code_points = np.flatnonzero(counts[128:]) + 128
    order = np.argsort(-counts[code_points], kind="stable")
    covered, needed = int(counts[:128].sum()), ALPHABET_COVERAGE * int(counts.sum())
    alphabet: list[str] = []
    prefixes: set[bytes] = set()
    for code_point in code_points[order].tolist():
        count = int(counts[code_point])
        if covered >= needed or count < min_count:
            break
        if 0xD800 <= code_point < 0xE000:  # a lone surrogate: not encodable, never a token
            continue
        encoded = chr(code_point).encode("utf-8")
        new_prefixes = {encoded[:k] for k in range(2, len(encoded))} - prefixes
        budget -= 1 + len(new_prefixes)
        if budget < 0:
            break
        alphabet.append(chr(code_point))
        prefixes |= new_prefixes
        covered += count
    return alphabet


def _utf8_prefixes(alphabet: list[str]) -> set[bytes]:
    """The proper prefixes, of two bytes or more, of the alphabet's UTF-8 encodings: the
    intermediate tokens that byte-level merges build a character through."""
    return {c.encode("utf-8")[:k] for c in alphabet for k in range(2, len(c.encode("utf-8")))}


def _byte_level(char_level: Tokenizer, alphabet: list[str]) -> Tokenizer:
    """The byte-level BPE equivalent to a character-level one trained on ASCII + `alphabet`:
    merges that build each alphabet character from its bytes (shared prefixes once), then the
    learned merges spelled in bytes; special tokens 0-3, the 256 bytes next, as the plain trainer."""
    symbol = _byte_symbols()
    spell = lambda text: "".join(symbol[b] for b in text.encode("utf-8"))  # noqa: E731
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(symbol)])}
    merges: list[tuple[str, str]] = []

    def merge(left: str, right: str) -> None:
        merges.append((left, right))
        vocab.setdefault(left + right, len(vocab))

    for char in sorted(alphabet, key=lambda c: c.encode("utf-8")):
        spelled = spell(char)  # one symbol per byte
        for k in range(2, len(spelled) + 1):
            if spelled[:k] not in vocab:
                merge(spelled[: k - 1], spelled[k - 1])
    for left, right in json.loads(char_level.to_str())["model"]["merges"]:
        merge(spell(left), spell(right))
    tokenizer = new_tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def _byte_symbols() -> list[str]:
    """The symbol byte-level BPE uses for each byte value 0..255 (GPT-2's mapping), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [mapping[b] for b in range(256)]


@contextlib.contextmanager
def _serial_merges() -> Iterator[Callable[[Iterator[list[str]]], Iterator[list[str]]]]:
    """On a machine with at most SERIAL_TRAINING_MAX_CORES cores, the merge stage runs on one thread:
    the trainer reads the text (pre-tokenizes and counts words) in parallel, and once the corpus
    iterator is exhausted, before the merges begin, parallelism is turned off (`tokenizers` reads
    TOKENIZERS_PARALLELISM each time it could go parallel). Yields a wrapper for the corpus iterator."""
    cores = available_cores()
    before = os.environ.get("TOKENIZERS_PARALLELISM")

    def switch(batches: Iterator[list[str]]) -> Iterator[list[str]]:
        yield from batches
        if cores <= SERIAL_TRAINING_MAX_CORES:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"

    try:
        yield switch
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


class _TrainingCorpus:
    """Cleaned, filtered train-split documents for the trainer, mixed by characters with the
    sources' weights, streamed in batches and capped at tokenizer.max_training_chars; validation
    documents are set aside in `held_out` instead. Exact duplicates are dropped as in the data
    pipeline; near-duplicate detection is left to the data pipeline, where it pays for itself."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.chars = 0
        self.held_out: list[str] = []
        streams, self.source_stats = open_sources(
            recipe.data, Deduplicator(DedupConfig(exact=True, near=False)), split=True
        )
        self.mixture = WeightedMixture(streams, [s.weight for s in recipe.data.sources], size=len)

    @property
    def documents_read(self) -> int:
        return sum(s.corpus.documents for s in self.source_stats)

    def batches(self, batch_size: int = 1000) -> Iterator[list[str]]:
        data = self.recipe.data
        budget = self.recipe.tokenizer.max_training_chars or float("inf")
        held_out_chars = 0
        batch: list[str] = []
        for _, text in self.mixture:
            if is_validation_document(text, data.validation_fraction):
                if held_out_chars < HELD_OUT_SAMPLE_CHARS:
                    self.held_out.append(text)
                    held_out_chars += len(text)
                continue
            text = text[: int(min(len(text), budget - self.chars))]
            batch.append(text)
            self.chars += len(text)
            if len(batch) == batch_size or self.chars >= budget:
                yield batch
                batch = []
            if self.chars >= budget:
                return
        if batch:
            yield batch

    def stats(self) -> dict:
        return {
            "documents": self.documents_read,
            "sources": {s.name: s.to_dict() for s in self.source_stats},
            "skipped": dict(sum((s.corpus.skipped for s in self.source_stats), Counter())),
        }


def _reuse(directory: Path, model_max_length: int) -> PreTrainedTokenizerFast:
    """Load a tokenizer trained earlier, updating its model_max_length if only the context changed."""
    tokenizer = load_tokenizer(directory)
    if tokenizer.model_max_length != model_max_length:
        tokenizer.model_max_length = model_max_length
        tokenizer.save_pretrained(directory)
    return tokenizer


def _bytes_per_token(encoder: CorpusEncoder, texts: list[str]) -> float | None:
    if not texts:
        return None
    num_tokens = sum(map(len, encoder.encode_batch(texts)))
    return round(sum(len(t.encode("utf-8")) for t in texts) / num_tokens, 3)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (what taskset or a SLURM allocation grants)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
